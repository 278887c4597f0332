#!/usr/bin/env bash
# Training throughput (examples/s) of a 7.3M-parameter LLaVA-shaped VLM, every
# parameter trainable: forward + masked-LM loss + backward + AdamW step on a
# batch of 32 (64x64 image -> 64 image rows, then 16 text tokens), f32, CPU.
# glimpse (bench-train) vs transformers' LlavaForConditionalGeneration on
# PyTorch (bench/train_pytorch.py), same sizes, same threads, alternated in
# one run. Needs the dev venv (scripts/dev/requirements.txt):
#   bash bench/run_train.sh [ROUNDS]
# Env: PY (~/.venvs/glimpse-dev/bin/python), THREADS (2), STEPS (10 timed
# steps per run, after WARMUP=2), IDLE_WAIT_S (180: before each run, wait up
# to this long for the machine to be >= 90% idle over 2 s; 0 disables),
# KEEP (a file for the raw JSON lines).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$HOME/.venvs/glimpse-dev/bin/python}
ROUNDS=${1:-3}
THREADS=${THREADS:-2}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-2}
IDLE_WAIT_S=${IDLE_WAIT_S:-180}
cargo build --release -q -p glimpse-bench --bin bench-train
BIN=${CARGO_TARGET_DIR:-target}/release/bench-train
out=${KEEP:-$(mktemp)}
: >"$out"

. bench/quiet.sh

# Alternate the two sides so slow phases of a noisy machine hit both.
for round in $(seq "$ROUNDS"); do
  wait_idle
  RAYON_NUM_THREADS=$THREADS "$BIN" --steps "$STEPS" --warmup "$WARMUP" \
    --phases | tee -a "$out"
  wait_idle
  "$PY" bench/train_pytorch.py --threads "$THREADS" --steps "$STEPS" --warmup "$WARMUP" \
    --phases 2>/dev/null | tee -a "$out"
done
"$PY" - "$out" <<'PYEOF'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {n: [r for r in rows if r["impl"] == n] for n in ("glimpse", "pytorch")}
params = {n: {r["parameters"] for r in rs} for n, rs in by.items()}
print(f"\nparameters: glimpse {sorted(params['glimpse'])}, pytorch {sorted(params['pytorch'])}"
      f" ({'equal' if params['glimpse'] == params['pytorch'] else 'DIFFER'})")
r0 = rows[0]
print(f"batch {r0['batch']} x {r0['positions']} positions, {r0['steps']} timed steps per run, "
      f"{len(by['glimpse'])} runs per side")
med = {}
print("\n| engine | examples/s (median of all steps) | per-run medians | step ms | phases ms (median) |")
print("|---|---|---|---|---|")
for n, rs in by.items():
    med[n] = st.median([x for r in rs for x in r["examples_per_s_all"]])
    runs = ", ".join(f"{r['examples_per_s_median']:.2f}" for r in rs)
    step_ms = st.median([r["step_ms_median"] for r in rs])
    ph = {k: st.median([r["phases_ms_median"][k] for r in rs]) for k in rs[0].get("phases_ms_median", {})}
    phs = ", ".join(f"{k} {v:.0f}" for k, v in ph.items())
    print(f"| {n} | {med[n]:.2f} | {runs} | {step_ms:.0f} | {phs} |")
print(f"\nratio glimpse / PyTorch: {med['glimpse'] / med['pytorch']:.2f}x")
PYEOF
