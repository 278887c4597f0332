#!/usr/bin/env bash
# Training throughput (examples/s) of a 7.3M-parameter LLaVA-shaped VLM, every
# parameter trainable: forward + masked-LM loss + backward + AdamW step on a
# batch of 32 (64x64 image -> 64 image rows, then 16 text tokens), f32, CPU.
# glimpse (bench-train) vs transformers' LlavaForConditionalGeneration on
# PyTorch (bench/train_pytorch.py), same sizes, same threads, alternated in
# one run. With BENCH=lora: LoRA on the frozen SmolLM2-135M-Instruct
# (scripts/fetch_smollm2.sh's GGUF, dequantized), bench-train-lora vs
# PyTorch + PEFT (bench/train_lora_pytorch.py), batch 4 x 256 tokens.
# Needs the dev venv (scripts/dev/requirements.txt):
#   bash bench/run_train.sh [ROUNDS]
#   BENCH=lora bash bench/run_train.sh [ROUNDS]
# Env: PY (~/.venvs/glimpse-dev/bin/python), THREADS (2), STEPS (10 timed
# steps per run, after WARMUP=2), IDLE_WAIT_S (180: before each run, wait up
# to this long for the machine to be >= 90% idle over 2 s; 0 disables),
# KEEP (a file for the raw JSON lines), GLIMPSE_ARGS (more bench-train flags,
# e.g. "--head-everywhere" for the LM head at every position as transformers
# runs it, or "--shards 1"), PY_ARGS (more train_pytorch.py flags, e.g.
# "--labelled-head": logits only where labels are, as glimpse train runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$HOME/.venvs/glimpse-dev/bin/python}
ROUNDS=${1:-3}
THREADS=${THREADS:-2}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-2}
IDLE_WAIT_S=${IDLE_WAIT_S:-180}
MAX_OTHERS=${MAX_OTHERS:-0.15}
RETRIES=${RETRIES:-1}
GLIMPSE_ARGS=${GLIMPSE_ARGS:-}
PY_ARGS=${PY_ARGS:-}
case ${BENCH:-vlm} in
  vlm) NAME=bench-train PY_SCRIPT=bench/train_pytorch.py ;;
  lora) NAME=bench-train-lora PY_SCRIPT=bench/train_lora_pytorch.py ;;
  *) echo "BENCH is vlm or lora, not ${BENCH}" >&2; exit 2 ;;
esac
cargo build --release -q -p glimpse-bench --bin "$NAME"
BIN=${CARGO_TARGET_DIR:-target}/release/$NAME
out=${KEEP:-$(mktemp)}
: >"$out"

hz=$(getconf CLK_TCK)

. bench/quiet.sh

# run CMD...: one run after a quiet moment; its JSON line gets
# "others_cpu_share" (other processes' share of all CPUs while it ran, from
# /proc/stat minus the run's own user + system time) and goes into $out.
run() {
  local b0 b1 tf line share attempt=0
  tf=$(mktemp)
  while :; do
    wait_idle
    read -r b0 _ < <(cpu_jiffies)
    line=$(/usr/bin/time -f "%e %U %S" -o "$tf" "$@" 2>/dev/null | grep '^{')
    read -r b1 _ < <(cpu_jiffies)
    line=$("$PY" - "$line" "$b0" "$b1" "$hz" "$(nproc)" "$(cat "$tf")" <<'PYEOF'
import json, sys
row = json.loads(sys.argv[1])
b0, b1, hz, ncpu, e, u, s = *map(float, sys.argv[2:6]), *map(float, sys.argv[6].split())
row["others_cpu_share"] = round(max(0.0, ((b1 - b0) / hz - (u + s)) / (e * ncpu)), 3)
print(json.dumps(row))
PYEOF
)
    share=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["others_cpu_share"])' "$line")
    echo "$line" | cut -c1-160
    echo "$line" >>"$out"
    "$PY" -c "import sys; sys.exit(0 if $share <= $MAX_OTHERS or $attempt >= $RETRIES else 1)" && break
    echo "others used $share of the CPU, running again" >&2
    attempt=$((attempt + 1))
  done
  rm -f "$tf"
}

# Alternate the two sides so slow phases of a noisy machine hit both.
for round in $(seq "$ROUNDS"); do
  # shellcheck disable=SC2086 # GLIMPSE_ARGS holds several flags
  run env RAYON_NUM_THREADS="$THREADS" "$BIN" --steps "$STEPS" --warmup "$WARMUP" --phases $GLIMPSE_ARGS
  # shellcheck disable=SC2086
  run "$PY" "$PY_SCRIPT" --threads "$THREADS" --steps "$STEPS" --warmup "$WARMUP" --phases $PY_ARGS
done
"$PY" - "$out" "$MAX_OTHERS" <<'PYEOF'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
max_others = float(sys.argv[2])
by = {n: [r for r in rows if r["impl"] == n] for n in ("glimpse", "pytorch")}
# only the runs others left alone, when each side has one
clean = {n: [r for r in rs if r["others_cpu_share"] <= max_others] for n, rs in by.items()}
if all(clean.values()):
    by = clean
params = {n: {r["parameters"] for r in rs} for n, rs in by.items()}
print(f"\nparameters: glimpse {sorted(params['glimpse'])}, pytorch {sorted(params['pytorch'])}"
      f" ({'equal' if params['glimpse'] == params['pytorch'] else 'DIFFER'})")
r0 = rows[0]
print(f"batch {r0['batch']} x {r0['positions']} positions, {r0['steps']} timed steps per run; "
      f"runs used: glimpse {len(by['glimpse'])}, pytorch {len(by['pytorch'])} of {len(rows)} "
      f"(others' CPU share max {max(r['others_cpu_share'] for rs in by.values() for r in rs):.2f})")
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
