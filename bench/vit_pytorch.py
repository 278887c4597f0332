#!/usr/bin/env python3
"""PyTorch side of the ViT-B/16 benchmark: transformers' CLIPVisionModel with
random weights, f32, the same threads as glimpse. One JSON line per batch size.

    python bench/vit_pytorch.py --threads 2 --batch 1,8 --runs 5 [--cuda]
"""
import argparse
import json
import resource
import statistics
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", default="1,8")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cuda", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = "cuda" if a.cuda else "cpu"
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16, hidden_act="quick_gelu")
    model = CLIPVisionModel(cfg).eval().to(dev)
    for b in [int(x) for x in a.batch.split(",")]:
        pixels = torch.randn(b, 3, 224, 224, device=dev)
        with torch.inference_mode():
            model(pixel_values=pixels).pooler_output.cpu()
            rates = []
            for _ in range(a.runs):
                t = time.perf_counter()
                model(pixel_values=pixels).pooler_output.cpu()
                rates.append(b / (time.perf_counter() - t))
        print(json.dumps({
            "impl": f"pytorch {torch.__version__}",
            "batch": b,
            "runs": a.runs,
            "images_per_s_median": statistics.median(rates),
            "images_per_s_all": rates,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }), flush=True)


if __name__ == "__main__":
    main()
