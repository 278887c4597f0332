#!/usr/bin/env bash
# SmolLM2-135M GGUF decoder (Q4_1, or QUANT=q8_0 / q4_k_m: the same weights
# requantized by scripts/make_kquant_smollm2.sh): prompt processing (128-token
# prompt) and decode (128 new tokens) tok/s, glimpse vs llama.cpp vs
# transformers, same file, same prompt ids, same threads, same run; plus the
# memory-bandwidth bound on decode. Needs the dev venv (scripts/dev/requirements.txt):
#   PY=~/.venvs/glimpse-dev/bin/python bash bench/run_llm.sh [runs]
#   QUANT=q4_k_m PY=... bash bench/run_llm.sh [runs]
# Env: QUANT (q4_1), THREADS (2), TF_RUNS (transformers runs per round, 2: it is slow),
# IDLE_WAIT_S (180: before each run set, wait up to this long for the machine
# to be >= 90% idle over 2 s; 0 disables), MAX_OTHERS (0.15) and RETRIES (3):
# see run_set, KEEP (a file to keep the raw JSON; rejected sets go to KEEP.rejected).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$HOME/.venvs/glimpse-dev/bin/python}
RUNS=${1:-3}
TF_RUNS=${TF_RUNS:-2}
THREADS=${THREADS:-2}
IDLE_WAIT_S=${IDLE_WAIT_S:-180}
MAX_OTHERS=${MAX_OTHERS:-0.15}
RETRIES=${RETRIES:-3}
PROMPT=128
NEW=128
cargo build --release -q -p glimpse-cli -p glimpse-bench --bin glimpse --bin bench-membw
QUANT=${QUANT:-q4_1}
case "$QUANT" in
  q4_1) GGUF=$(bash scripts/fetch_smollm2.sh 2>/dev/null | tail -n1) ;;
  q8_0 | q4_k_m) GGUF=$(bash scripts/make_kquant_smollm2.sh "$QUANT" | tail -n1) ;;
  *) echo "QUANT must be q4_1, q8_0 or q4_k_m, not $QUANT" >&2; exit 2 ;;
esac
echo "model: $GGUF" >&2
out=${KEEP:-$(mktemp)}
: >"$out"; : >"$out.rejected"; : >"$out.log"  # .log: the engines' stderr
hz=$(getconf CLK_TCK)

. bench/quiet.sh

# run_set NAME CMD...: one run set, its JSON line(s) into $out, then a line
# with the share of the machine's CPU that other processes used meanwhile. A
# set during which others used more than MAX_OTHERS of the CPU is run again
# (up to RETRIES times; the last attempt is kept whatever its share).
run_set() {
  local name=$1 b0 t0 b1 t1 tf set share attempt=1
  shift
  tf=$(mktemp); set=$(mktemp)
  while :; do
    wait_idle
    read -r b0 _ < <(cpu_jiffies)
    /usr/bin/time -f "%e %U %S" -o "$tf" "$@" >"$set" 2>>"$out.log" || { tail -n 20 "$out.log" >&2; exit 1; }
    read -r b1 _ < <(cpu_jiffies)
    "$PY" - "$name" "$b0" "$b1" "$hz" "$(nproc)" "$(cat "$tf")" "$attempt" >>"$set" <<'PYEOF'
import json, sys
name, b0, b1, hz, ncpu, e, u, s = sys.argv[1], *map(float, sys.argv[2:6]), *map(float, sys.argv[6].split())
others = max(0.0, ((b1 - b0) / hz - (u + s)) / (e * ncpu))
print(json.dumps({"impl": name, "others_cpu_share": others, "attempt": int(sys.argv[7])}))
PYEOF
    share=$(tail -n1 "$set" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["others_cpu_share"])')
    "$PY" -c "import sys; sys.exit(0 if $share <= $MAX_OTHERS or $attempt > $RETRIES else 1)" && break
    echo "$name: others used ${share} of the CPU, running the set again" >&2
    cat "$set" >>"$out.rejected"
    attempt=$((attempt + 1))
  done
  grep -v '"tokens"' "$set" >&2 || true
  cat "$set" >>"$out"
  rm -f "$tf" "$set"
}

# Interleave the engines so slow phases of a noisy machine hit all of them.
for round in 1 2; do
  run_set glimpse "$PY" bench/llm_peers.py --impl glimpse --gguf "$GGUF" --prompt-tokens $PROMPT \
    --new-tokens $NEW --runs "$RUNS" --threads "$THREADS" --glimpse target/release/glimpse
  run_set llama.cpp "$PY" bench/llm_peers.py --impl llamacpp --gguf "$GGUF" --prompt-tokens $PROMPT \
    --new-tokens $NEW --runs "$RUNS" --threads "$THREADS"
  run_set transformers "$PY" bench/llm_peers.py --impl transformers --gguf "$GGUF" --prompt-tokens $PROMPT \
    --new-tokens $NEW --runs "$TF_RUNS" --threads "$THREADS"
done
# Bandwidth bound: 2-thread read of a 1 GiB buffer (DRAM: the 96.6 MB of Q4_1
# weights do not fit the 32 MiB L3 either); KV cache at the mean decode
# context (128 + 127/2 positions), f16 as llama.cpp stores it.
wait_idle
target/release/bench-membw --threads "$THREADS" --mib 1024 --passes 10 --gguf "$GGUF" \
  --kv-positions $((PROMPT + NEW / 2)) --kv-bytes 2 | tee -a "$out"

"$PY" - "$out" "$MAX_OTHERS" <<'PYEOF'
import json, statistics as st, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
max_others = float(sys.argv[2])
engines = ["glimpse", "llama.cpp", "transformers"]
# Pair each run set with the contention line that follows it; per engine, use
# only the sets run while others took <= MAX_OTHERS of the CPU when there are
# any (all of them otherwise, flagged in the table).
sets = [(r, c) for r, c in zip(lines, lines[1:]) if "prompt_tok_per_s" in r and "others_cpu_share" in c]
rows, used = [], {}
for e in engines:
    mine = [(r, c) for r, c in sets if r["impl"] == e]
    clean = [(r, c) for r, c in mine if c["others_cpu_share"] <= max_others] or mine
    used[e] = f"{len(clean)}/{len(mine)}"
    rows += [r for r, _ in clean] + [c for _, c in clean]
rows += [r for r in lines if r["impl"].startswith("membw")]
def vals(impl, key):
    return [x for r in rows if r["impl"] == impl and key in r for x in r[key]]
med = {e: {k: st.median(vals(e, k)) for k in ("prompt_tok_per_s", "decode_tok_per_s")} for e in engines}
rss = {e: max(r["peak_rss_mib"] for r in rows if r["impl"] == e and "peak_rss_mib" in r) for e in engines}
busy = {e: max(r["others_cpu_share"] for r in rows if r["impl"] == e and "others_cpu_share" in r) for e in engines}
bw = next(r for r in rows if r["impl"] == "membw")
bound = bw["bound_tok_per_s_median"]
g = med["glimpse"]
print("\n| engine | prompt tok/s | decode tok/s | peak RSS MiB | decode / bound | sets used | others' CPU (max) |")
print("|---|---|---|---|---|---|---|")
for e in engines:
    m = med[e]
    print(f"| {e} | {m['prompt_tok_per_s']:.1f} | {m['decode_tok_per_s']:.1f} | {rss[e]:.0f} "
          f"| {m['decode_tok_per_s'] / bound:.2f} | {used[e]} | {busy[e]:.0%} |")
print("\n| glimpse / | prompt | decode | peak RSS |")
print("|---|---|---|---|")
for e in ("llama.cpp", "transformers"):
    print(f"| {e} | {g['prompt_tok_per_s'] / med[e]['prompt_tok_per_s']:.2f}x "
          f"| {g['decode_tok_per_s'] / med[e]['decode_tok_per_s']:.2f}x | {rss['glimpse'] / rss[e]:.2f}x |")
best_pp = max(med["llama.cpp"]["prompt_tok_per_s"], med["transformers"]["prompt_tok_per_s"])
print(f"\nprompt vs the faster peer: {g['prompt_tok_per_s'] / best_pp:.2f}x")
print(f"bound: {bw['bytes_per_token'] / 1e6:.1f} MB/token ({bw['weight_bytes'] / 1e6:.1f} MB weights + "
      f"{bw['kv_bytes'] / 1e6:.1f} MB f16 KV at {bw['kv_positions']} positions); read bandwidth, {bw['threads']} threads, "
      f"1 GiB: {bw['read_gb_per_s_median']:.1f} GB/s median ({bw['read_gb_per_s_best']:.1f} best) -> "
      f"{bound:.0f} tok/s ({bw['bound_tok_per_s_best']:.0f} best)")
PYEOF
