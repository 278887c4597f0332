#!/usr/bin/env bash
# Fetches and installs what the real-data and real-client tests use, once per
# machine (idempotent; CI runs it first):
#   - SmolLM2-135M-Instruct Q4_1 GGUF and the easy-VQA dataset (pip, into
#     ${GLIMPSE_CACHE:-~/.cache/glimpse});
#   - the official `openai` Python client in a throwaway venv there
#     (scripts/setup_openai_venv.sh), for the `glimpse serve` client test;
#   - Debian's chromium and playwright-core (scripts/setup_browser.sh), for
#     the chat page's browser test;
#   - Debian's ffmpeg (scripts/setup_ffmpeg.sh), for the MP4 / WebM / MKV
#     video tests.
# Without them those tests skip with a message, or fail when CI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_smollm2.sh >/dev/null
bash scripts/fetch_easy_vqa.sh >/dev/null
bash scripts/setup_openai_venv.sh >/dev/null
bash scripts/setup_browser.sh >/dev/null
bash scripts/setup_ffmpeg.sh >/dev/null
