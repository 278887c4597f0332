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
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$HOME/.venvs/glimpse-dev/bin/python}
RUNS=${1:-3}
THREADS=${THREADS:-2}
FAMILY=${FAMILY:-llava_next}
MODEL=${MODEL:-/tmp/glimpse-bench-$FAMILY}
IDLE_WAIT_S=${IDLE_WAIT_S:-180}
cargo build --release -q -p glimpse-bench --bin bench-vlm-tiled
[ -f "$MODEL/bench.png" ] || "$PY" bench/vlm_tiled_pytorch.py --write "$MODEL" --family "$FAMILY" 2>/dev/null
out=${KEEP:-$(mktemp)}
: >"$out"

. bench/quiet.sh

# Interleave the two sides so slow phases of a noisy machine hit both.
for round in 1 2; do
  wait_idle
  RAYON_NUM_THREADS=$THREADS target/release/bench-vlm-tiled --model "$MODEL" --runs "$RUNS" | tee -a "$out"
  wait_idle
  "$PY" bench/vlm_tiled_pytorch.py --run "$MODEL" --threads "$THREADS" --runs "$RUNS" --generate 2>/dev/null \
    | tee -a "$out"
done
"$PY" - "$out" <<'PYEOF'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def name(r):
    return "glimpse" if r["impl"] == "glimpse" else f"transformers {r['mode']}"
names = ["glimpse", "transformers forward", "transformers generate"]
med, vis = {}, {}
for n in names:
    rs = [r for r in rows if name(r) == n]
    if not rs:
        continue
    med[n] = st.median([x for r in rs for x in r["ttft_ms_all"]])
    v = [r["vision_ms_median"] for r in rs if r.get("vision_ms_median") is not None]
    vis[n] = f"{st.median(v):.0f}" if v else "-"
g = next(r for r in rows if r["impl"] == "glimpse")
t = next(r for r in rows if r["impl"] != "glimpse")
print(f"\n{g['family']}: {g['prompt_tokens']} prompt positions (transformers: {t['prompt_tokens']}), "
      f"tiles {g['tiles']}, {g['runs']} runs x 2 rounds, {g['threads']} threads")
print("\n| engine | TTFT ms (PNG -> first token) | of which vision ms | TTFT ratio (theirs / ours) |")
print("|---|---|---|---|")
for n in med:
    print(f"| {n} | {med[n]:.0f} | {vis[n]} | {med[n] / med['glimpse']:.2f}x |")
firsts = {r["first_token"] for r in rows if r.get("first_token") is not None}
print(f"\ngreedy first token {'agrees' if len(firsts) == 1 else 'differs'} across engines: {sorted(firsts)}")
PYEOF
