#!/usr/bin/env bash
# LLaVA-shaped VLM (CLIP ViT-B/16 tower, 2-layer MLP projector, 12-layer
# 768-wide Llama), random weights, f32: time to first token and decode tok/s
# for one 224x224 image + a 32-token question (229 prompt positions, 64 new
# tokens), glimpse vs transformers' LlavaForConditionalGeneration on the same
# checkpoint, same threads, same run. Needs the dev venv
# (scripts/dev/requirements.txt):
#   PY=~/.venvs/glimpse-dev/bin/python bash bench/run_vlm.sh [runs]
# Env: THREADS (2), MODEL (/tmp/glimpse-bench-llava: written once, ~0.9 GB),
# NEW (64), IDLE_WAIT_S (180: before each set, wait up to this long for the
# machine to be >= 90% idle over 2 s; 0 disables), KEEP (a file for the raw JSON).
# FEATURES=avx512 builds glimpse with gemm's AVX-512 kernels (runtime-chosen where
# the CPU has AVX-512F; off by default, see glimpse-models/Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
MODEL=${MODEL:-/tmp/glimpse-bench-llava}
NEW=${NEW:-64}
. bench/vlm_rounds.sh
cargo build --release -q -p glimpse-bench ${FEATURES:+--features "$FEATURES"} --bin bench-vlm
[ -f "$MODEL/model.safetensors" ] || "$PY" bench/vlm_pytorch.py --write "$MODEL" 2>/dev/null

two_rounds bench-vlm bench/vlm_pytorch.py --new-tokens "$NEW"
"$PY" - "$out" <<'PYEOF'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def name(r):
    return "glimpse" if r["impl"] == "glimpse" else f"transformers {r['mode']}"
names = ["glimpse", "transformers forward", "transformers generate"]
med, rss, vis = {}, {}, {}
for n in names:
    rs = [r for r in rows if name(r) == n]
    if not rs:
        continue
    med[n] = {k: st.median([x for r in rs for x in r[k + "_all"]]) for k in ("ttft_ms", "decode_tok_per_s")}
    v = [r["vision_ms_median"] for r in rs if r.get("vision_ms_median") is not None]
    vis[n] = f"{st.median(v):.0f}" if v else "-"
    rss[n] = max(r["peak_rss_mib"] for r in rs)
r0 = rows[0]
print(f"\n{r0['prompt_tokens']} prompt positions, {r0['new_tokens']} new tokens, {r0['runs']} runs x 2 rounds")
print("\n| engine | TTFT ms | of which vision ms | decode tok/s | peak RSS MiB |")
print("|---|---|---|---|---|")
for n in med:
    print(f"| {n} | {med[n]['ttft_ms']:.0f} | {vis[n]} | {med[n]['decode_tok_per_s']:.1f} | {rss[n]:.0f} |")
g = med["glimpse"]
print("\n| glimpse vs | TTFT (their ms / ours) | decode (ours / theirs) | peak RSS (ours / theirs) |")
print("|---|---|---|---|")
for n in names[1:]:
    if n in med:
        print(f"| {n} | {med[n]['ttft_ms'] / g['ttft_ms']:.2f}x | "
              f"{g['decode_tok_per_s'] / med[n]['decode_tok_per_s']:.2f}x | {rss['glimpse'] / rss[n]:.2f}x |")
same = {json.dumps(r["first_tokens"]) for r in rows if r.get("first_tokens")}
print(f"\ngreedy first 8 tokens {'agree' if len(same) == 1 else 'differ'} across engines: {sorted(same)}")
PYEOF
