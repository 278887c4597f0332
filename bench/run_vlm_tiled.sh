#!/usr/bin/env bash
# Tiled VLMs (issue 19's benchmark): time to first token for one 672x672 PNG
# through a LLaVA-NeXT-shaped or an Idefics3-shaped model (ViT-B/16-sized
# tower reading 5 tiles as one batch, 12-layer 768-wide Llama), random
# weights, f32, glimpse vs transformers' processor + model on the same
# checkpoint and file, same threads, same run. Needs the dev venv
# (scripts/dev/requirements.txt):
#   FAMILY=llava_next bash bench/run_vlm_tiled.sh [runs]
#   FAMILY=idefics3   bash bench/run_vlm_tiled.sh [runs]
# Env: THREADS (2), MODEL (/tmp/glimpse-bench-$FAMILY: written once),
# IDLE_WAIT_S (180: before each set, wait up to this long for the machine to
# be >= 90% idle over 2 s; 0 disables), KEEP (a file for the raw JSON).
# FEATURES=avx512 builds glimpse with gemm's AVX-512 kernels (runtime-chosen where
# the CPU has AVX-512F; off by default, see glimpse-models/Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
FAMILY=${FAMILY:-llava_next}
MODEL=${MODEL:-/tmp/glimpse-bench-$FAMILY}
. bench/vlm_rounds.sh
cargo build --release -q -p glimpse-bench ${FEATURES:+--features "$FEATURES"} --bin bench-vlm-tiled
[ -f "$MODEL/bench.png" ] || "$PY" bench/vlm_tiled_pytorch.py --write "$MODEL" --family "$FAMILY" 2>/dev/null

two_rounds bench-vlm-tiled bench/vlm_tiled_pytorch.py
"$PY" - "$out" <<'PYEOF'
import json, sys
sys.path.insert(0, "bench")
from ttft_table import print_table
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
g = next(r for r in rows if r["impl"] == "glimpse")
print_table(rows, g["family"], "PNG", note=f"tiles {g['tiles']}, ")
PYEOF
