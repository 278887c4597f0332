#!/usr/bin/env python3
"""Writes the tiny Llama 3.2 Vision (Mllama) parity fixture under fixtures/mllama/ (dev-only, run by hand).

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_mllama_fixtures.py

Versions are pinned in scripts/dev/requirements.txt. The output is deterministic (fixed seeds, f32,
eager attention on CPU, the PIL image-processor backend) and committed, so CI compares against it
without Python. Everything is built locally from configs; nothing is downloaded.

fixtures/mllama/images/*.png: generated pictures whose sizes hit the tiling cases (IMAGES below);
the cases also use fixtures/images/test.png and gray.png.

fixtures/mllama/tiny/ is an HF directory as MllamaForConditionalGeneration and MllamaProcessor
save_pretrained (transformers 5.23) write it: `model.vision_model.*`, `model.language_model.*`,
`model.multi_modal_projector.*`, `lm_head.*`; processor_config.json with the image processor
nested under "image_processor". The vision model reads 32 px tiles in 8 px patches (16 patches +
the class token per tile, 4 tiles at most), 3 local layers whose outputs 0 and 2 join the final
state (vision_output_dim 3 x 32), 2 gated global layers; the decoder has 5 layers, 1 and 3 of them
cross-attention. Every gate is set well away from 0 (fresh gates are 0, which would hide the
image). The tokenizer's `<|image|>` is its last id, equal to the text vocab_size: a row of the
embedding table's 8 extra rows, never an LM-head output.

Raw prompts go through MllamaProcessor as given (BOS inserted after leading images, then the
tokenizer's own BOS: two of them); chat prompts are rendered by the template, which writes BOS, and
tokenised without specials (Llama 3.2 Vision's documented call).

reference.safetensors (f32):
    image.<name>.pixel_values    (4, 3, 32, 32) the processor's tiles for one image (padding tiles 0)
    image.<name>.vision_states   (4 * 17, 32) the projected vision output (cross-attention states)
    image.big.pixel_values_max_tiles_1  (1, 3, 32, 32) the processor with max_image_tiles=1
    case.<case>.logits           (1, T, V) every prompt position (chat_test, raw_two, text_only)
    case.<case>.last_logits      (V,)
    case.<case>.cross_attention_mask  (T, N, 4) the processor's mask (image cases only)

reference.json:
    versions, image_token, image_token_id, vocab_size, max_image_tiles, tile, patch,
    images[{name, file, height, width, canvas [h, w], resized [h, w], num_tiles,
        aspect_ratio_id, aspect_ratio_mask, why}]
    cases[{name, images, messages (chat; absent for raw/text-only), prompt, input_ids,
        greedy{max_new_tokens, generated_ids, margins, min_margin}}]
    min_greedy_margin
"""

import json
import sys
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
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.mllama.image_processing_pil_mllama import (
    MllamaImageProcessorPil,
    get_image_size_fit_to_canvas,
    get_optimal_tiled_canvas,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_decoder_fixtures import llama_tokenizer, top2  # noqa: E402
from make_llava_next_fixtures import make_image as make_picture, open_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
OUT = FIXTURES / "mllama"
SEED = 11
IMAGE_TOKEN = "<|image|>"
TILE = 32
PATCH = 8
MAX_TILES = 4
TEXT_VOCAB = 300
MAX_NEW_TOKENS = 8
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# A Llama-3-like layout: BOS written by the template, the image where the user put it.
TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- message['role'].upper() + ': ' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] + ' ' -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}"
    "{{- '<|image|>' -}}"
    "{%- elif item['type'] == 'text' -%}"
    "{{- item['text'] + ' ' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- 'ASSISTANT:' -}}"
    "{%- endif -%}"
)

# name -> (height, width, why)
IMAGES = {
    "small": (20, 14, "smaller than a tile: upscaled to 32 high, 22 wide, padded right"),
    "wide": (30, 100, "a 1x4 canvas (upscaled, padded below)"),
    "tall": (90, 40, "a 3x1 canvas, padded right"),
    "big": (80, 80, "the largest grid (2x2), downscaled, no padding"),
    "strip": (6, 200, "1x4 canvas, height floors to 7 rows of 32"),
}
SHARED = {
    "test": ("images/test.png", "67x97 photo-like: 2x3 is too many tiles, 1x3 or 2x2"),
    "gray": ("images/gray.png", "mode L"),
}


def make_image(name, h, w, seed):
    return make_picture(name, h, w, seed, out=OUT)


def init_weights(model, seed):
    """Random weights of a size that keeps activations O(1); norms around 1; every gate (cross
    attention, global layers, position and tile embeddings) at +-(0.6..1.4) so the image matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("gate", "gate_attn", "gate_ffn", "cross_attn_attn_gate", "cross_attn_mlp_gate"):
                sign = 1.0 if torch.rand(1, generator=g).item() < 0.7 else -1.0
                p.copy_(sign * (0.6 + 0.8 * torch.rand(p.shape, generator=g)))
            elif "norm" in name:
                base = 1.0 if name.endswith(".weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif ".vision_model." in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.35 * torch.randn(p.shape, generator=g))


# cases whose answer's cross-attention is recorded for `--attention-map`
ATTENTION_CASES = ("chat_test", "chat_two", "raw_two")


def answer_cross_attention(model, inputs, gen, eos_id):
    """The greedy answer's attention over the image rows in the cross-attention layers,
    averaged over heads, layers and answer tokens (eos dropped): (N·max_tiles·(patches + 1),).
    One forward over prompt + answer, the processor's cross-attention mask's last row
    repeated for the answer as generate does."""
    answer = [t for t in gen if t != eos_id]
    ids = torch.cat([inputs["input_ids"], torch.tensor([answer])], dim=1)
    cam = inputs["cross_attention_mask"]
    cam = torch.cat([cam, cam[:, -1:].expand(-1, len(answer), -1, -1)], dim=1)
    captured = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: captured.append(out[1].detach()))
        for m in model.modules()
        if type(m).__name__ == "MllamaTextCrossAttention"
    ]
    try:
        with torch.no_grad():
            model(
                input_ids=ids, pixel_values=inputs["pixel_values"], aspect_ratio_ids=inputs["aspect_ratio_ids"],
                aspect_ratio_mask=inputs["aspect_ratio_mask"], cross_attention_mask=cam,
            )
    finally:
        for h in hooks:
            h.remove()
    assert captured, "no cross-attention weights captured"
    # L x (1, H, T, S) -> (L, T, S) over heads -> (T, S) over layers -> the answer's rows
    per_layer = torch.stack([w[0].mean(0) for w in captured])
    return per_layer.mean(0)[-len(answer):].mean(0)


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def main(seed=SEED):
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "images").mkdir(exist_ok=True)
    model_dir = OUT / "tiny"
    model_dir.mkdir(exist_ok=True)
    for stale in model_dir.iterdir():
        stale.unlink()

    files = {}
    for i, (name, (h, w, why)) in enumerate(IMAGES.items()):
        files[name] = (make_image(name, h, w, 200 + i), why)
    for name, (rel, why) in SHARED.items():
        files[name] = (FIXTURES / rel, why)

    raw_tok = llama_tokenizer(TEXT_VOCAB)
    raw_tok.add_special_tokens([IMAGE_TOKEN])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw_tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    image_token_id = fast.convert_tokens_to_ids(IMAGE_TOKEN)
    # <|image|> is the last id, one past the LM head's rows (as in Llama 3.2 Vision)
    text_vocab = image_token_id
    assert text_vocab == len(fast) - 1, (text_vocab, len(fast))

    vision_config = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_global_layers=2, attention_heads=4,
        image_size=TILE, patch_size=PATCH, max_num_tiles=MAX_TILES, intermediate_layers_indices=[0, 2],
        vision_output_dim=32 * 3, hidden_act="gelu", norm_eps=1e-5,
    )
    text_config = dict(
        vocab_size=text_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
        num_attention_heads=4, num_key_value_heads=2, cross_attention_layers=[1, 3],
        max_position_embeddings=256, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    cfg = MllamaConfig(vision_config=vision_config, text_config=text_config, image_token_index=image_token_id)
    cfg._attn_implementation = "eager"
    image_processor = MllamaImageProcessorPil(
        size={"height": TILE, "width": TILE}, max_image_tiles=MAX_TILES, image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=fast, chat_template=TEMPLATE)

    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(cfg).eval()
    init_weights(model, seed)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.generation_config.bos_token_id = fast.bos_token_id
    model.generation_config.do_sample = False
    model.generation_config._from_model_config = False
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)

    processor = AutoProcessor.from_pretrained(model_dir)
    assert type(processor).__name__ == "MllamaProcessor", type(processor)
    assert type(processor.image_processor).__name__ == "MllamaImageProcessorPil", type(processor.image_processor)
    model = MllamaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    tok = processor.tokenizer
    raw = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    tensors, images = {}, []
    for name, (path, why) in files.items():
        img = open_image(path)
        w, h = img.size
        out = processor.image_processor(images=[[img]], return_tensors="pt")
        canvas = [int(x) for x in get_optimal_tiled_canvas(h, w, MAX_TILES, TILE)]
        resized = [int(x) for x in get_image_size_fit_to_canvas(h, w, canvas[0], canvas[1], TILE)]
        n = out["num_tiles"][0][0]
        assert n == (canvas[0] // TILE) * (canvas[1] // TILE)
        pv = out["pixel_values"][0, 0]
        with torch.no_grad():
            states = model.model.vision_model(
                pixel_values=out["pixel_values"], aspect_ratio_ids=out["aspect_ratio_ids"],
                aspect_ratio_mask=out["aspect_ratio_mask"],
            ).last_hidden_state
            states = model.model.multi_modal_projector(states).reshape(-1, 32)
        tensors[f"image.{name}.pixel_values"] = pv
        tensors[f"image.{name}.vision_states"] = states
        images.append({
            "name": name, "file": str(Path(path).relative_to(FIXTURES)), "height": h, "width": w,
            "canvas": canvas, "resized": resized, "num_tiles": int(n),
            "aspect_ratio_id": int(out["aspect_ratio_ids"][0, 0]),
            "aspect_ratio_mask": out["aspect_ratio_mask"][0, 0].tolist(), "why": why,
        })

    # --max-tiles 1 on the 2x2 image: transformers' processor with max_image_tiles=1 gives its one
    # tile (glimpse then pads to the model's 4 tiles and keeps the model's aspect-ratio ids)
    one = processor.image_processor(images=[[open_image(files["big"][0])]], max_image_tiles=1, return_tensors="pt")
    assert one["pixel_values"].shape[2] == 1 and one["num_tiles"][0][0] == 1
    tensors["image.big.pixel_values_max_tiles_1"] = one["pixel_values"][0, 0]

    def chat(q, n=1):
        return [{"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": q}]}]

    cases_spec = [
        ("chat_test", ["test"], chat("What is in the picture?")),
        ("chat_big", ["big"], chat("Describe it.")),
        ("chat_two", ["wide", "tall"], chat("Which is wider?", 2)),
        ("raw_two", ["small", "strip"], "First <|image|> then <|image|> which one?"),
        ("raw_lead", ["gray"], "<|image|>What colour is this?"),
        ("raw_three", ["test", "small", "big"], "<|image|><|image|> and <|image|> compare them."),
        ("text_only", [], "Tell me a story about a cat."),
    ]
    cases, all_margins = [], []
    for case_name, names, conv in cases_spec:
        imgs = [open_image(files[n][0]) for n in names]
        entry = {"name": case_name, "images": names}
        if isinstance(conv, str):
            prompt = conv
            kwargs = {}
        else:
            entry["messages"] = conv
            prompt = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            # the template wrote BOS (Llama 3.2 Vision's documented call)
            kwargs = {"add_special_tokens": False}
        entry["prompt"] = prompt
        if imgs:
            inputs = processor(images=[imgs], text=prompt, return_tensors="pt", **kwargs)
        else:
            inputs = processor(text=prompt, return_tensors="pt", **kwargs)
        ids = inputs["input_ids"][0].tolist()
        entry["input_ids"] = ids
        if imgs:
            cam = inputs["cross_attention_mask"][0]
            assert cam.shape == (len(ids), len(imgs), MAX_TILES), cam.shape
            tensors[f"case.{case_name}.cross_attention_mask"] = cam
            for k, n in enumerate(names):
                assert torch.equal(inputs["pixel_values"][0, k], tensors[f"image.{n}.pixel_values"]), (case_name, n)
        with torch.no_grad():
            logits = model(**inputs).logits
            out = model.generate(
                **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, return_dict_in_generate=True, output_logits=True,
            )
        gen = [int(x) for x in out.sequences[0, len(ids):]]
        margins = [top2(out.logits[s][0])[0] for s in range(len(gen))]
        assert (out.logits[0][0] - logits[0, -1]).abs().max().item() < 1e-4
        if case_name in ATTENTION_CASES:
            tensors[f"case.{case_name}.answer_cross_attention"] = answer_cross_attention(
                model, inputs, gen, fast.eos_token_id
            )
        if case_name in ("chat_test", "raw_two", "text_only"):
            tensors[f"case.{case_name}.logits"] = logits
        tensors[f"case.{case_name}.last_logits"] = logits[0, -1]
        entry["greedy"] = {"max_new_tokens": MAX_NEW_TOKENS, "generated_ids": gen, "margins": margins, "min_margin": min(margins)}
        all_margins += margins
        cases.append(entry)

    ref = {
        "model": "tiny",
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__, "pillow": PIL.__version__,
        },
        "image_token": IMAGE_TOKEN, "image_token_id": image_token_id, "vocab_size": text_vocab,
        "max_image_tiles": MAX_TILES, "tile": TILE, "patch": PATCH,
        "images": images, "cases": cases, "min_greedy_margin": min(all_margins),
    }
    assert raw.encode("ab").ids[0] == fast.bos_token_id
    save_file({k: v.detach().contiguous().float().clone() for k, v in tensors.items()}, str(model_dir / "reference.safetensors"))
    write_json(model_dir / "reference.json", ref)
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(
        f"wrote {OUT.relative_to(ROOT)}: {size / 1024:.0f} KiB, tiles {[(i['name'], i['num_tiles']) for i in images]}, "
        f"prompt lengths {[len(c['input_ids']) for c in cases]}, min margin {ref['min_greedy_margin']:.4f}"
    )


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[2]) if sys.argv[1:2] == ["--seed"] else SEED))
