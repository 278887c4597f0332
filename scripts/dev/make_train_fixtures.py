#!/usr/bin/env python3
"""Writes fixtures/train/: one training step of the tiny LLaVA fixture in PyTorch (dev-only,
run by hand), for crates/glimpse-train/tests/grad_parity.rs.

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_train_fixtures.py

Versions are pinned in scripts/dev/requirements.txt. Deterministic (f32, eager attention on
CPU, the fixture's own weights, no randomness), committed, so CI compares without Python.

The model is fixtures/llava/clip-llama (LlavaForConditionalGeneration, written by
make_llava_fixtures.py) with every parameter trainable. One batch of two rows, each one
image + one question + an answer: the processor renders the prompt and expands <image>; the
answer ids (tokenizer(" " + answer), no specials, then </s>) follow it. Labels are the answer
ids, -100 on the prompt and on padding. The shorter row is padded on the right with the pad
id (attention_mask 0 there): causal attention keeps the real positions unchanged, so the
Rust side may run the padded rows without a mask.

loss = model(input_ids, attention_mask, pixel_values, labels).loss (transformers shifts the
labels and averages over every non-ignored token of the batch), loss.backward(), then one
torch.optim.AdamW step (a single group: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
weight_decay 0.01 on every parameter).

grad_parity.safetensors (f32):
    pixel_values        (2, 3, 32, 32)
    loss                ()
    grad_norm           ()  global L2 norm over every parameter's gradient (parameters the
                            loss does not reach, e.g. the vision layer after
                            vision_feature_layer = -2, have none and count as zero)
    grad.<name>         the gradient of each selected parameter
    updated.<name>      its value after the AdamW step
grad_parity.json:
    model (fixture directory), versions, lr, weight_decay, betas, eps,
    images (file names under fixtures/images/), prompts, answers,
    input_ids, labels, attention_mask (rows, right-padded), pad_token_id,
    params (the selected names, as the checkpoint names them),
    no_grad (checkpoint names of the parameters without a gradient)
"""

import json
from pathlib import Path

import safetensors
import tokenizers
import torch
import transformers
from PIL import Image, ImageOps
from safetensors.torch import save_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "fixtures" / "llava" / "clip-llama"
IMAGES = ROOT / "fixtures" / "images"
OUT = ROOT / "fixtures" / "train"

LR = 1e-3
WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
EPS = 1e-8

ROWS = [
    ("test.png", "What is in the picture?", "a red square on a white field"),
    ("gray.png", "Which colour is it?", "gray"),
]

# Spread over the tower (embeddings, attention, MLP, norms of the layer the projector reads),
# the projector and the decoder (embeddings, both layers, final norm, lm_head).
PARAMS = [
    "vision_tower.vision_model.embeddings.patch_embedding.weight",
    "vision_tower.vision_model.embeddings.class_embedding",
    "vision_tower.vision_model.embeddings.position_embedding.weight",
    "vision_tower.vision_model.pre_layrnorm.weight",
    "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
    "vision_tower.vision_model.encoder.layers.0.self_attn.v_proj.bias",
    "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
    "vision_tower.vision_model.encoder.layers.0.layer_norm2.bias",
    "multi_modal_projector.linear_1.weight",
    "multi_modal_projector.linear_2.bias",
    "language_model.model.embed_tokens.weight",
    "language_model.model.layers.0.self_attn.k_proj.weight",
    "language_model.model.layers.0.input_layernorm.weight",
    "language_model.model.layers.1.mlp.down_proj.weight",
    "language_model.model.layers.1.self_attn.o_proj.weight",
    "language_model.model.norm.weight",
    "language_model.lm_head.weight",
]


def checkpoint_name(name: str) -> str:
    """In-memory transformers 5 name -> the llava-hf layout of the fixture's file."""
    for src, dst in [
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
    ]:
        if name.startswith(src):
            return dst + name[len(src) :]
    raise AssertionError(name)


def open_image(name: str) -> Image.Image:
    img = ImageOps.exif_transpose(Image.open(IMAGES / name))
    return img.convert("RGB")


def main():
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration.from_pretrained(
        MODEL, dtype=torch.float32, attn_implementation="eager"
    )
    model.train()  # dropout is 0 in both configs
    processor = AutoProcessor.from_pretrained(MODEL)
    tok = processor.tokenizer
    pad = tok.pad_token_id
    eos = tok.eos_token_id

    file_names = set(safetensors.safe_open(MODEL / "model.safetensors", "pt").keys())
    params = {checkpoint_name(n): p for n, p in model.named_parameters()}
    assert set(params) == file_names, set(params) ^ file_names

    rows, pixels, prompts = [], [], []
    for image, question, answer in ROWS:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = processor(text=prompt, images=open_image(image), return_tensors="pt")
        ids = [int(x) for x in enc["input_ids"][0]]
        reply = tok(" " + answer, add_special_tokens=False)["input_ids"] + [eos]
        rows.append((ids + reply, [-100] * len(ids) + reply))
        pixels.append(enc["pixel_values"])
        prompts.append(prompt)
    t = max(len(r[0]) for r in rows)
    input_ids = [ids + [pad] * (t - len(ids)) for ids, _ in rows]
    labels = [lab + [-100] * (t - len(lab)) for _, lab in rows]
    mask = [[1] * len(ids) + [0] * (t - len(ids)) for ids, _ in rows]
    pixel_values = torch.cat(pixels, 0)

    out = model(
        input_ids=torch.tensor(input_ids),
        attention_mask=torch.tensor(mask),
        pixel_values=pixel_values,
        labels=torch.tensor(labels),
    )
    loss = out.loss
    loss.backward()

    no_grad = sorted(n for n, p in params.items() if p.grad is None)
    sq = sum(float(p.grad.double().pow(2).sum()) for p in params.values() if p.grad is not None)
    tensors = {
        "pixel_values": pixel_values.contiguous(),
        "loss": loss.detach().reshape(()),
        "grad_norm": torch.tensor(sq**0.5, dtype=torch.float32),
    }
    for n in PARAMS:
        assert params[n].grad is not None, n
        tensors[f"grad.{n}"] = params[n].grad.detach().clone().contiguous()

    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    opt.step()
    for n in PARAMS:
        tensors[f"updated.{n}"] = params[n].detach().clone().contiguous()

    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT / "grad_parity.safetensors"), metadata={"format": "pt"})
    meta = {
        "model": "fixtures/llava/clip-llama",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
        },
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "betas": list(BETAS),
        "eps": EPS,
        "images": [r[0] for r in ROWS],
        "prompts": prompts,
        "answers": [r[2] for r in ROWS],
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": mask,
        "pad_token_id": pad,
        "params": PARAMS,
        "no_grad": no_grad,
    }
    (OUT / "grad_parity.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"loss {loss.item():.6f}  grad norm {sq**0.5:.6f}  no grad: {len(no_grad)} tensors")


if __name__ == "__main__":
    main()
