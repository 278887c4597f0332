#!/usr/bin/env bash
# Installs what the MP4 / WebM / MKV video tests use (crates/glimpse-data/tests/video.rs):
# Debian's ffmpeg package, which brings ffmpeg and ffprobe (apt-get, only when
# either is missing). glimpse runs them as child processes to decode those files.
# Idempotent; quiet on success (one line); exits non-zero with a reason on failure.
set -euo pipefail

die() { echo "setup_ffmpeg.sh: $*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "ffmpeg is missing and apt-get is not available"
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "ffmpeg is missing and installing it needs root"
        SUDO="sudo"
    fi
    log="$(mktemp)"
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends ffmpeg; } >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        die "apt-get install ffmpeg failed"
    fi
    rm -f "$log"
    command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 \
        || die "ffmpeg installed but ffmpeg / ffprobe are not on PATH"
fi

echo "ffmpeg ready: $(ffmpeg -hide_banner -version 2>/dev/null | head -n1)"
