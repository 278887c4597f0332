#!/usr/bin/env python3
"""Trains the small CLIP that ships in models/shapes-clip (dev-only, run by hand).

    ~/.venvs/glimpse-dev/bin/python scripts/dev/train_shapes_clip.py

A stopgap so that the README's first command gives a meaningful answer on a
fresh machine with no download: a 0.5M-parameter CLIPModel trained with
InfoNCE on procedurally drawn coloured shapes ("a photo of a red circle").
glimpse's own trainer replaces it once training lands in Rust. Deterministic
(fixed seeds); about two minutes on two cores. Also writes the example images
under examples/.
"""

import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from transformers import CLIPConfig, CLIPModel

sys.path.insert(0, str(Path(__file__).parent))
from make_encoder_fixtures import clip_tokenizer  # noqa: E402

from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "models" / "shapes-clip"
EXAMPLES = ROOT / "examples"

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SHAPES = ["circle", "square", "triangle", "star"]
SIZE = 64


def draw(colour: str, shape: str, rng: random.Random, size=SIZE) -> Image.Image:
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.18, 0.32) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLOURS[colour])
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        d.polygon(pts, fill=fill)
    return img


def caption(colour, shape):
    return f"a photo of a {colour} {shape}"


def main():
    torch.manual_seed(0)
    rng = random.Random(0)
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    tok = clip_tokenizer(OUT)
    classes = [(c, s) for c in COLOURS for s in SHAPES]
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=32, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=SIZE, patch_size=8,
        ),
        projection_dim=64,
    )
    model = CLIPModel(cfg)
    proc = CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    texts = tok([caption(c, s) for c, s in classes], padding=True, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps, batch = 3000, 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        labels = [rng.randrange(len(classes)) for _ in range(batch)]
        imgs = [draw(*classes[i], rng) for i in labels]
        pixels = proc(images=imgs, return_tensors="pt")["pixel_values"]
        img = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        txt = F.normalize(model.get_text_features(**texts).pooler_output, dim=-1)
        # Every class caption is a candidate, so repeated captions in a batch are
        # never treated as negatives of each other.
        logits = img @ txt.T * model.logit_scale.exp().clamp(max=100)
        target = torch.tensor(labels)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            acc = (logits.argmax(-1) == target).float().mean().item()
            print(f"step {step:4d} loss {loss.item():.4f} acc {acc:.3f}", flush=True)
    model.eval()
    # held-out accuracy on fresh drawings
    eval_rng = random.Random(1)
    with torch.no_grad():
        txt = F.normalize(model.get_text_features(**texts).pooler_output, dim=-1)
        correct = 0
        for i in range(len(classes) * 10):
            k = i % len(classes)
            pixels = proc(images=[draw(*classes[k], eval_rng)], return_tensors="pt")["pixel_values"]
            img = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
            correct += int((img @ txt.T).argmax().item() == k)
        print(f"held-out zero-shot accuracy over {len(classes)} captions: {correct / (len(classes) * 10):.3f}")
    model.save_pretrained(OUT, safe_serialization=True)
    proc.save_pretrained(OUT)
    EXAMPLES.mkdir(exist_ok=True)
    for (c, s), seed in [(("red", "circle"), 11), (("blue", "star"), 12), (("green", "triangle"), 13)]:
        draw(c, s, random.Random(seed), size=160).save(EXAMPLES / f"{c}-{s}.png")
    print(f"wrote {OUT.relative_to(ROOT)} and examples/")


if __name__ == "__main__":
    main()
