"""Copies a trained glimpse model folder with its float32 weights stored as
float16, halving model.safetensors for shipping in models/ (glimpse's strict
loader reads any float dtype and computes in f32). The other files are
copied as they are.

    ~/.venvs/glimpse-dev/bin/python scripts/dev/ship_f16.py \
        runs/easy-vqa-discrete/discrete/model models/glimpse-easy-vqa-discrete
"""

import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: ship_f16.py SRC_DIR DST_DIR")
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name != "model.safetensors":
            shutil.copyfile(f, dst / f.name)
    tensors = load_file(src / "model.safetensors")
    half = {
        name: t.astype(np.float16) if t.dtype == np.float32 else t
        for name, t in tensors.items()
    }
    worst = max(
        float(np.max(np.abs(t)))
        for t in tensors.values()
        if t.dtype == np.float32 and t.size
    )
    if worst > 60000:
        sys.exit(f"a weight of magnitude {worst} does not fit float16")
    save_file(half, dst / "model.safetensors")
    n = sum(t.size for t in tensors.values())
    print(f"{len(tensors)} tensors, {n} values, float16 -> {dst / 'model.safetensors'}")


if __name__ == "__main__":
    main()
