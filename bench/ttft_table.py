"""The time-to-first-token table of the VLM benchmarks (bench/run_vlm_tiled.sh,
bench/run_vlm_video.sh), from the JSON lines of glimpse and transformers."""
import statistics as st

NAMES = ["glimpse", "transformers forward", "transformers generate"]


def engine(r):
    return "glimpse" if r["impl"] == "glimpse" else f"transformers {r['mode']}"


def print_table(rows, label, source, note=""):
    """One input's rows: a title (`label`, the prompt positions, `note`, runs
    and threads), each engine's median TTFT from `source` files to the first
    token with its vision share and ratio, and whether the first tokens agree."""
    med, vis = {}, {}
    for n in NAMES:
        rs = [r for r in rows if engine(r) == n]
        if not rs:
            continue
        med[n] = st.median([x for r in rs for x in r["ttft_ms_all"]])
        v = [r["vision_ms_median"] for r in rs if r.get("vision_ms_median") is not None]
        vis[n] = f"{st.median(v):.0f}" if v else "-"
    g = next(r for r in rows if r["impl"] == "glimpse")
    t = next(r for r in rows if r["impl"] != "glimpse")
    print(f"\n{label}: {g['prompt_tokens']} prompt positions (transformers: {t['prompt_tokens']}), "
          f"{note}{g['runs']} runs x 2 rounds, {g['threads']} threads")
    print(f"\n| engine | TTFT ms ({source} -> first token) | of which vision ms | TTFT ratio (theirs / ours) |")
    print("|---|---|---|---|")
    for n in med:
        print(f"| {n} | {med[n]:.0f} | {vis[n]} | {med[n] / med['glimpse']:.2f}x |")
    firsts = {r["first_token"] for r in rows if r.get("first_token") is not None}
    print(f"\ngreedy first token {'agrees' if len(firsts) == 1 else 'differs'} across engines: {sorted(firsts)}")
