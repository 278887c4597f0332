#!/usr/bin/env python3
"""PyTorch side of the tiled-VLM benchmark: transformers' own processor and
model on the checkpoint this script writes, f32, the same threads as glimpse.
bench/run_vlm_tiled.sh runs it next to bench-vlm-tiled.

    python bench/vlm_tiled_pytorch.py --write DIR --family llava_next|idefics3
    python bench/vlm_tiled_pytorch.py --run DIR --threads 2 --runs 3

Both models are random, with a ViT-B/16-sized tower (768 wide, 12 layers,
patch 16) and a 12-layer 768-wide Llama (FFN 2048); DIR/bench.png is a
672x672 picture both sides read:
  llava_next  CLIP tower at 224; LLaVA-NeXT's five pinpoints scaled to 224
              tiles: the image takes the 448x448 grid, 4 crops + the whole image = 5 tower
              inputs, 196 + 28 * (28 + 1) = 1008 image tokens
  idefics3    Idefics3 (SigLIP-style) tower at 384, longest_edge 768, tiles
              of 384, pixel shuffle 2: 2x2 tiles + the global image = 5 tower
              inputs of 576 patches, 144 tokens each

TTFT is the whole path from the file: open + decode the PNG, the processor,
the model's forward with a KV cache (tower over every tile, projector,
prefill, LM head on the last position), argmax. vision_ms: the tower +
projector alone (get_image_features on the processor's output), timed
separately. --generate also times model.generate(max_new_tokens=1) from the
processor's output, the path most users call.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "dev"))
from make_decoder_fixtures import llama_tokenizer  # noqa: E402
from ttft_pytorch import colour_field, forward_ttft, parse_args, report, seconds  # noqa: E402  (bench/, beside this file)

SEED = 0
# The same text as bench/src/vlm_tiled.rs.
QUESTION = "Describe the picture in detail."


def bench_image(path):
    """672x672: smooth colour fields and a few shapes, deterministic."""
    rgb = colour_field(672, 672)
    rgb[200:420, 150:500] = [220, 40, 40]
    Image.fromarray(rgb.astype(np.uint8)).save(path)


def llama_text(vocab):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=vocab, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                       num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)


def tokenizer(extra):
    raw = llama_tokenizer(300)
    raw.add_special_tokens(extra)
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>")


def write_llava_next(path):
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, LlavaNextProcessor)
    tile, patch = 224, 16
    # LLaVA-NeXT's own five shapes, scaled from 336 to 224
    pinpoints = [[224, 448], [448, 224], [448, 448], [224, 672], [672, 224]]
    tok = tokenizer(["<image>"])
    image_token = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=tile, patch_size=patch, hidden_act="quick_gelu", projection_dim=768)
    cfg = LlavaNextConfig(vision_config=vision, text_config=llama_text(len(tok)), image_token_index=image_token,
                          image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                          vision_feature_select_strategy="default", projector_hidden_act="gelu",
                          tie_word_embeddings=False, image_seq_length=(tile // patch) ** 2)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": tile},
                                                   crop_size={"height": tile, "width": tile},
                                                   image_grid_pinpoints=pinpoints),
        tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        image_token="<image>")
    return model, processor


def write_idefics3(path):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    tile, patch, scale = 384, 16, 2
    rows = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tok = tokenizer(["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"] + rows)
    cfg = Idefics3Config(
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": tile, "patch_size": patch},
        text_config=llama_text(len(tok)).to_dict(), scale_factor=scale,
        image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    model = Idefics3ForConditionalGeneration(cfg).eval()
    seq = (tile // patch) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile}),
        tokenizer=tok, image_seq_len=seq)
    return model, processor


def write(path, family):
    torch.manual_seed(SEED)
    model, processor = {"llava_next": write_llava_next, "idefics3": write_idefics3}[family](path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    bench_image(Path(path) / "bench.png")
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"wrote": path, "family": family, "parameters": n}))


def main():
    a = parse_args(lambda p: p.add_argument("--family", default="llava_next"))
    if a.write:
        write(a.write, a.family)
        return
    processor = AutoProcessor.from_pretrained(a.run)
    model = AutoModelForImageTextToText.from_pretrained(a.run, dtype=torch.float32).eval()
    png = str(Path(a.run) / "bench.png")
    text = f"<image>\n{QUESTION}"

    def inputs():
        return processor(images=[Image.open(png).convert("RGB")], text=text, return_tensors="pt")

    def vision():
        x = inputs()
        kw = {k: v for k, v in x.items() if k not in ("input_ids", "attention_mask")}
        return seconds(lambda: model.model.get_image_features(**kw))

    def generate():
        return seconds(lambda: model.generate(**inputs(), do_sample=False, max_new_tokens=1, pad_token_id=0))

    with torch.inference_mode():
        report({"family": type(model).__name__}, a.runs, a.threads, lambda: forward_ttft(model, inputs), vision,
               generate if a.generate else None)


if __name__ == "__main__":
    main()
