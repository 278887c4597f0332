#!/usr/bin/env python3
"""PyTorch + PEFT side of the LoRA training-throughput benchmark: the model
bench-train-lora trains, SmolLM2-135M-Instruct from the same GGUF file
(dequantized to f32 by transformers' gguf_file= loader), frozen, with PEFT
LoRA adapters, f32, the same threads. bench/run_train.sh (BENCH=lora) runs
it next to bench-train-lora.

    python bench/train_lora_pytorch.py --threads 2 [--steps 5] [--warmup 1] [--batch 4] [--seq 256] [--phases]

Adapters: peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
target_modules=q/k/v/o_proj), PEFT's own initialisation (A kaiming-uniform,
B zero). A batch: the same ids as bench-train-lora (the same LCG, so the
first losses agree: B = 0 leaves the base model's loss), labels=input_ids
(the model's shifted causal-LM loss). One step: forward + loss, backward,
torch.optim.AdamW (lr 1e-4, weight decay 0.01: every factor has rank 2) on
the factors, zero_grad(set_to_none=True). Prints one JSON line.
"""
import argparse
import json
import os
import statistics
import time
from pathlib import Path

import peft
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

LR = 1e-4
WEIGHT_DECAY = 0.01
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
DEFAULT_GGUF = Path(os.path.expanduser("~/.cache/glimpse/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def random_ids(n, below, seed):
    """bench/src/common.rs's random_ids: a 64-bit LCG."""
    mask = (1 << 64) - 1
    s = (seed * 6364136223846793005 + 1) & mask
    out = []
    for _ in range(n):
        s = (s * 6364136223846793005 + 1442695040888963407) & mask
        out.append((s >> 33) % below)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--phases", action="store_true", help="per-phase medians (forward+loss, backward, optimizer)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    base = AutoModelForCausalLM.from_pretrained(
        str(args.gguf.parent), gguf_file=args.gguf.name, dtype=torch.float32
    )
    model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    ).train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)

    b, t = args.batch, args.seq
    vocab = base.config.vocab_size
    ids = torch.tensor(random_ids(b * t, vocab, 0), dtype=torch.long).reshape(b, t)

    def step():
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, loss.item()

    first_loss = None
    for _ in range(args.warmup):
        r = step()
        first_loss = r[3] if first_loss is None else first_loss
    times = [step() for _ in range(args.steps)]
    first_loss = times[0][3] if first_loss is None else first_loss
    per_s = [b / (f + bw + o) for f, bw, o, _ in times]
    out = {
        "impl": "pytorch",
        "model": args.gguf.name,
        "parameters": n_params,
        "batch": b,
        "positions": t,
        "warmup": args.warmup,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "attn_implementation": base.config._attn_implementation,
        "examples_per_s_median": statistics.median(per_s),
        "tokens_per_s_median": statistics.median(per_s) * t,
        "examples_per_s_all": per_s,
        "step_ms_median": statistics.median([(f + bw + o) * 1e3 for f, bw, o, _ in times]),
        "first_loss": first_loss,
        "last_loss": times[-1][3],
        "torch": torch.__version__,
        "peft": peft.__version__,
    }
    if args.phases:
        out["phases_ms_median"] = {
            "forward_and_loss": statistics.median([x[0] * 1e3 for x in times]),
            "backward": statistics.median([x[1] * 1e3 for x in times]),
            "optimizer": statistics.median([x[2] * 1e3 for x in times]),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
