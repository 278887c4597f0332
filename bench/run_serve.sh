#!/usr/bin/env bash
# Serving under load: `glimpse serve` against llama.cpp's OpenAI-compatible
# server (llama-cpp-python[server]) on the same GGUF (SmolLM2-135M-Instruct
# Q4_1, scripts/fetch_smollm2.sh), the same threads, 1 / 8 / 32 / 64
# concurrent streaming clients (bench/serve_load.py) for DURATION seconds
# each: aggregate output tokens/s, time to first token and inter-token latency
# p50/p99, failed requests, server RSS every second. Then the shipped VLM
# (`glimpse serve` with no --model) under image prompts (examples/easy-vqa)
# at 8 and 32 clients. Prints a markdown table and the glimpse / llama.cpp
# throughput ratios; writes each run's JSON (RSS series included) to RESULTS.
#
#   bash bench/run_serve.sh
#   DURATION=600 CLIENTS=64 SKIP_PEER=1 SKIP_VLM=1 bash bench/run_serve.sh   # the 10-minute soak
#
# Env: THREADS (2: glimpse's RAYON_NUM_THREADS, llama.cpp's n_threads and
# n_threads_batch), DURATION (30 s per run: no request starts later; those in
# flight then finish, up to DRAIN_CAP, 600 s: llama.cpp's queue at 64 clients
# takes ~64 x 128 tokens / 50 tok/s ~ 3 min to drain), CLIENTS ("1 8 32 64"),
# VLM_CLIENTS ("8 32"), MAX_TOKENS (128), VLM_MAX_TOKENS (16), SLOTS (8:
# glimpse --parallel), QUEUE (64: glimpse --queue; 64 clients never need
# more), CTX (2048: llama.cpp n_ctx), VLM_MODEL (glimpse-easy-vqa),
# SKIP_PEER=1, SKIP_VLM=1, SKIP_GLIMPSE=1 (the peer alone), IDLE_WAIT_S (60:
# before each run wait up to this long for the machine to be >= 90% idle,
# bench/quiet.sh; 0 disables), RESULTS (target/serve-bench/<UTC time>),
# BENCH_VENV (${GLIMPSE_CACHE:-~/.cache/glimpse}/bench-venv).
#
# The peer: llama-cpp-python 0.3.36 (bench/serve_requirements.txt), installed
# into BENCH_VENV on the first run. pip compiles llama.cpp from source, CPU
# only (CMAKE_ARGS below; cmake and ninja come from PyPI as build
# dependencies, no system cmake needed): 25 min wall (17 min of CPU) on this
# 2-core machine while others built, once. Its server has no parallel slots:
# one Llama object behind a lock runs one request at a time and the others
# wait (no continuous batching; n_seq_max only batches embeddings), so "the
# same slot count" cannot be had: it runs with 1 slot, glimpse with SLOTS. By
# default it also cuts the streaming request short ([DONE] without a
# finish_reason) whenever another one is waiting (interrupt_requests=True),
# which would count as failures here: it runs with --interrupt_requests false.
# It ignores stream_options.include_usage, so its output tokens are counted as
# content deltas (one per token); glimpse's are usage.completion_tokens (its
# EOS included when a request stops). serve_load.py is standard-library
# Python. The VLM's answers are one word: one content delta per request, so
# its ITL is empty and its tokens are that word plus EOS.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
DURATION=${DURATION:-30}
DRAIN_CAP=${DRAIN_CAP:-600}
CLIENTS=${CLIENTS:-"1 8 32 64"}
VLM_CLIENTS=${VLM_CLIENTS:-"8 32"}
MAX_TOKENS=${MAX_TOKENS:-128}
VLM_MAX_TOKENS=${VLM_MAX_TOKENS:-16}
SLOTS=${SLOTS:-8}
QUEUE=${QUEUE:-64}
CTX=${CTX:-2048}
VLM_MODEL=${VLM_MODEL:-glimpse-easy-vqa}
SKIP_PEER=${SKIP_PEER:-0}
SKIP_VLM=${SKIP_VLM:-0}
SKIP_GLIMPSE=${SKIP_GLIMPSE:-0}
IDLE_WAIT_S=${IDLE_WAIT_S:-60}
START_WAIT_S=${START_WAIT_S:-300}
RESULTS=${RESULTS:-target/serve-bench/$(date -u +%Y%m%dT%H%M%SZ)}
BENCH_VENV=${BENCH_VENV:-${GLIMPSE_CACHE:-$HOME/.cache/glimpse}/bench-venv}
LLAMA_CPP_PYTHON=0.3.36  # keep in step with bench/serve_requirements.txt
BPY=$BENCH_VENV/bin/python
mkdir -p "$RESULTS"
echo "results: $RESULTS" >&2

. bench/quiet.sh

[[ $SKIP_GLIMPSE == 1 ]] || cargo build --release -q -p glimpse-cli --bin glimpse
GGUF=$(bash scripts/fetch_smollm2.sh 2>/dev/null | tail -n1)

# The bench venv holds llama-cpp-python at the pinned version with its [server] extra.
peer_installed() {
  [[ -x $BPY ]] && "$BPY" - "$LLAMA_CPP_PYTHON" 2>/dev/null <<'PYEOF'
import sys
from importlib.metadata import version
import llama_cpp.server.app  # the [server] extra's modules import
sys.exit(version("llama-cpp-python") != sys.argv[1])
PYEOF
}
if [[ $SKIP_PEER != 1 ]] && ! peer_installed; then
  echo "installing llama-cpp-python[server]==$LLAMA_CPP_PYTHON into $BENCH_VENV (compiles llama.cpp: ~25 min on 2 cores, once)" >&2
  [[ -x $BPY ]] || python3 -m venv "$BENCH_VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_HIP=OFF -DGGML_BLAS=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$BPY" -m pip install --disable-pip-version-check -q -r bench/serve_requirements.txt >&2
  peer_installed || { echo "llama-cpp-python[server]==$LLAMA_CPP_PYTHON did not install into $BENCH_VENV" >&2; exit 1; }
fi
PY=$BPY
[[ -x $PY ]] || PY=python3  # serve_load.py and the summary need only the standard library

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

SERVER_PID=
stop_server() {
  [[ -n $SERVER_PID ]] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
trap stop_server EXIT

# start_server NAME URL CMD...: start CMD in the background (its output in
# RESULTS/NAME.log) and wait, at most START_WAIT_S, for URL to answer 200.
start_server() {
  local name=$1 url=$2 waited=0
  shift 2
  "$@" >>"$RESULTS/$name.log" 2>&1 &
  SERVER_PID=$!
  until "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 or sys.exit(1)' "$url" 2>/dev/null; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "$name exited while starting:" >&2; tail -n 20 "$RESULTS/$name.log" >&2; exit 1
    fi
    if ((waited >= START_WAIT_S * 2)); then
      echo "$name did not answer $url within ${START_WAIT_S}s" >&2; tail -n 20 "$RESULTS/$name.log" >&2; exit 1
    fi
    sleep 0.5; waited=$((waited + 1))
  done
  echo "$name: up (pid $SERVER_PID)" >&2
}

# load ENGINE SLOTS NAME BASE_URL ARGS...: one serve_load.py run into RESULTS/NAME.json
load() {
  local engine=$1 slots=$2 name=$3 url=$4
  shift 4
  wait_idle
  "$PY" bench/serve_load.py --base-url "$url" --pid "$SERVER_PID" --duration "$DURATION" \
    --drain-cap "$DRAIN_CAP" --label "$engine slots=$slots" --out "$RESULTS/$name.json" "$@" >/dev/null
}

# glimpse, text
if [[ $SKIP_GLIMPSE != 1 ]]; then
  port=$(free_port)
  start_server glimpse-text "http://127.0.0.1:$port/health" \
    env RAYON_NUM_THREADS="$THREADS" target/release/glimpse serve --model "$GGUF" --host 127.0.0.1 \
    --port "$port" --parallel "$SLOTS" --queue "$QUEUE"
  for c in $CLIENTS; do
    load glimpse "$SLOTS" "glimpse-text-c$c" "http://127.0.0.1:$port/v1" --clients "$c" \
      --max-tokens "$MAX_TOKENS" --prompt-set text
  done
  stop_server
fi

# llama.cpp (llama-cpp-python), text
if [[ $SKIP_PEER != 1 ]]; then
  port=$(free_port)
  start_server llamacpp-text "http://127.0.0.1:$port/v1/models" \
    "$BPY" -m llama_cpp.server --model "$GGUF" --model_alias smollm2 --host 127.0.0.1 --port "$port" \
    --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx "$CTX" --interrupt_requests false
  for c in $CLIENTS; do
    load llama.cpp 1 "llamacpp-text-c$c" "http://127.0.0.1:$port/v1" --clients "$c" \
      --max-tokens "$MAX_TOKENS" --prompt-set text
  done
  stop_server
fi

# glimpse, the shipped VLM, image prompts
if [[ $SKIP_VLM != 1 && $SKIP_GLIMPSE != 1 ]]; then
  port=$(free_port)
  start_server glimpse-vlm "http://127.0.0.1:$port/health" \
    env RAYON_NUM_THREADS="$THREADS" target/release/glimpse serve --host 127.0.0.1 --port "$port" \
    --parallel "$SLOTS" --queue "$QUEUE"
  for c in $VLM_CLIENTS; do
    load glimpse "$SLOTS" "glimpse-vlm-c$c" "http://127.0.0.1:$port/v1" --clients "$c" --model "$VLM_MODEL" \
      --max-tokens "$VLM_MAX_TOKENS" --prompt-set image --images examples/easy-vqa
  done
  stop_server
fi

"$PY" - "$RESULTS" <<'PYEOF' | tee "$RESULTS/summary.md"
import glob, json, os, sys
rows = []
for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    r = json.load(open(p))
    r["name"] = os.path.basename(p)[:-5]
    rows.append(r)
order = {"glimpse-text": 0, "llamacpp-text": 1, "glimpse-vlm": 2}
rows.sort(key=lambda r: (order.get(r["name"].rsplit("-c", 1)[0], 9), r["clients"]))
def f(x, d=1):
    return "-" if x is None else f"{x:.{d}f}"
print("| engine | prompts | clients | ok | failed | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
      "| RSS MiB after warm-up → last (max) | others' CPU |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    m = r.get("rss_mib", {})
    print(f"| {r['label']} | {r['prompt_set']} | {r['clients']} | {r['requests_ok']} | {r['requests_failed']} "
          f"| {f(r['output_tok_per_s'])} | {f(r['ttft_ms']['p50'], 0)} | {f(r['ttft_ms']['p99'], 0)} "
          f"| {f(r['itl_ms']['p50'])} | {f(r['itl_ms']['p99'])} "
          f"| {f(m.get('after_warmup'))} → {f(m.get('last'))} ({f(m.get('max'))}) "
          f"| {f(100 * r['others_cpu_share'], 0) + '%' if r.get('others_cpu_share') is not None else '-'} |")
g = {r["clients"]: r for r in rows if r["name"].startswith("glimpse-text")}
l = {r["clients"]: r for r in rows if r["name"].startswith("llamacpp-text")}
if g and l:
    print("\n| clients | glimpse tok/s | llama.cpp tok/s | glimpse / llama.cpp | same, in-window tok/s |")
    print("|---|---|---|---|---|")
    def ratio(a, b):
        return f(a / b if a and b else None, 2) + "×"
    for c in sorted(set(g) & set(l)):
        a, b = g[c]["output_tok_per_s"], l[c]["output_tok_per_s"]
        goal = " (goal ≥ 1.5×)" if c in (8, 32) else ""
        print(f"| {c} | {f(a)} | {f(b)} | {ratio(a, b)}{goal} "
              f"| {ratio(g[c]['window_tok_per_s'], l[c]['window_tok_per_s'])} |")
    print("\noutput tok/s: completion tokens of finished requests / (first start -> last end), the drain "
          "after DURATION included; in-window: content deltas received during DURATION / DURATION.")
    print("llama.cpp = llama-cpp-python's server: one request at a time (no parallel slots), "
          "--interrupt_requests false; its tokens are counted as content deltas (it sends no stream usage), "
          "glimpse's are usage.completion_tokens.")
for r in rows:
    if r["requests_failed"]:
        print(f"\n{r['name']}: {r['requests_failed']} failed, e.g. " + "; ".join(r["errors"][:3]))
top = [r for r in rows if r["name"].startswith("glimpse") and r["clients"] == max(x["clients"] for x in rows)]
for r in top:
    m = r.get("rss_mib", {})
    print(f"\n{r['name']}: {r['requests_failed']} failed of {r['requests_ok'] + r['requests_failed']} over "
          f"{r['duration_s']:.0f} s; RSS after {m.get('warmup_s', 0):.0f} s warm-up {f(m.get('after_warmup'))} MiB, "
          f"last {f(m.get('last'))} MiB (growth {f(m.get('growth_after_warmup'))} MiB)")
PYEOF
