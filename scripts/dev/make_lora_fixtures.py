#!/usr/bin/env python3
"""Writes fixtures/lora/: PEFT LoRA adapters on the tiny decoder and LLaVA fixtures, their
logits, and one training step (dev-only, run by hand), for
crates/glimpse-models/tests/lora.rs and crates/glimpse-train/tests/lora_grad_parity.rs.

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_lora_fixtures.py

Versions are pinned in scripts/dev/requirements.txt (peft 0.21.2). Deterministic (fixed seeds,
f32, eager attention on CPU), committed, so CI compares without Python.

The bases are fixtures already committed, named by relative path in each adapter's
base_model_name_or_path (resolved from the adapter's directory):
  fixtures/decoders/llama-gqa-tied (LlamaForCausalLM) and fixtures/llava/clip-llama
  (LlavaForConditionalGeneration).

adapter/          LoraConfig(r=4, lora_alpha=8, lora_dropout=0, target_modules=[q,k,v,o,gate,up,down
                  _proj], init_lora_weights=False: A and B drawn as nn.Linear draws them, so B != 0)
adapter-rslora/   LoraConfig(r=2, lora_alpha=4, use_rslora=True, target_modules a regex string over
                  the attention's q and v: scale alpha/sqrt(r), PEFT's re.fullmatch)
llava-adapter/    LoraConfig(r=4, lora_alpha=8) on the LLaVA model, target_modules a regex that keeps
                  to the language model's q_proj, v_proj and down_proj (tensor names
                  base_model.model.model.language_model.layers.N....)

logits.safetensors (f32):
    adapter        (2, T, V)  PEFT model with adapter/ on reference.json's ids (no padding)
    rslora         (1, T, V)  the same with adapter-rslora/, the first row
    llava          (1, K, V)  the LLaVA fixture's single_image case with llava-adapter/: the logits
                              of the last K positions (K = reference.json llava.last)
grads.safetensors (f32), the PEFT model with adapter/ in train mode:
    loss           ()   model(ids, labels=labels).loss (transformers shifts the labels and averages
                        over the non-ignored tokens)
    grad.<name>         d loss / d factor, every adapter tensor (names as in adapter_model.safetensors)
    updated.<name>      the factor after one torch.optim.AdamW step over the factors only (lr 1e-2,
                        betas (0.9, 0.999), eps 1e-8, weight_decay 0)
reference.json: versions, ids, labels, llava{case, last}, optimizer settings.
"""

import json
import shutil
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "lora"
DECODER = ROOT / "fixtures" / "decoders" / "llama-gqa-tied"
LLAVA = ROOT / "fixtures" / "llava" / "clip-llama"

LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.0
T = 8
LLAVA_LAST = 8

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def f32(t):
    return t.detach().float().contiguous().clone()


def load_decoder():
    model = LlamaForCausalLM.from_pretrained(DECODER, attn_implementation="eager", dtype=torch.float32)
    return model


def save(model, path, base_rel):
    if path.exists():
        shutil.rmtree(path)
    model.save_pretrained(path)
    cfg_path = path / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    # The base as the Rust side finds it: relative to the adapter's directory.
    cfg["base_model_name_or_path"] = base_rel
    # PEFT keeps the list as a set: sorted, the file is the same on every run.
    if isinstance(cfg["target_modules"], list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    # PEFT's model card is not needed by anyone.
    (path / "README.md").unlink(missing_ok=True)


def adapter_names(path):
    with safe_open(path / "adapter_model.safetensors", "pt") as f:
        return sorted(f.keys())


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    ref = json.loads((DECODER / "reference.json").read_text())
    prompts = ref["prompt_ids"]
    ids = torch.tensor([prompts[1][:T], prompts[2][:T]])
    labels = ids.clone()
    labels[:, :3] = -100
    logits = {}

    # --- adapter/: every linear layer, B != 0 -------------------------------------------------
    torch.manual_seed(0)
    model = get_peft_model(
        load_decoder(),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=ALL_LINEAR, init_lora_weights=False),
    )
    save(model, OUT / "adapter", "../../decoders/llama-gqa-tied")
    model.eval()
    with torch.no_grad():
        logits["adapter"] = f32(model(input_ids=ids).logits)

    # One training step of the factors.
    model.train()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    grads = {"loss": f32(out.loss).reshape(())}
    stored = adapter_names(OUT / "adapter")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    by_file = {}
    for n, p in params.items():
        # named_parameters: base_model.model.X.lora_A.default.weight; the file drops ".default".
        file_name = n.replace(".default.", ".")
        assert file_name in stored, file_name
        by_file[file_name] = p
        grads[f"grad.{file_name}"] = f32(p.grad)
    assert sorted(by_file) == stored, "every stored factor is a parameter"
    opt = torch.optim.AdamW(list(params.values()), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    opt.step()
    for n, p in by_file.items():
        grads[f"updated.{n}"] = f32(p)
    save_file(grads, OUT / "grads.safetensors")

    # --- adapter-rslora/: a regex target, rank-stabilised scale -------------------------------
    torch.manual_seed(1)
    model = get_peft_model(
        load_decoder(),
        LoraConfig(
            r=2,
            lora_alpha=4,
            use_rslora=True,
            target_modules=r"model\.layers\.\d+\.self_attn\.(q|v)_proj",
            init_lora_weights=False,
        ),
    )
    save(model, OUT / "adapter-rslora", "../../decoders/llama-gqa-tied")
    model.eval()
    with torch.no_grad():
        logits["rslora"] = f32(model(input_ids=ids[:1]).logits)

    # --- llava-adapter/: PEFT on LlavaForConditionalGeneration -------------------------------
    lref = json.loads((LLAVA / "reference.json").read_text())
    case = lref["cases"][0]
    with safe_open(LLAVA / "reference.safetensors", "pt") as f:
        pixels = f.get_tensor(f"{case['name']}.pixel_values")
    torch.manual_seed(2)
    llava = LlavaForConditionalGeneration.from_pretrained(LLAVA, attn_implementation="eager", dtype=torch.float32)
    model = get_peft_model(
        llava,
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=r"model\.language_model\.layers\.\d+\.(self_attn\.(q|v)_proj|mlp\.down_proj)",
            init_lora_weights=False,
        ),
    )
    save(model, OUT / "llava-adapter", "../../llava/clip-llama")
    names = adapter_names(OUT / "llava-adapter")
    assert all(n.startswith("base_model.model.model.language_model.layers.") for n in names), names
    model.eval()
    with torch.no_grad():
        input_ids = torch.tensor([case["input_ids"]])
        full = model(input_ids=input_ids, pixel_values=pixels).logits
    logits["llava"] = f32(full[:, -LLAVA_LAST:])
    save_file(logits, OUT / "logits.safetensors")

    meta = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "ids": ids.tolist(),
        "labels": labels.tolist(),
        "llava": {"case": case["name"], "last": LLAVA_LAST},
        "lr": LR,
        "betas": list(BETAS),
        "eps": EPS,
        "weight_decay": WEIGHT_DECAY,
    }
    (OUT / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"loss {grads['loss'].item():.6f}; fixtures/lora: {total} bytes")


if __name__ == "__main__":
    main()
