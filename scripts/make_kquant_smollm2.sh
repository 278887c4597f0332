#!/usr/bin/env bash
# Writes SmolLM2-135M-Instruct requantized from the fetched Q4_1 file's
# dequantized weights, for the K-quant / Q8_0 kernel checks and benchmarks:
#
#     scripts/make_kquant_smollm2.sh q4_k_m    # or q8_0; prints the .gguf path last
#     GGUF=$(scripts/make_kquant_smollm2.sh q8_0)
#
# q8_0: every 2-D weight Q8_0. q4_k_m: llama.cpp's Q4_K_M rule (Q6_K for the
# head and some attn_v / ffn_down, Q4_K elsewhere), but rows of 576 values
# hold no 256-value K block, so in SmolLM2-135M only ffn_down is K-quant and
# the rest Q8_0 (llama.cpp would pick Q5_0 there).
# The quantizers are candle's (ports of ggml's reference quantize_row_*),
# run by the `requant_gguf` example of glimpse-models: llama.cpp's quantize
# tool needs llama-cpp-python (~25 min to build on 2 cores) and the gguf
# PyPI package has no K-quant quantizers. Metadata (config, tokenizer) is
# copied as it is. Output: ${GLIMPSE_CACHE:-$HOME/.cache/glimpse}/smollm2/
# SmolLM2-135M-Instruct.<Q8_0|Q4_K_M>.gguf, beside the Q4_1 file (fetched
# first if missing); idempotent. Everything but the final path goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
    q8_0) TAG=Q8_0 ;;
    q4_k_m) TAG=Q4_K_M ;;
    *) echo "usage: $0 q8_0|q4_k_m" >&2; exit 2 ;;
esac

SRC="$(bash scripts/fetch_smollm2.sh | tail -n1)"
DST="$(dirname "$SRC")/SmolLM2-135M-Instruct.$TAG.gguf"
if [[ -s "$DST" && "$DST" -nt "$SRC" ]]; then
    echo "already present: $DST" >&2
    echo "$DST"
    exit 0
fi
cargo run --release -q -p glimpse-models --example requant_gguf -- "$SRC" "$DST" "$1" >&2
echo "$DST"
