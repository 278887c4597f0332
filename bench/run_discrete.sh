#!/usr/bin/env bash
# The discrete-token model's figures (issue 21; BENCHMARKS.md, "Discrete
# visual tokens"): the VQ's held-out reconstruction PSNR and codebook usage
# on easy-VQA's test split (with the images as the VQ reads them and its
# reconstructions classified zero-shot by the shipped CLIP, which calibrates
# the judge), the model's easy-VQA test accuracy (greedy answers, exact
# match after normalisation), and its drawings of the 24 "a {color}
# {shape}" prompts over SEEDS seeds, judged zero-shot by the same CLIP.
#   bash scripts/fetch_easy_vqa.sh
#   bash bench/run_discrete.sh [MODEL_DIR]
# Env: JUDGE (models/glimpse-easy-vqa-clip), DATA (~/.cache/glimpse/easy-vqa),
# SEEDS (10, seeds 0..9), CFG (4), TEMPERATURE (0.7), LIMIT (all questions), OUT (a folder
# for the JSON reports; a temporary one by default).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/glimpse-easy-vqa-discrete}
JUDGE=${JUDGE:-models/glimpse-easy-vqa-clip}
DATA=${DATA:-$HOME/.cache/glimpse/easy-vqa}
SEEDS=${SEEDS:-10}
CFG=${CFG:-4}
TEMPERATURE=${TEMPERATURE:-0.7}
OUT=${OUT:-$(mktemp -d)}
cargo build --release -q -p glimpse-cli
BIN=${CARGO_TARGET_DIR:-target}/release/glimpse
mkdir -p "$OUT"
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")

"$BIN" eval vq --model "$MODEL" --data "$DATA/test" --judge "$JUDGE" --json >"$OUT/vq.json"
"$BIN" eval vqa --model "$MODEL" --data "$DATA/test" "${limit[@]}" --json >"$OUT/vqa.json"
"$BIN" eval draw --model "$MODEL" --judge "$JUDGE" --seeds "$SEEDS" --cfg "$CFG" \
  --temperature "$TEMPERATURE" --json >"$OUT/draw.json"

python3 - "$OUT" <<'PYEOF'
import json, sys, os
out = sys.argv[1]
vq, vqa, draw = (json.load(open(os.path.join(out, f + ".json"))) for f in ("vq", "vqa", "draw"))
pct = lambda a: f"{100 * a['accuracy']:.2f}% ({a['correct']}/{a['total']})"
print(f"VQ on {vq['images']} test images: PSNR {vq['psnr_db']:.2f} dB, codebook usage "
      f"{100 * vq['codebook_usage']:.2f}% ({vq['codes_used']}/{vq['num_embeddings']}), "
      f"perplexity {vq['perplexity']:.1f}, {vq['grid'][0]}x{vq['grid'][1]} codes")
print(f"  judged zero-shot, both attributes: inputs {pct(vq['judged_inputs']['both'])}, "
      f"reconstructions {pct(vq['judged_reconstructions']['both'])}")
kinds = ", ".join(f"{k} {100 * v['accuracy']:.2f}%" for k, v in vqa["by_kind"].items())
print(f"easy-VQA test accuracy: {pct(vqa)} ({kinds}), {vqa['seconds']:.0f} s")
print(f"drawings, {len(draw['per_prompt'])} prompts x {len(draw['seeds'])} seeds, cfg {draw['cfg']:g}, "
      f"temperature {draw['temperature']:.3g}: both right {pct(draw['both'])}, colour {pct(draw['colour'])}, "
      f"shape {pct(draw['shape'])}; {draw['draw_secs'] / draw['both']['total'] * 1000:.0f} ms a drawing")
worst = sorted(draw["per_prompt"], key=lambda p: p["correct"])[:5]
print("  fewest right: " + ", ".join(f"{p['prompt']} {p['correct']}/{p['total']}" for p in worst))
print(f"(JSON in {out})")
PYEOF
