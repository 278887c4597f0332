#!/usr/bin/env bash
# Fetches easy-VQA (4,000 train + 1,000 test 64x64 PNGs of one coloured shape,
# with questions.json per split) for the dataset tests and small training runs.
#
#     scripts/fetch_easy_vqa.sh           # prints the data root as its last line
#     ROOT=$(scripts/fetch_easy_vqa.sh)
#
# The data ships inside the PyPI wheel `easy-vqa` (pinned below) under
# easy_vqa/data/{train,test}/{images/N.png,questions.json}; it is downloaded
# with `pip download --no-deps` and unpacked with python3's zipfile module (no
# `unzip` needed) into ${GLIMPSE_CACHE:-$HOME/.cache/glimpse}/easy-vqa/ as
#
#     <root>/train/images/N.png  <root>/train/questions.json
#     <root>/test/images/N.png   <root>/test/questions.json
#     <root>/answers.txt
#
# never inside the repository. Idempotent: when both splits are complete
# nothing is downloaded. Everything but the final path goes to stderr.
set -euo pipefail

PKG_VERSION="1.0"
PYTHON="${PYTHON:-python3}"

CACHE_ROOT="${GLIMPSE_CACHE:-$HOME/.cache/glimpse}"
DEST="$CACHE_ROOT/easy-vqa"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd -P)"
MARKER="$DEST/.complete-$PKG_VERSION"

if [[ -f "$MARKER" && -s "$DEST/train/questions.json" && -s "$DEST/test/questions.json" ]]; then
    echo "already present: $DEST" >&2
    echo "$DEST"
    exit 0
fi

TMP="$(mktemp -d "$DEST/.fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "downloading easy-vqa==$PKG_VERSION with pip into $TMP" >&2
"$PYTHON" -m pip download --no-deps --no-cache-dir --disable-pip-version-check \
    -d "$TMP" "easy-vqa==$PKG_VERSION" >&2

WHEEL="$(ls "$TMP"/easy_vqa-"$PKG_VERSION"-*.whl)"
echo "unpacking $(basename "$WHEEL")" >&2
"$PYTHON" - "$WHEEL" "$TMP/out" <<'PY' >&2
import os, sys, zipfile

wheel, out = sys.argv[1:]
prefix = "easy_vqa/data/"
counts = {}
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        rel = name[len(prefix):]
        parts = rel.split("/")
        keep = (
            rel == "answers.txt"
            or (len(parts) == 2 and parts[0] in ("train", "test") and parts[1] == "questions.json")
            or (len(parts) == 3 and parts[0] in ("train", "test") and parts[1] == "images"
                and parts[2].endswith(".png"))
        )
        if not keep:
            continue
        target = os.path.join(out, *parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(name) as src, open(target, "wb") as dst:
            dst.write(src.read())
        if len(parts) == 3:
            counts[parts[0]] = counts.get(parts[0], 0) + 1
for split, want in (("train", 4000), ("test", 1000)):
    got = counts.get(split, 0)
    if got != want:
        sys.exit(f"{split}: expected {want} images in the wheel, found {got}")
    print(f"{split}: {got} images")
PY

for part in train test answers.txt; do
    rm -rf "${DEST:?}/$part"
    mv "$TMP/out/$part" "$DEST/$part"
done
touch "$MARKER"
echo "wrote $DEST" >&2
echo "$DEST"
