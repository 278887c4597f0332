#!/usr/bin/env bash
# Creates (once) a Python venv holding the official `openai` client, pinned
# below, for the real-client check of `glimpse serve`
# (scripts/openai_client_check.py):
#
#     PY=$(bash scripts/setup_openai_venv.sh)     # prints the venv's python as its last line
#     "$PY" scripts/openai_client_check.py --base-url http://127.0.0.1:8080/v1 ...
#
# The venv lives at ${GLIMPSE_CACHE:-$HOME/.cache/glimpse}/openai-venv, never
# inside the repository. Idempotent: when that venv already imports openai at
# the pinned version nothing is downloaded (a fast no-op); otherwise the venv
# is (re)created with `python3 -m venv` and openai is pip-installed with its
# own dependencies (httpx, pydantic, ...; 15-60 s). Runs
# that start together wait for each other (flock, where there is one).
# Everything but the final path goes to stderr.
#
# Pin: openai 2.54.0, the last 2.x (PyPI also serves 3.x, which moves to the
# `httpx2` package; 2.54.0 needs Python >= 3.10 and installs on 3.11).
set -euo pipefail

OPENAI_VERSION="2.54.0"
PYTHON="${PYTHON:-python3}"

CACHE_ROOT="${GLIMPSE_CACHE:-$HOME/.cache/glimpse}"
mkdir -p "$CACHE_ROOT"
CACHE_ROOT="$(cd "$CACHE_ROOT" && pwd -P)"
VENV="$CACHE_ROOT/openai-venv"
VPY="$VENV/bin/python"

installed() {
    [[ -x "$VPY" ]] && [[ "$("$VPY" -c 'from importlib.metadata import version; print(version("openai"))' 2>/dev/null)" == "$OPENAI_VERSION" ]]
}

if installed; then
    echo "openai $OPENAI_VERSION already in $VENV" >&2
    echo "$VPY"
    exit 0
fi

# Serialise concurrent first runs (two test processes starting at once).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE_ROOT/.openai-venv.lock"
    flock -w 600 9 || { echo "timed out waiting for $CACHE_ROOT/.openai-venv.lock" >&2; exit 1; }
    if installed; then
        echo "openai $OPENAI_VERSION already in $VENV" >&2
        echo "$VPY"
        exit 0
    fi
fi

if [[ ! -x "$VPY" ]] || ! "$VPY" -m pip --version >/dev/null 2>&1; then
    echo "creating venv $VENV" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" >&2
fi

echo "installing openai==$OPENAI_VERSION into $VENV" >&2
"$VPY" -m pip install --disable-pip-version-check --quiet "openai==$OPENAI_VERSION" >&2

if ! installed; then
    echo "openai==$OPENAI_VERSION did not install into $VENV" >&2
    exit 1
fi
echo "openai $OPENAI_VERSION installed in $VENV" >&2
echo "$VPY"
