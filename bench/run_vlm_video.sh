#!/usr/bin/env bash
# Qwen2-VL video and image (issue 20's benchmark): time to first token for an
# 8-frame 224x224 video (a folder of PNG frames, --frames 8) and for a 448x448
# PNG through a Qwen2-VL-shaped model (12-block 768-wide tower with 2x2 merger,
# 12-layer 768-wide qwen2 decoder with M-RoPE; 256 visual tokens each), random
# weights, f32, glimpse vs transformers' processor + model on the same
# checkpoint and files, same threads, same run. Needs the dev venv
# (scripts/dev/requirements.txt):
#   bash bench/run_vlm_video.sh [runs]
# Env: THREADS (2), MODEL (/tmp/glimpse-bench-qwen2_vl: written once),
# IDLE_WAIT_S (180: before each set, wait up to this long for the machine to
# be >= 90% idle over 2 s; 0 disables), KEEP (a file for the raw JSON).
# FEATURES=avx512 builds glimpse with gemm's AVX-512 kernels (runtime-chosen where
# the CPU has AVX-512F; off by default, see glimpse-models/Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
MODEL=${MODEL:-/tmp/glimpse-bench-qwen2_vl}
. bench/vlm_rounds.sh
cargo build --release -q -p glimpse-bench ${FEATURES:+--features "$FEATURES"} --bin bench-vlm-video
[ -f "$MODEL/bench.png" ] || "$PY" bench/vlm_video_pytorch.py --write "$MODEL" 2>/dev/null

two_rounds bench-vlm-video bench/vlm_video_pytorch.py
"$PY" - "$out" <<'PYEOF'
import json, sys
sys.path.insert(0, "bench")
from ttft_table import print_table
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for kind in ["video", "image"]:
    what = "8-frame 224x224 video" if kind == "video" else "448x448 image"
    print_table([r for r in rows if r["input"] == kind], what, "files")
PYEOF
