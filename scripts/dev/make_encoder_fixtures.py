#!/usr/bin/env python3
"""Writes the CLIP / SigLIP parity fixtures under fixtures/ (dev-only, run by hand).

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_encoder_fixtures.py

Versions are pinned in scripts/dev/requirements.txt. The output is deterministic
(fixed seeds) and committed, so CI compares against it without Python.

For each tiny random model it writes an HF model directory (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json,
preprocessor_config.json) and reference.safetensors with what transformers
computes: preprocessed pixel values (PIL backend, the reference behaviour of
CLIPImageProcessor / SiglipImageProcessor), tokenised text, vision
last_hidden_state / hidden_states[-2] / pooled output, text outputs, image and
text embeddings, logits, and a run at another input size with
interpolate_pos_encoding=True.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPConfig,
    CLIPModel,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipModel,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "encoders"
IMAGES = ROOT / "fixtures" / "images"

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "teal", "brown", "gray", "black"]
SHAPES = ["circle", "square", "triangle", "rectangle", "star", "cross"]
CORPUS = [
    f"a photo of a {c} {s}" for c in COLOURS for s in SHAPES
] + [f"there are {n} {c} {s}s on a white background" for n in ["two", "three", "many"] for c in COLOURS for s in SHAPES]

TEXTS = ["a photo of a red circle", "two green triangles on a white background!", "Teal STAR"]


def make_images():
    """Test images: each needs a resize, and the RGB one a crop."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    h, w = 67, 97
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) % 256], axis=-1).astype(np.uint8)
    rgb[20:45, 30:60] = [220, 30, 30]  # a red block with sharp edges exercises the resampler
    rgb = np.clip(rgb.astype(int) + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(IMAGES / "test.png")

    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    rgba[:, :, 3] = np.linspace(0, 255, 50, dtype=np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(IMAGES / "rgba.png")

    gray = (np.add.outer(np.arange(60), np.arange(45)) * 2 % 256).astype(np.uint8)
    Image.fromarray(gray, "L").save(IMAGES / "gray.png")

    # A JPEG stored sideways with EXIF orientation 6 (rotate 90° clockwise to view).
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb[:, :64], "RGB").save(IMAGES / "rotated.jpg", quality=92, exif=exif)


def clip_tokenizer(path: Path):
    """A byte-level BPE tokenizer laid out like openai/clip-vit-base-patch32's."""
    tok = Tokenizer(models.BPE(unk_token=None, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", tok.token_to_id("<|startoftext|>")), ("<|endoftext|>", tok.token_to_id("<|endoftext|>"))],
    )
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.save_pretrained(path)
    return fast


def siglip_tokenizer(path: Path):
    """A unigram tokenizer laid out like google/siglip-base-patch16-224's: '</s>' appended, pads with '</s>'."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"[^\w\s]"), ""), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    tok.decoder = decoders.Metaspace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    return fast


def save_processor(proc, path: Path):
    proc.save_pretrained(path)


def t(x):
    return x.detach().contiguous().float().clone()


def open_image(path: Path) -> Image.Image:
    """What a user hands the processor: the decoded file, upright, in its own
    mode, so the processor's convert_to_rgb composites RGBA over white.
    (transformers' load_image would instead drop alpha with convert("RGB").)"""
    return ImageOps.exif_transpose(Image.open(path))


def reference(model, kind, proc, tok, text_len, path: Path, interp_hw):
    torch.manual_seed(123)
    paths = [IMAGES / "test.png", IMAGES / "rgba.png"]
    images = [open_image(p) for p in paths]
    pixel_values = proc(images=images, return_tensors="pt")["pixel_values"]
    refs = {"pixel_values": pixel_values}
    for name in ["gray.png", "rotated.jpg"]:
        refs["pixel_values_" + name.split(".")[0]] = proc(images=[open_image(IMAGES / name)], return_tensors="pt")[
            "pixel_values"
        ]
    if kind == "clip":
        enc = tok(TEXTS, padding=True, truncation=True, max_length=text_len, return_tensors="pt")
    else:
        enc = tok(TEXTS, padding="max_length", truncation=True, max_length=text_len, return_tensors="pt")
    input_ids = enc["input_ids"]
    attention_mask = enc["attention_mask"]
    refs["input_ids"] = input_ids.to(torch.int64)
    refs["attention_mask"] = attention_mask.to(torch.int64)
    with torch.no_grad():
        vis = model.vision_model(pixel_values=pixel_values, output_hidden_states=True)
        refs["vision_last_hidden_state"] = vis.last_hidden_state
        refs["vision_hidden_states_m2"] = vis.hidden_states[-2]
        refs["vision_hidden_states_0"] = vis.hidden_states[0]
        refs["vision_pooled"] = vis.pooler_output
        text_kwargs = {"input_ids": input_ids}
        if kind == "clip":
            text_kwargs["attention_mask"] = attention_mask
        txt = model.text_model(**text_kwargs)
        refs["text_last_hidden_state"] = txt.last_hidden_state
        refs["text_pooled"] = txt.pooler_output
        out = model(pixel_values=pixel_values, return_dict=True, **text_kwargs)
        refs["image_embeds"] = out.image_embeds
        refs["text_embeds"] = out.text_embeds
        refs["logits_per_image"] = out.logits_per_image
        big = torch.randn(2, 3, *interp_hw)
        vis_big = model.vision_model(pixel_values=big, interpolate_pos_encoding=True)
        refs["interp_pixel_values"] = big
        refs["interp_last_hidden_state"] = vis_big.last_hidden_state
        refs["interp_pooled"] = vis_big.pooler_output
    save_file({k: t(v) for k, v in refs.items()}, str(path / "reference.safetensors"))
    (path / "reference.json").write_text(json.dumps({"texts": TEXTS, "images": [p.name for p in paths]}, indent=1) + "\n")


def tiny_init(model, seed):
    """Random weights large enough that every block changes the output (HF's init is near-identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "logit_scale" in name:
                p.fill_(np.log(10.0))
            elif "logit_bias" in name:
                p.fill_(-2.5)
            elif p.ndim == 1 and ("norm" in name):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def build(name, kind, cfg_kwargs, proc_kwargs, interp_hw, seed):
    path = OUT / name
    path.mkdir(parents=True, exist_ok=True)
    tok = clip_tokenizer(path) if kind == "clip" else siglip_tokenizer(path)
    text = dict(cfg_kwargs["text_config"], vocab_size=len(tok))
    if kind == "clip":
        text.setdefault("eos_token_id", tok.convert_tokens_to_ids("<|endoftext|>"))
        text.setdefault("bos_token_id", tok.convert_tokens_to_ids("<|startoftext|>"))
        text["pad_token_id"] = tok.pad_token_id
        cfg = CLIPConfig(text_config=text, vision_config=cfg_kwargs["vision_config"], projection_dim=cfg_kwargs["projection_dim"])
        model = CLIPModel(cfg).eval()
        proc = CLIPImageProcessorPil(**proc_kwargs)
    else:
        text["pad_token_id"] = tok.pad_token_id
        text["eos_token_id"] = tok.eos_token_id
        cfg = SiglipConfig(text_config=text, vision_config=cfg_kwargs["vision_config"])
        model = SiglipModel(cfg).eval()
        proc = SiglipImageProcessorPil(**proc_kwargs)
    tiny_init(model, seed)
    model.save_pretrained(path, safe_serialization=True)
    save_processor(proc, path)
    reference(model, kind, proc, tok, text["max_position_embeddings"], path, interp_hw)
    print(f"wrote {path.relative_to(ROOT)}")


def main():
    torch.manual_seed(0)
    make_images()
    build(
        "clip-a",
        "clip",
        {
            "text_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=24),
            "vision_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8),
            "projection_dim": 16,
        },
        dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        (48, 64),
        1,
    )
    build(
        "clip-b",
        "clip",
        {
            "text_config": dict(
                hidden_size=24, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                hidden_act="gelu", eos_token_id=2,
            ),
            "vision_config": dict(
                hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=20, patch_size=4,
                hidden_act="gelu",
            ),
            "projection_dim": 12,
        },
        dict(size={"shortest_edge": 24}, crop_size={"height": 20, "width": 20}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]),
        (28, 16),
        2,
    )
    build(
        "siglip-a",
        "siglip",
        {
            "text_config": dict(
                hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                projection_size=32,
            ),
            "vision_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8),
        },
        dict(size={"height": 32, "width": 32}),
        (48, 40),
        3,
    )
    build(
        "siglip-b",
        "siglip",
        {
            "text_config": dict(
                hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=12,
                projection_size=24, hidden_act="gelu",
            ),
            "vision_config": dict(
                hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4,
                hidden_act="gelu",
            ),
        },
        dict(size={"height": 16, "width": 16}),
        (24, 20),
        4,
    )


if __name__ == "__main__":
    sys.exit(main())
