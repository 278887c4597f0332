#!/usr/bin/env python3
"""PyTorch side of the training-throughput benchmark: the model bench-train
builds, in transformers' LlavaForConditionalGeneration, every parameter
trainable, f32, the same threads. bench/run_train.sh runs it next to
bench-train.

    python bench/train_pytorch.py --threads 2 [--steps 10] [--warmup 2] [--batch 32] [--phases]

The model: CLIP ViT 192 wide, 6 layers, 3 heads, FFN 768, quick_gelu, 64x64
images in 8x8 patches, the last layer's states with the class token dropped
(64 image rows); LLaVA's 2-layer GELU MLP projector 192 -> 256 -> 256; a
Llama 256 wide, 4 layers, 4 heads (4 KV), FFN 688, vocab 5120, tied
embeddings. Attention: transformers' default (SDPA).

A batch: 32 random images and, per row, 64 <image> ids then 16 random text
ids (80 positions); labels -100 on the image positions, the ids on the text
positions; the model's own shifted causal-LM loss (labels=). One step:
forward + loss, backward, torch.optim.AdamW (lr 1e-4; weight decay 0.01 on
tensors of rank >= 2, 0 on the rest, as glimpse's param_groups_by_dim),
zero_grad(set_to_none=True). Prints one JSON line (examples/s per step).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

VOCAB = 5120
IMAGE_TOKEN_ID = VOCAB - 1
IMAGE_TOKENS = 64
TEXT_TOKENS = 16
LR = 1e-4
WEIGHT_DECAY = 0.01


def build():
    vision = CLIPVisionConfig(hidden_size=192, intermediate_size=768, num_hidden_layers=6, num_attention_heads=3,
                              image_size=64, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, head_dim=64, max_position_embeddings=128,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
                      image_seq_length=IMAGE_TOKENS, projector_hidden_act="gelu", vision_feature_layer=-1,
                      vision_feature_select_strategy="default", tie_word_embeddings=True)
    return LlavaForConditionalGeneration(cfg).train()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--phases", action="store_true", help="per-phase medians (forward+loss, backward, optimizer)")
    p.add_argument(
        "--labelled-head",
        action="store_true",
        help="LM head only at the 17 last positions (logits_to_keep), the loss on the 16 labelled"
        " ones: what glimpse train does, instead of the model's own labels= loss over all 80",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = build()
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr(), "embeddings not tied"
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR)

    b = args.batch
    pixels = torch.randn(b, 3, 64, 64)
    text = torch.randint(0, IMAGE_TOKEN_ID, (b, TEXT_TOKENS))
    ids = torch.cat([torch.full((b, IMAGE_TOKENS), IMAGE_TOKEN_ID), text], 1)
    labels = torch.cat([torch.full((b, IMAGE_TOKENS), -100), text], 1)

    def step():
        t0 = time.perf_counter()
        if args.labelled_head:
            # positions 63..79: 63..78 predict the text ids at 64..79
            logits = model(input_ids=ids, pixel_values=pixels, logits_to_keep=TEXT_TOKENS + 1).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), text.reshape(-1))
        else:
            out = model(input_ids=ids, pixel_values=pixels, labels=labels)
            loss = out.loss
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
        "parameters": n_params,
        "batch": b,
        "positions": IMAGE_TOKENS + TEXT_TOKENS,
        "warmup": args.warmup,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "attn_implementation": model.config.text_config._attn_implementation,
        "examples_per_s_median": statistics.median(per_s),
        "examples_per_s_all": per_s,
        "step_ms_median": statistics.median([(f + bw + o) * 1e3 for f, bw, o, _ in times]),
        "first_loss": first_loss,
        "last_loss": times[-1][3],
        "torch": torch.__version__,
        "lm_head": "labelled positions" if args.labelled_head else "all positions",
    }
    if args.phases:
        out["phases_ms_median"] = {
            "forward_and_loss": statistics.median([t[0] * 1e3 for t in times]),
            "backward": statistics.median([t[1] * 1e3 for t in times]),
            "optimizer": statistics.median([t[2] * 1e3 for t in times]),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
