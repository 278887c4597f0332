#!/usr/bin/env bash
# Fetches what the real-data tests read (with pip, into ${GLIMPSE_CACHE:-~/.cache/glimpse},
# once per machine): SmolLM2-135M-Instruct Q4_1 GGUF and the easy-VQA dataset.
# Without them those tests skip with a message; CI runs this first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_smollm2.sh >/dev/null
bash scripts/fetch_easy_vqa.sh >/dev/null
