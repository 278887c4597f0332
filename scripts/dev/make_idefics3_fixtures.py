#!/usr/bin/env python3
"""Writes the tiny Idefics3 and SmolVLM parity fixtures under fixtures/idefics3/ (dev-only, run by hand).

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_idefics3_fixtures.py

Versions are pinned in scripts/dev/requirements.txt. The output is deterministic (fixed seeds, f32,
eager attention on CPU, the PIL image-processor backend) and committed, so CI compares against it
without Python. Everything is built locally from configs; nothing is downloaded.

fixtures/idefics3/images/*.png: generated pictures whose sizes hit the splitting cases (see IMAGES);
the cases also use fixtures/images/test.png (67x97) and gray.png (mode L).

Two HF directories, each as <Model>ForConditionalGeneration.save_pretrained and
<Model>Processor.save_pretrained (transformers 5.23) write it:

    idefics3/  Idefics3ForConditionalGeneration: 16 px tiles (max_image_size), a 16 px tower with
               4 px patches (4x4 patches per tile), scale_factor 2 (2x2 rows per tile,
               image_seq_len 4), size.longest_edge 48 (grids up to 3x3)
    smolvlm/   SmolVLMForConditionalGeneration: 16 px tiles, 2 px patches (8x8 per tile),
               scale_factor 4 (image_seq_len 4), size.longest_edge 32 (grids up to 2x2)

SmolVLMProcessor also holds a video processor, which needs torchvision (not in the dev venv): the
processor is built without its class check and the video processor is dropped from what is saved
(glimpse reads images only). Its references are computed by that SmolVLMProcessor; the image
processor is reloaded from the saved processor_config.json to check it round-trips.

Both share one tiny Llama-style tokenizer with the processors' special tokens (<image>,
<fake_token_around_image>, <global-img>, <end_of_utterance>, <row_i_col_j> for i, j in 1..6) and
the models' chat templates (their BOS spelled as this tokenizer's <s>).

In each directory, reference.safetensors (f32):
    image.<name>.<variant>.pixel_values   (tiles + 1, 3, 16, 16) the processor's pixel values of one
                                          image: the crops row by row, then the global image (or
                                          the global image alone)
    image.<name>.<variant>.image_features (rows, text hidden) model.get_image_features: tower,
                                          pixel shuffle, modality projection, flattened
    case.<case>.logits                    (1, T, V) every position (cases with "logits": "all")
    case.<case>.last_logits               (V,) the prompt's last position, every case
<variant> is "split" (the saved processor), "nosplit" (do_image_splitting=False) or "le16"
(size {"longest_edge": 16}: the image fits one tile, so it is not split).

reference.json:
    versions, tokens (the special tokens' ids), image_seq_len, tile, patch, scale_factor,
    longest_edge,
    images[{name, file, height, width, variant, rows, cols, tiles (rows * cols: crops besides the
        global image), pixel_attention_mask_sum (every tile's mask is all ones), tokens (what the
        processor expands one <image> to), why}]
    cases[{name, images, variant, messages (chat; absent for raw), prompt, input_ids (expanded),
        prompt_ids_unexpanded, logits ("all" or "last"), greedy{max_new_tokens, generated_ids,
        margins, min_margin}}]
"""

import json
import sys
import types
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
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    LlamaConfig,
    PreTrainedTokenizerFast,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMProcessor,
)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
from transformers.processing_utils import ProcessorMixin

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_decoder_fixtures import llama_tokenizer, top2  # noqa: E402
from make_llava_fixtures import greedy_generation_config  # noqa: E402
from make_llava_next_fixtures import make_image as make_picture, open_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
OUT = FIXTURES / "idefics3"
SEED = 11
TILE = 16
MAX_NEW_TOKENS = 8
SPECIALS = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]
# The released templates, their BOS (<|begin_of_text|>, <|im_start|>) written as this tokenizer's.
IDEFICS3_TEMPLATE = (
    "<s>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == 'image' %}"
    "{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SMOLVLM_TEMPLATE = (
    "<s>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == 'image' %}"
    "{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}"
    "{{ '<video>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}"
    "{{ 'Assistant:' }}{% endif %}"
)

# name -> (height, width, why)
IMAGES = {
    "wide": (40, 100, "wide: longest edge to the width, the height rounded up to even, then to whole tiles"),
    "tall": (100, 30, "tall: the height branch"),
    "small": (10, 12, "smaller than a 16 px tile: upscaled"),
    "large": (120, 130, "large enough for the biggest grid"),
}
SHARED = {"test": ("images/test.png", "67x97 photo-like"), "gray": ("images/gray.png", "mode L")}

MODELS = {
    "idefics3": dict(patch=4, scale=2, longest=48, cls=(Idefics3Config, Idefics3ForConditionalGeneration,
                     Idefics3Processor, Idefics3ImageProcessorPil), vision_type="idefics3_vision",
                     template=IDEFICS3_TEMPLATE),
    "smolvlm": dict(patch=2, scale=4, longest=32, cls=(SmolVLMConfig, SmolVLMForConditionalGeneration,
                    SmolVLMProcessor, SmolVLMImageProcessorPil), vision_type="smolvlm_vision",
                    template=SMOLVLM_TEMPLATE),
}
VARIANTS = {"split": {}, "nosplit": {"do_image_splitting": False}, "le16": {"size": {"longest_edge": TILE}}}


def make_image(name, h, w, seed):
    return make_picture(name, h, w, seed, out=OUT)


def random_init(model, seed):
    """Tower std 0.2, connector and language model std 0.35; norms around 1, biases non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            vision = ".vision_model." in name
            std = 0.2 if vision else 0.35
            if "norm" in name:
                base = 1.0 if name.endswith(".weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_((std if vision else 0.5) * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def save_without_video(processor, model_dir):
    """processor_config.json as SmolVLMProcessor.save_pretrained writes it, minus the video processor."""
    attrs = processor.__class__.get_attributes()
    processor.__class__.get_attributes = classmethod(lambda cls: [a for a in attrs if a != "video_processor"])
    try:
        processor.save_pretrained(model_dir)
    finally:
        del processor.__class__.get_attributes
    path = model_dir / "processor_config.json"
    saved = json.loads(path.read_text())
    saved.pop("video_processor", None)
    write_json(path, saved)


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def build(kind, spec, fast, files, seed):
    model_dir = OUT / kind
    model_dir.mkdir(exist_ok=True)
    for stale in model_dir.iterdir():
        stale.unlink()
    config_cls, model_cls, processor_cls, image_processor_cls = spec["cls"]
    patch, scale = spec["patch"], spec["scale"]
    seq_len = (TILE // patch) ** 2 // scale**2
    vision_config = dict(
        model_type=spec["vision_type"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, image_size=TILE, patch_size=patch,
    )
    text_config = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    ).to_dict()
    image_token_id = fast.convert_tokens_to_ids("<image>")
    cfg = config_cls(
        vision_config=vision_config, text_config=text_config, scale_factor=scale, image_token_id=image_token_id,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    random_init(model, seed)
    greedy_generation_config(model, fast.eos_token_id, fast.pad_token_id, fast.bos_token_id)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(model_dir)
    image_processor = image_processor_cls(
        size={"longest_edge": spec["longest"]}, max_image_size={"longest_edge": TILE}
    )
    if kind == "smolvlm":
        # See the module docstring: no torchvision, so no video processor class check.
        check = ProcessorMixin.check_argument_for_proper_class
        ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: None
        processor = processor_cls(
            image_processor=image_processor, tokenizer=fast, video_processor=None, image_seq_len=seq_len,
            chat_template=spec["template"],
        )
        ProcessorMixin.check_argument_for_proper_class = check
        processor.video_processor = None
        save_without_video(processor, model_dir)
        reloaded = image_processor_cls.from_pretrained(model_dir)
        assert reloaded.to_dict() == image_processor.to_dict()
        # apply_chat_template reads the video processor's frame defaults (no videos here)
        processor.video_processor = types.SimpleNamespace(num_frames=None, fps=None)
    else:
        processor = processor_cls(
            image_processor=image_processor, tokenizer=fast, image_seq_len=seq_len, chat_template=spec["template"]
        )
        processor.save_pretrained(model_dir)
        processor = AutoProcessor.from_pretrained(model_dir)
        assert type(processor).__name__ == processor_cls.__name__, type(processor)
        assert type(processor.image_processor).__name__ == image_processor_cls.__name__, type(processor.image_processor)
    model = model_cls.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    tok = processor.tokenizer
    raw = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    tensors, images = {}, []
    for name, (path, why) in files.items():
        img = open_image(path)
        w, h = img.size
        for variant, kwargs in VARIANTS.items():
            out = processor.image_processor(images=[img], return_row_col_info=True, return_tensors="pt", **kwargs)
            pv = out["pixel_values"][0]
            rows, cols = out["rows"][0][0], out["cols"][0][0]
            assert pv.shape == (rows * cols + 1, 3, TILE, TILE), (name, variant, pv.shape, rows, cols)
            mask = out["pixel_attention_mask"][0]
            assert bool(mask.all()), (name, variant)
            text = processor(images=[img], text="<image>", **kwargs)["input_ids"][0]
            tokens = text.count(image_token_id)
            assert tokens == (rows * cols + 1) * seq_len
            with torch.no_grad():
                feats = model.model.get_image_features(
                    pixel_values=out["pixel_values"], pixel_attention_mask=out["pixel_attention_mask"]
                ).pooler_output
            feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats], 0)
            assert feats.shape[0] == tokens
            tensors[f"image.{name}.{variant}.pixel_values"] = pv
            tensors[f"image.{name}.{variant}.image_features"] = feats
            images.append({
                "name": name, "file": str(Path(path).relative_to(FIXTURES)), "height": h, "width": w,
                "variant": variant, "rows": rows, "cols": cols, "tiles": rows * cols,
                "pixel_attention_mask_sum": int(mask.sum()), "tokens": tokens, "why": why,
            })

    chat = lambda text: [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    cases_spec = [
        ("chat_wide", ["wide"], "split", chat("What is in the picture?"), "all"),
        ("raw_two", ["tall", "large"], "split", "First <image> then <image> Which is larger?", "last"),
        ("chat_test", ["test"], "split", chat("Describe it."), "last"),
        ("chat_nosplit", ["wide"], "nosplit", chat("What is in the picture?"), "last"),
        ("raw_le16", ["small", "gray"], "le16", "<image><image> Compare them.", "last"),
    ]
    cases, margins_all = [], []
    for case_name, names, variant, conv, logits_kind in cases_spec:
        imgs = [open_image(files[n][0]) for n in names]
        entry = {"name": case_name, "images": names, "variant": variant}
        if isinstance(conv, str):
            prompt = conv
            kwargs = {}
        else:
            entry["messages"] = conv
            prompt = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            # as the processor's apply_chat_template(tokenize=True): the template wrote the BOS
            assert prompt.startswith(tok.bos_token)
            kwargs = {"add_special_tokens": False}
        entry["prompt"] = prompt
        inputs = processor(images=imgs, text=prompt, return_tensors="pt", **kwargs, **VARIANTS[variant])
        ids = inputs["input_ids"][0].tolist()
        unexpanded = tok(prompt, **kwargs)["input_ids"]
        assert raw.encode(prompt, add_special_tokens=not kwargs).ids == unexpanded, case_name
        entry.update(input_ids=ids, prompt_ids_unexpanded=unexpanded, logits=logits_kind)
        with torch.no_grad():
            logits = model(**inputs).logits
            out = model.generate(
                **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, return_dict_in_generate=True,
                output_logits=True,
            )
        gen = [int(x) for x in out.sequences[0, len(ids):]]
        margins = [top2(out.logits[s][0])[0] for s in range(len(gen))]
        assert image_token_id not in gen, "greedy emitted <image>: pick another seed"
        assert (out.logits[0][0] - logits[0, -1]).abs().max().item() < 1e-4
        if logits_kind == "all":
            tensors[f"case.{case_name}.logits"] = logits
        tensors[f"case.{case_name}.last_logits"] = logits[0, -1]
        entry["greedy"] = {"max_new_tokens": MAX_NEW_TOKENS, "generated_ids": gen, "margins": margins,
                           "min_margin": min(margins)}
        margins_all += margins
        cases.append(entry)

    ref = {
        "model": kind,
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__, "pillow": PIL.__version__,
        },
        "tokens": {t: tok.convert_tokens_to_ids(t) for t in SPECIALS[:4]},
        "image_token_id": image_token_id, "vocab_size": len(tok), "image_seq_len": seq_len, "tile": TILE,
        "patch": patch, "scale_factor": scale, "longest_edge": spec["longest"],
        "images": images, "cases": cases, "min_greedy_margin": min(margins_all),
    }
    save_file({k: v.detach().contiguous().float().clone() for k, v in tensors.items()},
              str(model_dir / "reference.safetensors"))
    write_json(model_dir / "reference.json", ref)
    return ref


def main(seed=SEED):
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "images").mkdir(exist_ok=True)
    files = {}
    for i, (name, (h, w, why)) in enumerate(IMAGES.items()):
        files[name] = (make_image(name, h, w, 200 + i), why)
    for name, (rel, why) in SHARED.items():
        files[name] = (FIXTURES / rel, why)

    raw_tok = llama_tokenizer(300)
    raw_tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw_tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    for i, (kind, spec) in enumerate(MODELS.items()):
        ref = build(kind, spec, fast, files, seed + i)
        print(
            f"{kind}: vocab {ref['vocab_size']}, grids "
            f"{sorted({(im['name'], im['variant'], im['rows'], im['cols']) for im in ref['images']})}, "
            f"prompt lengths {[len(c['input_ids']) for c in ref['cases']]}, min margin {ref['min_greedy_margin']:.4f}"
        )
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT.relative_to(ROOT)}: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    # --seed N: try another seed (SEED is chosen so that the smallest greedy margin is far above f32 noise)
    sys.exit(main(int(sys.argv[2]) if sys.argv[1:2] == ["--seed"] else SEED))
