#!/usr/bin/env python3
"""Writes the tiny LLaVA-NeXT parity fixture under fixtures/llava_next/ (dev-only, run by hand).

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_llava_next_fixtures.py

Versions are pinned in scripts/dev/requirements.txt. The output is deterministic (fixed seeds,
f32, eager attention on CPU, the PIL image-processor backend) and committed, so CI compares
against it without Python. Everything is built locally from configs; nothing is downloaded.

fixtures/llava_next/images/*.png: generated test pictures whose sizes hit the anyres edge cases
(see IMAGES below); the cases also use fixtures/images/test.png and gray.png.

fixtures/llava_next/siglip-qwen2/ and clip-mistral/ (VARIANTS) are the other towers and decoders
LLaVA-NeXT checkpoints come with: a SigLIP tower read whole ("full": no class token, every patch)
with a tied Qwen2 decoder and a bias-free projector, and CLIP with a Mistral decoder (sliding
window). Their reference.json/.safetensors hold the same fields for a subset of the images and the
raw cases (last logits, greedy ids).

fixtures/llava_next/clip-llama/ is an HF directory as LlavaNextForConditionalGeneration and
LlavaNextProcessor.save_pretrained (transformers 5.23, native layout: top-level `image_newline`,
`vision_tower.*`, `language_model.model.*`; processor_config.json with the image processor nested
under "image_processor") write it: a CLIP tower (16 px tiles, patch 4: 4x4 features per tile,
strategy "default" drops CLS) and a Llama decoder (hidden 32), image_grid_pinpoints PINPOINTS.
Plus:

reference.safetensors (f32):
    image.<name>.pixel_values    (1 + tiles, 3, 16, 16) what the processor makes of one image
                                 (base image first, then the crops row by row)
    image.<name>.image_features  (M, 32) model.get_image_features(...).pooler_output: the packed
                                 rows (base, then the unpadded grid with image_newline after
                                 every row)
    case.<case>.logits           (1, T, V) forward pass over the whole prompt (only for the cases
                                 whose reference.json entry says "logits": "all")
    case.<case>.last_logits      (V,) the prompt's last position, every case

reference.json:
    versions, image_token, image_token_id, vocab_size, image_grid_pinpoints, tile (crop) size,
    tower patch size
    images[{name, file (relative to fixtures/), height, width, best_resolution [h, w],
        grid [rows, cols] (crops), tiles (crops, base excluded), image_sizes (the processor's
        [h, w]), tokens (what LlavaNextProcessor expands one <image> to), unpadded [rows, cols]
        (the feature grid after unpad_image), why (the edge case it covers)}]
    cases[{name, images, messages (chat; absent for raw), prompt, input_ids (expanded),
        prompt_ids_unexpanded, image_token_runs [[start, length]], logits ("all" or "last"),
        greedy{max_new_tokens, generated_ids, margins, min_margin}}]
    min_greedy_margin
"""

import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL
import safetensors
import tokenizers
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
)
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_decoder_fixtures import llama_tokenizer, qwen2_tokenizer, top2  # noqa: E402
from make_llava_fixtures import LLAMA_TEMPLATE, QWEN2_TEMPLATE, case_prompt, random_init  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
OUT = FIXTURES / "llava_next"
SEED = 9
IMAGE_TOKEN = "<image>"
TILE = 16  # crop_size, shortest_edge and the tower's image_size
PATCH = 4  # the tower's patch: 4x4 features per tile
# (height, width). [16, 32] and [32, 16] have the same area, so an image that fits both equally
# (a small square) ties on effective and wasted resolution: the first listed wins.
PINPOINTS = [[16, 32], [32, 16], [32, 32], [16, 48], [48, 16]]
MAX_NEW_TOKENS = 8

# name -> (height, width, why). Sizes found by searching 1..300 for the cases named.
IMAGES = {
    "tiny": (10, 10, "upscaled; [16,32] and [32,16] tie on effective and wasted resolution: the first wins"),
    "round": (47, 188, "unpad: 47 * (12 / 188) is 2.9999999999999996 in f64; int(round(x, 7)) = 3 keeps 4 rows, int(x) would keep 2"),
    "round_t": (188, 47, "the same edge on the width branch"),
    "equal": (24, 48, "aspect ratio equal to the grid's (the width branch, nothing unpadded)"),
    "strip": (8, 40, "a 1x3 grid with rows cut on both sides"),
    "square": (40, 40, "the largest grid (2x2), downscaled, no padding"),
    "sliver": (1, 100, "every fit rounds its height to 0: the least wasteful pinpoint, all grid rows unpadded away (base rows only)"),
}
# From fixtures/images: test.png 67x97 (odd padding: 5 rows of content keep 6), gray.png 60x45 (mode L).
SHARED = {"test": ("images/test.png", "odd padding: (8 - 5) // 2 cuts one row each side, 6 rows stay"), "gray": ("images/gray.png", "mode L; columns unpadded")}


def make_image(name, h, w, seed, out=None):
    """A smooth gradient with random blocks and a little noise: detail for the resampler, and
    small as a PNG; written to `out` (a fixture folder, this script's by default)/images. The
    other VLM fixture scripts make their pictures with it too."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 100 * np.sin((x + y) / 5)], -1)
    for _ in range(6):
        y0, x0 = rng.randint(0, h), rng.randint(0, w)
        base[y0 : y0 + rng.randint(2, 12), x0 : x0 + rng.randint(2, 12)] = rng.randint(0, 256, 3)
    base += rng.randint(-3, 4, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    path = (out or OUT) / "images" / f"{name}.png"
    img.save(path, optimize=True)
    return path


def open_image(path):
    img = Image.open(path)
    assert img.mode in ("RGB", "L"), (path, img.mode)
    return img.convert("RGB")


def image_runs(ids, image_token_id):
    runs, i = [], 0
    while i < len(ids):
        if ids[i] == image_token_id:
            j = i
            while j < len(ids) and ids[j] == image_token_id:
                j += 1
            runs.append([i, j - i])
            i = j
        else:
            i += 1
    return runs


def unpadded_grid(h, w, rows, cols):
    """The feature grid left by modeling_llava_next.unpad_image, recomputed here to document the
    case and to check the exact-fraction answer where f64 rounding is the point."""
    if w / h > cols / rows:
        n = int(round(h * (cols / w), 7))
        pad = (rows - n) // 2
        return rows - 2 * pad, cols, Fraction(h * cols, w)
    n = int(round(w * (rows / h), 7))
    pad = (cols - n) // 2
    return rows, cols - 2 * pad, Fraction(w * rows, h)


def fresh_dir(path):
    """`path` as an empty directory (a fixture's files are all rewritten)."""
    path.mkdir(exist_ok=True)
    for stale in path.iterdir():
        stale.unlink()
    return path


def tiny_tokenizer(decoder, specials):
    """(raw, fast): the 300-merge BPE of `decoder`'s family ("qwen2", else Llama) with `specials`
    added, and it as a PreTrainedTokenizerFast with that family's special tokens."""
    if decoder == "qwen2":
        raw = qwen2_tokenizer(300)
        kwargs = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None)
    else:
        raw = llama_tokenizer(300)
        kwargs = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    raw.add_special_tokens(specials)
    return raw, PreTrainedTokenizerFast(tokenizer_object=raw, **kwargs)


def tiny_tower(tower, tile, patch):
    """(vision_config, image mean/std kwargs, num_additional_image_tokens) of a 2-layer 32-wide
    tower: SigLIP (read whole, mean and std 0.5, no class token) or CLIP (quick_gelu, one class
    token, CLIP's mean and std: the processors' default)."""
    if tower == "siglip":
        from transformers import SiglipVisionConfig

        config = SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=tile, patch_size=patch,
        )
        return config, dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]), 0
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=tile, patch_size=patch, hidden_act="quick_gelu", projection_dim=32,
    )
    return config, {}, 1


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def main(seed=SEED):
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "images").mkdir(exist_ok=True)
    model_dir = fresh_dir(OUT / "clip-llama")

    files = {}
    for i, (name, (h, w, why)) in enumerate(IMAGES.items()):
        files[name] = (make_image(name, h, w, 100 + i), why)
    for name, (rel, why) in SHARED.items():
        files[name] = (FIXTURES / rel, why)

    _, fast = tiny_tokenizer("llama", [IMAGE_TOKEN])
    image_token_id = fast.convert_tokens_to_ids(IMAGE_TOKEN)

    vision_config, _, _ = tiny_tower("clip", TILE, PATCH)
    text_config = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
        initializer_range=0.35, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id, tie_word_embeddings=False,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=fast, patch_size=PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAMA_TEMPLATE, image_token=IMAGE_TOKEN,
    )
    cfg = LlavaNextConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
        image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", multimodal_projector_bias=True, tie_word_embeddings=False,
        image_seq_length=(TILE // PATCH) ** 2,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    random_init(model, seed)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.generation_config.bos_token_id = fast.bos_token_id
    model.generation_config.do_sample = False
    model.generation_config._from_model_config = False
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)

    # The references are what a user gets from the directory.
    processor = AutoProcessor.from_pretrained(model_dir)
    assert type(processor).__name__ == "LlavaNextProcessor", type(processor)
    assert type(processor.image_processor).__name__ == "LlavaNextImageProcessorPil", type(processor.image_processor)
    model = LlavaNextForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    tok = processor.tokenizer
    raw = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    # What the processor counts for a tower without a class token read whole (SigLIP, "full"):
    # the same layout, base features g^2 with nothing dropped.
    processor_full = LlavaNextProcessor(
        image_processor=processor.image_processor, tokenizer=tok, patch_size=PATCH,
        vision_feature_select_strategy="full", num_additional_image_tokens=0, image_token=IMAGE_TOKEN,
    )
    tensors = {}
    images = []
    per_image = {}
    for name, (path, why) in files.items():
        img = open_image(path)
        w, h = img.size
        out = processor(images=[img], text=IMAGE_TOKEN, return_tensors="pt")
        pixel_values = out["pixel_values"][0]
        best = list(select_best_resolution((h, w), PINPOINTS))
        grid = [best[0] // TILE, best[1] // TILE]
        assert pixel_values.shape == (1 + grid[0] * grid[1], 3, TILE, TILE), (name, pixel_values.shape)
        assert out["image_sizes"][0].tolist() == [h, w]
        tokens = out["input_ids"][0].tolist().count(image_token_id)
        tokens_full = processor_full(images=[img], text=IMAGE_TOKEN)["input_ids"][0].count(image_token_id)
        g = TILE // PATCH
        rows, cols, exact = unpadded_grid(h, w, grid[0] * g, grid[1] * g)
        assert tokens == rows * cols + rows + g * g, (name, tokens, rows, cols)
        with torch.no_grad():
            feats = model.model.get_image_features(
                pixel_values=out["pixel_values"], image_sizes=out["image_sizes"]
            ).pooler_output[0]
        assert feats.shape == (tokens, 32), (name, feats.shape)
        tensors[f"image.{name}.pixel_values"] = pixel_values
        tensors[f"image.{name}.image_features"] = feats
        per_image[name] = tokens
        images.append({
            "name": name, "file": str(path.relative_to(FIXTURES)), "height": h, "width": w,
            "best_resolution": best, "grid": grid, "tiles": grid[0] * grid[1], "image_sizes": [h, w],
            "tokens": tokens, "tokens_full_no_cls": tokens_full, "unpadded": [rows, cols], "exact_unpad_edge": str(exact), "why": why,
        })

    cases_spec = [
        ("chat_test", ["test"], [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}], "all"),
        ("chat_round", ["round"], [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}], "last"),
        # Two images with different token counts: each placeholder gets its own.
        ("raw_two", ["tiny", "round_t"], "First: <image> second: <image> Which is larger?", "last"),
        ("raw_three", ["equal", "strip", "square"], "<image><image><image> Compare them.", "last"),
        ("raw_sliver", ["sliver"], "A line: <image> What is it?", "last"),
        ("chat_gray", ["gray"], [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}], "last"),
    ]
    cases, all_margins = [], []
    for case_name, names, conv, logits_kind in cases_spec:
        imgs = [open_image(files[n][0]) for n in names]
        entry = {"name": case_name, "images": names}
        prompt = case_prompt(entry, conv, processor)
        entry["prompt"] = prompt
        inputs = processor(images=imgs, text=prompt, return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        unexpanded = tok(prompt)["input_ids"]
        assert raw.encode(prompt).ids == unexpanded, case_name
        runs = image_runs(ids, image_token_id)
        # adjacent placeholders merge into one run: compare the totals then
        assert sum(n for _, n in runs) == sum(per_image[n] for n in names), (case_name, runs)
        # the batch's rows are the single-image pixel values, zero-padded to the most tiles
        for k, n in enumerate(names):
            single = tensors[f"image.{n}.pixel_values"]
            assert torch.equal(inputs["pixel_values"][k, : single.shape[0]], single), (case_name, n)
        entry.update(input_ids=ids, prompt_ids_unexpanded=unexpanded, image_token_runs=runs, logits=logits_kind)
        with torch.no_grad():
            logits = model(**inputs).logits
            out = model.generate(
                **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                return_dict_in_generate=True, output_logits=True,
            )
        gen = [int(x) for x in out.sequences[0, len(ids) :]]
        margins = [top2(out.logits[s][0])[0] for s in range(len(gen))]
        assert image_token_id not in gen, "greedy emitted <image>: pick another seed"
        assert (out.logits[0][0] - logits[0, -1]).abs().max().item() < 1e-4
        if logits_kind == "all":
            tensors[f"case.{case_name}.logits"] = logits
        tensors[f"case.{case_name}.last_logits"] = logits[0, -1]
        entry["greedy"] = {"max_new_tokens": MAX_NEW_TOKENS, "generated_ids": gen, "margins": margins, "min_margin": min(margins)}
        all_margins += margins
        cases.append(entry)

    ref = {
        "model": "clip-llama",
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__, "pillow": PIL.__version__,
        },
        "image_token": IMAGE_TOKEN, "image_token_id": image_token_id, "vocab_size": len(tok),
        "image_grid_pinpoints": PINPOINTS, "tile": TILE, "patch": PATCH,
        "images": images, "cases": cases, "min_greedy_margin": min(all_margins),
    }
    save_file({k: v.detach().contiguous().float().clone() for k, v in tensors.items()}, str(model_dir / "reference.safetensors"))
    write_json(model_dir / "reference.json", ref)
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(
        f"wrote {OUT.relative_to(ROOT)}: {size / 1024:.0f} KiB, vocab {len(tok)}, tokens per image "
        f"{per_image}, prompt lengths {[len(c['input_ids']) for c in cases]}, min margin {ref['min_greedy_margin']:.4f}"
    )
    for name in VARIANTS:
        build_variant(name, files)


# name -> (tower, decoder, strategy, seed): the other shapes of released LLaVA-NeXT checkpoints.
VARIANTS = {
    "siglip-qwen2": ("siglip", "qwen2", "full", 3),
    "clip-mistral": ("clip", "mistral", "default", 4),
}
VARIANT_IMAGES = ["tiny", "round", "test", "square"]
VARIANT_CASES = [
    ("raw_two", ["tiny", "round"], "First: <image> second: <image> Which is larger?"),
    ("raw_square", ["square", "test"], "<image><image> Compare them."),
]


def build_variant(name, files):
    from transformers import MistralConfig, Qwen2Config

    vision, text, strategy, seed = VARIANTS[name]
    model_dir = fresh_dir(OUT / name)
    _, fast = tiny_tokenizer(text, [IMAGE_TOKEN])
    template = QWEN2_TEMPLATE if text == "qwen2" else LLAMA_TEMPLATE
    image_token_id = fast.convert_tokens_to_ids(IMAGE_TOKEN)
    vision_config, mean_std, additional = tiny_tower(vision, TILE, PATCH)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS,
        **mean_std,
    )
    common = dict(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.35, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
    )
    if text == "qwen2":
        text_config = Qwen2Config(max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                  rope_parameters=dict(rope_type="default", rope_theta=1000000.0), **common)
    else:
        # a window shorter than the prompts, so the sliding mask matters
        text_config = MistralConfig(max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                    sliding_window=24, **common)
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=fast, patch_size=PATCH,
        vision_feature_select_strategy=strategy, num_additional_image_tokens=additional,
        chat_template=template, image_token=IMAGE_TOKEN,
    )
    cfg = LlavaNextConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
        image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1 if vision == "siglip" else -2,
        vision_feature_select_strategy=strategy, projector_hidden_act="gelu",
        multimodal_projector_bias=vision != "siglip", tie_word_embeddings=text == "qwen2",
        image_seq_length=(TILE // PATCH) ** 2,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    random_init(model, seed)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.generation_config.do_sample = False
    model.generation_config._from_model_config = False
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = LlavaNextForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()

    tensors, images, per_image = {}, [], {}
    for iname in VARIANT_IMAGES:
        path = files[iname][0]
        img = open_image(path)
        w, h = img.size
        out = processor(images=[img], text=IMAGE_TOKEN, return_tensors="pt")
        tokens = out["input_ids"][0].tolist().count(image_token_id)
        with torch.no_grad():
            feats = model.model.get_image_features(
                pixel_values=out["pixel_values"], image_sizes=out["image_sizes"]
            ).pooler_output[0]
        assert feats.shape[0] == tokens, (name, iname, feats.shape, tokens)
        tensors[f"image.{iname}.pixel_values"] = out["pixel_values"][0]
        tensors[f"image.{iname}.image_features"] = feats
        per_image[iname] = tokens
        images.append({"name": iname, "file": str(path.relative_to(FIXTURES)), "height": h, "width": w,
                       "tokens": tokens})
    cases, margins = [], []
    for case_name, names, prompt in VARIANT_CASES:
        imgs = [open_image(files[n][0]) for n in names]
        inputs = processor(images=imgs, text=prompt, return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        with torch.no_grad():
            logits = model(**inputs).logits
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                 return_dict_in_generate=True, output_logits=True)
        gen = [int(x) for x in out.sequences[0, len(ids):]]
        m = [top2(out.logits[k][0])[0] for k in range(len(gen))]
        assert image_token_id not in gen, f"{name}: greedy emitted <image>: pick another seed"
        tensors[f"case.{case_name}.last_logits"] = logits[0, -1]
        cases.append({"name": case_name, "images": names, "prompt": prompt, "input_ids": ids,
                      "logits": "last", "greedy": {"max_new_tokens": MAX_NEW_TOKENS, "generated_ids": gen,
                                                   "margins": m, "min_margin": min(m)}})
        margins += m
    ref = {
        "model": name, "tower": vision, "decoder": text, "strategy": strategy,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "image_token": IMAGE_TOKEN, "image_token_id": image_token_id, "vocab_size": len(fast),
        "image_grid_pinpoints": PINPOINTS, "tile": TILE, "patch": PATCH,
        "images": images, "cases": cases, "min_greedy_margin": min(margins),
    }
    save_file({k: v.detach().contiguous().float().clone() for k, v in tensors.items()},
              str(model_dir / "reference.safetensors"))
    write_json(model_dir / "reference.json", ref)
    print(f"wrote {model_dir.relative_to(ROOT)}: tokens per image {per_image}, min margin {min(margins):.4f}")


if __name__ == "__main__":
    # --seed N: try another seed (SEED is chosen so that the smallest greedy margin is far above f32 noise)
    sys.exit(main(int(sys.argv[2]) if sys.argv[1:2] == ["--seed"] else SEED))
