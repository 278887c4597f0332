"""What the PyTorch sides of the VLM benchmarks share (bench/vlm_pytorch.py,
bench/vlm_tiled_pytorch.py, bench/vlm_video_pytorch.py): their command line,
a deterministic picture, the timed forward from files to the first token, and
the warm-up, runs and JSON lines their run scripts read (bench/ttft_table.py)."""
import argparse
import json
import statistics
import time

import numpy as np
import torch
from transformers import DynamicCache


def parse_args(extra=None, generate_help="also time model.generate(max_new_tokens=1)"):
    """`--write DIR` or `--run DIR --threads N --runs N [--generate]`, plus what `extra(parser)`
    adds; torch's threads set from --threads."""
    p = argparse.ArgumentParser()
    p.add_argument("--write")
    p.add_argument("--run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--generate", action="store_true", help=generate_help)
    if extra:
        extra(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    return a


def colour_field(h, w):
    """(h, w, 3) float32: smooth colour fields, deterministic."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([(x / (w - 1)) * 255, (y / (h - 1)) * 255, ((x + y) % 97) / 96 * 255], -1)


def forward_ttft(model, inputs):
    """(ttft seconds, prompt positions, first id): `inputs()` (open, decode,
    the processor), the model's forward with a KV cache and the LM head on the
    last position, argmax."""
    t = time.perf_counter()
    x = inputs()
    cache = DynamicCache(config=model.config.get_text_config())
    out = model(**x, past_key_values=cache, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1].argmax(-1).item()
    return time.perf_counter() - t, x["input_ids"].shape[1], tok


def seconds(f):
    """Seconds `f()` takes."""
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def report(fields, runs, threads, once, vision, generate=None):
    """One warm-up `once()`, then `runs` of `once()` (TTFT) each followed by
    `vision()` (seconds of the tower alone); prints the forward line, `fields`
    after its mode, and with `generate` (seconds of model.generate) its line."""
    _, positions, first = once()
    ttfts, visions = [], []
    for _ in range(runs):
        ttft, _, _ = once()
        ttfts.append(ttft * 1e3)
        visions.append(vision() * 1e3)
    impl = f"transformers {__import__('transformers').__version__} / torch {torch.__version__}"
    row = {"impl": impl, "mode": "forward", **fields, "prompt_tokens": positions, "runs": runs,
           "threads": threads, "ttft_ms_median": statistics.median(ttfts), "ttft_ms_all": ttfts,
           "vision_ms_median": statistics.median(visions), "first_token": first}
    print(json.dumps(row), flush=True)
    if generate:
        generate()
        gt = [generate() * 1e3 for _ in range(runs)]
        print(json.dumps({**row, "mode": "generate", "ttft_ms_median": statistics.median(gt), "ttft_ms_all": gt,
                          "vision_ms_median": None}), flush=True)
