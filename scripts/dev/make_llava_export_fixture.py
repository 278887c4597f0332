#!/usr/bin/env python3
"""Writes fixtures/llava_export/ (dev-only, run by hand): a tiny VLM as glimpse exports it to an HF LLaVA
directory, and what transformers + PEFT compute from that directory.

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_llava_export_fixture.py

Versions are pinned in scripts/dev/requirements.txt. CI never runs this; crates/glimpse-train/tests/export_llava.rs
compares against what it committed.

1. fixtures/llava_export/model/ is written by glimpse itself: the ignored test `write_fixture_model` (run here
   through cargo) builds the tiny model as the trainer initialises one (seeded), moves every tensor off its init,
   and calls export_llava_hf with a LoRA adapter beside it (model/adapter/, PEFT's layout).
2. This script loads that directory as a user would, and FAILS unless it loads as is:
   - LlavaForConditionalGeneration.from_pretrained(output_loading_info=True) lists no missing, unexpected or
     mismatched keys and no error, logs no warning about weights, and holds exactly the file's tensors;
   - AutoProcessor.from_pretrained gives a LlavaProcessor with the PIL CLIP image processor, the exported chat
     template and image token;
   - PeftModel.from_pretrained(model, model/adapter) adapts exactly the adapter's layers with the file's weights
     (no layer PEFT would add with fresh weights, none missing);
   - the two documented prompt paths agree: processor(text=apply_chat_template(...), images=...) and
     processor.apply_chat_template(..., tokenize=True, return_dict=True) give the same ids and pixels.
3. It writes
   reference.safetensors:
       input_ids     (1, T) int64   the prompt, <image> expanded to image_seq_length placeholders
       pixel_values  (1, 3, 32, 32) f32  what the processor makes of fixtures/images/<image>
       logits        (1, T, V) f32  the exported model's forward pass
       logits_lora   (1, T, V) f32  the same with the PEFT adapter applied
   reference.json: versions, image, messages, prompt (the rendered template), input_ids,
       merged_vs_adapter (max |logits of PEFT's merge_and_unload - logits_lora|), loading (what was checked)
"""

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import PIL
import peft
import safetensors
import tokenizers
import torch
import transformers
from PIL import Image, ImageOps
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "llava_export"
MODEL = OUT / "model"
ADAPTER = MODEL / "adapter"
IMAGE = "test.png"
QUESTION = "what shape is in the image?"
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]

# Words in a load-time log line that mean weights were not matched.
WEIGHT_WORDS = ("missing", "unexpected", "newly initialized", "not initialized", "not used", "mismatch")


def export():
    """The directory as glimpse writes it."""
    subprocess.run(
        ["cargo", "test", "--release", "-p", "glimpse-train", "--test", "export_llava", "--",
         "--ignored", "--exact", "write_fixture_model"],
        cwd=ROOT,
        check=True,
    )


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def strictly(what, load):
    """Runs load() and fails on any warning about weights (transformers' and peft's loggers, Python warnings)."""
    handler = Captured()
    loggers = [logging.getLogger(n) for n in ("transformers", "peft")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = load()
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    messages = handler.records + [str(w.message) for w in caught]
    for m in messages:
        print(f"  {what}: logged: {m.splitlines()[0][:160]}")
    bad = [m for m in messages if any(w in m.lower() for w in WEIGHT_WORDS)]
    assert not bad, f"{what}: {bad}"
    return result


def runtime_name(key):
    """A key of model.safetensors (llava-hf layout) -> the loaded model's state_dict key (transformers 5)."""
    for src, dst in [
        ("vision_tower.vision_model.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
    ]:
        if key.startswith(src):
            return dst + key[len(src):]
    raise AssertionError(f"unknown tensor name {key}")


def load_model():
    model, info = strictly(
        "model",
        lambda: LlavaForConditionalGeneration.from_pretrained(
            MODEL, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
        ),
    )
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(kind), f"from_pretrained {kind}: {info[kind]}"
    model.eval()
    state = model.state_dict()
    file = load_file(MODEL / "model.safetensors")
    covered = set()
    for key, t in file.items():
        name = runtime_name(key)
        assert name in state, f"{key} -> {name} is not in the loaded model"
        assert torch.equal(state[name], t), f"{name} differs from the file"
        covered.add(name)
    left = set(state) - covered
    if model.config.tie_word_embeddings:
        assert torch.equal(state["lm_head.weight"], state["model.language_model.embed_tokens.weight"])
        left.discard("lm_head.weight")
    assert not left, f"weights not in the file: {sorted(left)}"
    return model, info


def load_adapter(model):
    pm = strictly("adapter", lambda: PeftModel.from_pretrained(model, ADAPTER))
    pm.eval()
    file = load_file(ADAPTER / "adapter_model.safetensors")
    loaded = {
        k.replace(".default.weight", ".weight"): v
        for k, v in pm.state_dict().items()
        if ".lora_" in k
    }
    assert set(loaded) == set(file), (
        f"PEFT adapted {sorted(set(loaded) - set(file))} beyond the file, "
        f"missed {sorted(set(file) - set(loaded))}"
    )
    for k, v in file.items():
        assert torch.equal(loaded[k], v), f"{k} differs from the file"
    return pm


def open_image():
    img = ImageOps.exif_transpose(Image.open(ROOT / "fixtures" / "images" / IMAGE))
    return img.convert("RGB")


def main():
    export()
    model, info = load_model()
    processor = strictly("processor", lambda: AutoProcessor.from_pretrained(MODEL))
    assert type(processor).__name__ == "LlavaProcessor", type(processor)
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil", type(processor.image_processor)
    exported = json.loads((MODEL / "chat_template.json").read_text())["chat_template"]
    assert processor.chat_template == exported
    assert processor.image_token == "<image>"
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id

    # The two prompt paths LLaVA users take.
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    two_step = processor(images=[open_image()], text=prompt, return_tensors="pt")
    with_path = [
        {"role": "user", "content": [{"type": "image", "path": str(ROOT / "fixtures" / "images" / IMAGE)},
                                     {"type": "text", "text": QUESTION}]}
    ]
    one_step = processor.apply_chat_template(
        with_path, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert torch.equal(two_step["input_ids"], one_step["input_ids"]), (two_step["input_ids"], one_step["input_ids"])
    assert torch.equal(two_step["pixel_values"], one_step["pixel_values"])
    ids = two_step["input_ids"]
    assert (ids == model.config.image_token_id).sum().item() == model.config.image_seq_length
    assert (ids == processor.tokenizer.bos_token_id).sum().item() == 1, ids

    with torch.no_grad():
        logits = model(**two_step).logits
        pm = load_adapter(model)
        logits_lora = pm(**two_step).logits
        merged = pm.merge_and_unload()
        merged_logits = merged(**two_step).logits
    merged_vs_adapter = (merged_logits - logits_lora).abs().max().item()
    assert merged_vs_adapter < 1e-4, merged_vs_adapter
    moved = (logits - logits_lora).abs().max().item()
    assert moved > 0.05, f"the adapter moves the logits by only {moved}"

    save_file(
        {
            "input_ids": ids.contiguous(),
            "pixel_values": two_step["pixel_values"].float().contiguous(),
            "logits": logits.float().contiguous(),
            "logits_lora": logits_lora.float().contiguous(),
        },
        str(OUT / "reference.safetensors"),
    )
    ref = {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
            "pillow": PIL.__version__,
        },
        "image": IMAGE,
        "messages": MESSAGES,
        "prompt": prompt,
        "input_ids": ids[0].tolist(),
        "merged_vs_adapter": merged_vs_adapter,
        "adapter_moves_logits_by": moved,
        "loading": {
            "model": {k: sorted(v) if isinstance(v, set) else v for k, v in info.items()},
            "processor": type(processor).__name__,
            "image_processor": type(processor.image_processor).__name__,
            "tokenizer": type(processor.tokenizer).__name__,
            "adapter_layers": sorted({k.rsplit(".lora_", 1)[0] for k in load_file(ADAPTER / "adapter_model.safetensors")}),
        },
    }
    (OUT / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(
        f"wrote {OUT.relative_to(ROOT)}: {size / 1024:.0f} KiB, prompt {ids.shape[1]} tokens, "
        f"adapter moves logits by {moved:.3f}, merged vs adapter {merged_vs_adapter:.1e}"
    )
    assert size < 200 * 1024, f"fixture set is {size} bytes; keep it under 200 KiB"


if __name__ == "__main__":
    sys.exit(main())
