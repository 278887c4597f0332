#!/usr/bin/env bash
# ViT-B/16 images/s: glimpse vs PyTorch, same machine, same run, same threads.
# Needs the dev venv (scripts/dev/requirements.txt) for the PyTorch side:
#   PY=~/.venvs/glimpse-dev/bin/python bash bench/run_vit.sh [runs]
# FEATURES=avx512 builds glimpse with gemm's AVX-512 kernels (runtime-chosen where
# the CPU has AVX-512F; off by default, see glimpse-models/Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$HOME/.venvs/glimpse-dev/bin/python}
RUNS=${1:-5}
THREADS=${THREADS:-$(nproc)}
cargo build --release -q -p glimpse-bench ${FEATURES:+--features "$FEATURES"} --bin bench-vit
out=$(mktemp)
# Interleave the two sides so slow phases of a noisy machine hit both.
for round in 1 2; do
  RAYON_NUM_THREADS=$THREADS target/release/bench-vit --batch 1,8 --runs "$RUNS" | tee -a "$out"
  "$PY" bench/vit_pytorch.py --threads "$THREADS" --batch 1,8 --runs "$RUNS" | tee -a "$out"
done
"$PY" - "$out" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print("\n| batch | glimpse img/s | PyTorch img/s | ratio | glimpse peak RSS MiB | PyTorch peak RSS MiB |")
print("|---|---|---|---|---|---|")
for b in sorted({r["batch"] for r in rows}):
    g = [x for r in rows if r["batch"] == b and r["impl"] == "glimpse" for x in r["images_per_s_all"]]
    t = [x for r in rows if r["batch"] == b and r["impl"] != "glimpse" for x in r["images_per_s_all"]]
    gr = max(r["peak_rss_mib"] for r in rows if r["impl"] == "glimpse")
    tr = max(r["peak_rss_mib"] for r in rows if r["impl"] != "glimpse")
    gm, tm = statistics.median(g), statistics.median(t)
    print(f"| {b} | {gm:.2f} | {tm:.2f} | {gm / tm:.2f}x | {gr:.0f} | {tr:.0f} |")
PYEOF
