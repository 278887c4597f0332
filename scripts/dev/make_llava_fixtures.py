#!/usr/bin/env python3
"""Writes the tiny LLaVA parity fixtures under fixtures/llava/ (dev-only, run by hand).

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_llava_fixtures.py

Versions are pinned in scripts/dev/requirements.txt. The output is deterministic
(fixed seeds, f32, eager attention on CPU, the PIL image-processor backend) and
committed, so CI compares against it without Python. Everything is built
locally from configs; nothing is downloaded.

Each fixtures/llava/<name>/ is an HF directory as
LlavaForConditionalGeneration.save_pretrained and LlavaProcessor.save_pretrained
write it (config.json with vision_config / text_config, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json,
chat_template.jinja, processor_config.json with the image processor nested
under "image_processor"; transformers 5.23 writes no preprocessor_config.json),
then rewritten into one of three released layouts (see rename_weights and
relayout; transformers reads each back to the same weights):
    native             what 5.23 writes for a freshly built model (siglip-qwen2)
    llava-hf           the llava-hf repositories: vision_tower.vision_model.*, and
                       preprocessor_config.json + processor_config.json +
                       chat_template.json (clip-llama)
    transformers-4.52  model.* prefixes as 4.52-4.57 saved them (clip-llama-multilayer)
plus:

reference.safetensors (f32; <case> is single_image, two_images or raw):
    <case>.pixel_values     (N_img, 3, 32, 32)  what the processor makes of the images
    <case>.vision_selected  (N_img, n_tok, C)   the vision hidden state(s) the projector
                            reads: hidden_states[vision_feature_layer] of the vision
                            tower (hidden_states[0] = embeddings, after CLIP's
                            pre_layrnorm; hidden_states[-1] = last encoder layer,
                            *before* post_layernorm), CLS dropped for strategy
                            "default", a list of layers concatenated on the channel
                            axis; C = vision hidden * len(layers)
    <case>.image_features   (N_img, n_tok, text_hidden)  after the projector
                            (model.get_image_features(...).pooler_output, stacked)
    <case>.logits           (1, T, V)  forward pass over the whole prompt with the
                            image features scattered into the <image> positions

reference.json:
    model, layout, versions{torch, transformers, tokenizers, safetensors, pillow}
    image_token, image_token_id, image_seq_length (config), tokens_per_image (what
        the processor expands one <image> to), vocab_size
    config{vision_feature_layer, vision_feature_select_strategy,
        multimodal_projector_bias, projector_hidden_act, tie_word_embeddings}
        (as read back from config.json)
    special{bos_token, bos_token_id, eos_token, eos_token_id, pad_token,
        pad_token_id, generation_eos_token_id}
    cases[{name, images (file names under fixtures/images/), messages (the chat
        conversation; absent for raw), prompt (the text the processor gets: the
        chat template rendered with add_generation_prompt=True, tokenize=False,
        or the raw string), add_special_tokens (true: the processor adds the
        tokenizer's specials, i.e. Llama's <s>), input_ids (<image> expanded),
        prompt_ids_unexpanded (tokenizer(prompt) before expansion),
        image_token_runs ([[start, length]] per image, in order),
        greedy{max_new_tokens, generated_ids, text, stopped_at_eos, margins,
               top2_ids, min_margin}}]
        greedy = model.generate(input_ids, attention_mask, pixel_values,
        max_new_tokens=24, do_sample=False); generated ids only (prompt excluded);
        margins = top1 - top2 of the raw logits at each step
    min_greedy_margin   the minimum over all cases and steps
"""

import json
import re
import sys
from pathlib import Path

import PIL
import safetensors
import tokenizers
import torch
import transformers
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_decoder_fixtures import llama_tokenizer, qwen2_tokenizer, top2  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "llava"
IMAGES = ROOT / "fixtures" / "images"

MAX_NEW_TOKENS = 24
IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 32
PATCH = 8

VISION_STD = 0.2  # like the encoder fixtures
TEXT_STD = 0.35  # like the decoder fixtures (also written as text initializer_range)

# Chosen so that the smallest top-2 margin over every greedy step is far above f32 noise and no
# greedy step emits <image> (see min_greedy_margin in each reference.json).
SEEDS = {"clip-llama": 19, "siglip-qwen2": 2, "clip-llama-multilayer": 5}

# LLaVA-1.5 style: "USER: <image>\n<question> ASSISTANT:". Content may be a string or a list of
# {"type": "image"} / {"type": "text", "text": ...} items, rendered in order. No BOS in the template:
# the processor's tokenizer adds <s>.
LLAMA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}"
    "{{- message['role'].upper() + ': ' -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] + ' ' -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}"
    "{{- '<image>\\n' -}}"
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

# ChatML with the default system message, images as "<image>\n" in place.
QWEN2_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}"
    "{{- '<image>\\n' -}}"
    "{%- elif item['type'] == 'text' -%}"
    "{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

CASES = [
    (
        "single_image",
        ["test.png"],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}],
    ),
    (
        "two_images",
        ["test.png", "gray.png"],
        [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": "This is the first picture."},
                    {"type": "image"},
                    {"type": "text", "text": "How is the second one different?"},
                ],
            }
        ],
    ),
    # What `glimpse ask --raw` sends: no template, <image> written in the text.
    ("raw", ["gray.png"], "A picture: <image> What colour is it?"),
]


def open_image(name: str) -> Image.Image:
    """The decoded file, upright, as RGB (the fixture images used here are RGB and L PNGs, so
    this is lossless and independent of how alpha would be handled)."""
    img = ImageOps.exif_transpose(Image.open(IMAGES / name))
    assert img.mode in ("RGB", "L"), (name, img.mode)
    return img.convert("RGB")


def random_init(model, seed):
    """Vision tower like the encoder fixtures (std 0.2), projector and language model like the
    decoder fixtures (std 0.35); norm weights around 1, biases non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            vision = ".vision_tower." in name
            if "norm" in name:  # also CLIP's pre_layrnorm
                base = 1.0 if name.endswith(".weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_((VISION_STD if vision else 0.5) * torch.randn(p.shape, generator=g))
            else:
                p.copy_((VISION_STD if vision else TEXT_STD) * torch.randn(p.shape, generator=g))


def case_prompt(entry, conv, processor):
    """A case's prompt: `conv` as is when it is a string (raw), else its messages through the
    processor's chat template, recorded in `entry`."""
    if isinstance(conv, str):
        return conv
    entry["messages"] = conv
    return processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)


def greedy_generation_config(model, eos_token_id, pad_token_id, bos_token_id):
    """The generation_config.json a fixture saves: greedy, with the tokenizer's special ids (not
    the model config's defaults)."""
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = eos_token_id, pad_token_id, bos_token_id
    gc.do_sample = False
    gc._from_model_config = False


def greedy(model, inputs, eos_ids, image_token_id):
    out = model.generate(
        **inputs,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
    )
    ids = [int(x) for x in out.sequences[0, inputs["input_ids"].shape[1] :]]
    margins, top_ids = [], []
    for s in range(len(ids)):
        m, t = top2(out.logits[s][0])
        margins.append(m)
        top_ids.append(t)
    assert image_token_id not in ids, "greedy emitted <image>: pick another seed"
    return ids, margins, top_ids, out.logits[0][0]


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


def vision_selected(model, pixel_values):
    """The projector's input, recomputed from the vision tower's full hidden states."""
    cfg = model.config
    hs = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    layers = [cfg.vision_feature_layer] if isinstance(cfg.vision_feature_layer, int) else cfg.vision_feature_layer
    picked = [hs[i] for i in layers]
    if cfg.vision_feature_select_strategy == "default":
        picked = [h[:, 1:] for h in picked]
    return torch.cat(picked, dim=-1)


def rename_weights(key: str, layout: str) -> str:
    """Maps a key as transformers 5.23 saves a freshly built LlavaForConditionalGeneration
    ("native": language_model.model.*, language_model.lm_head.*, vision_tower.* without the
    vision_model. level, multi_modal_projector.*) to another released layout."""
    if layout == "native":
        return key
    if layout == "llava-hf":  # llava-hf/llava-1.5-*-hf as uploaded (transformers 4.3x-4.51)
        return re.sub(r"^vision_tower\.", "vision_tower.vision_model.", key)
    assert layout == "transformers-4.52", layout  # what transformers 4.52-4.57 save_pretrained wrote
    for src, dst in [
        (r"^language_model\.model\.", "model.language_model."),
        (r"^language_model\.lm_head\.", "lm_head."),
        (r"^vision_tower\.", "model.vision_tower.vision_model."),
        (r"^multi_modal_projector\.", "model.multi_modal_projector."),
    ]:
        key, n = re.subn(src, dst, key)
        if n:
            return key
    raise AssertionError(key)


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def relayout(path: Path, layout: str):
    """Rewrites a saved directory into `layout`; the reload in build() checks that transformers
    reads it back to the same weights. "llava-hf" also splits the processor files the way the
    llava-hf repositories have them: preprocessor_config.json (the image processor),
    processor_config.json (without it) and chat_template.json ({"chat_template": ...})."""
    weights = load_file(path / "model.safetensors")
    save_file({rename_weights(k, layout): v for k, v in weights.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    if layout == "llava-hf":
        proc = json.loads((path / "processor_config.json").read_text())
        image = proc.pop("image_processor")
        image["processor_class"] = "LlavaProcessor"
        write_json(path / "processor_config.json", proc)
        write_json(path / "preprocessor_config.json", image)
        template = path / "chat_template.jinja"
        write_json(path / "chat_template.json", {"chat_template": template.read_text()})
        template.unlink()


def build(spec, out_root=OUT, seed=None, verbose=True):
    name = spec["name"]
    seed = SEEDS[name] if seed is None else seed
    path = out_root / name
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.iterdir():
        stale.unlink()

    # Tokenizer: the decoder fixtures' trained BPE plus <image> as an added special token (last id,
    # as in llava-hf checkpoints).
    if spec["text"] == "llama":
        raw_tok = llama_tokenizer(384)
        tok_kwargs = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
        template = LLAMA_TEMPLATE
    else:
        raw_tok = qwen2_tokenizer(384)
        tok_kwargs = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None)
        template = QWEN2_TEMPLATE
    raw_tok.add_special_tokens([IMAGE_TOKEN])
    fast = PreTrainedTokenizerFast(tokenizer_object=raw_tok, **tok_kwargs)
    image_token_id = fast.convert_tokens_to_ids(IMAGE_TOKEN)
    if spec["text"] == "llama":
        generation_eos = fast.eos_token_id
    else:
        generation_eos = [fast.convert_tokens_to_ids("<|im_end|>"), fast.convert_tokens_to_ids("<|endoftext|>")]

    if spec["vision"] == "clip":
        vision_config = CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=PATCH, hidden_act="quick_gelu", projection_dim=32,
        )
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )
        additional = 1  # the CLS token
    else:
        vision_config = SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=PATCH,
        )
        image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        additional = 0
    strategy = spec["strategy"]
    tokens_per_image = (IMAGE_SIZE // PATCH) ** 2 + additional - (1 if strategy == "default" else 0)

    text_common = dict(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=TEXT_STD,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        tie_word_embeddings=spec["tie"],
    )
    if spec["text"] == "llama":
        text_config = LlamaConfig(max_position_embeddings=256, rms_norm_eps=1e-5, **text_common)
    else:
        text_config = Qwen2Config(
            max_position_embeddings=512, rms_norm_eps=1e-6,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0), **text_common,
        )

    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=fast,
        patch_size=PATCH,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=additional,
        chat_template=template,
        image_token=IMAGE_TOKEN,
    )

    cfg = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=tokens_per_image,
        projector_hidden_act="gelu",
        vision_feature_layer=spec["layer"],
        vision_feature_select_strategy=strategy,
        multimodal_projector_bias=spec["bias"],
        tie_word_embeddings=spec["tie"],
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    random_init(model, seed)
    if spec["tie"]:
        model.tie_weights()
    model.generation_config.eos_token_id = generation_eos
    model.generation_config.pad_token_id = fast.pad_token_id
    model.generation_config.bos_token_id = fast.bos_token_id
    model.generation_config.do_sample = False
    model.generation_config._from_model_config = False  # generation_config.json is authoritative
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(path)
    processor.save_pretrained(path)
    relayout(path, spec["layout"])

    # Reload: the references are what a user gets from the directory.
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor).__name__ == "LlavaProcessor", type(processor)
    assert type(processor.image_processor).__name__.endswith("Pil"), type(processor.image_processor)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected), name
    assert processor.chat_template == template
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_id == image_token_id
    if spec["tie"]:
        assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    eos_ids = set(generation_eos if isinstance(generation_eos, list) else [generation_eos])
    raw = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))  # what the Rust side reads

    saved_cfg = json.loads((path / "config.json").read_text())
    ref = {
        "model": name,
        "layout": spec["layout"],
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
            "pillow": PIL.__version__,
        },
        "image_token": IMAGE_TOKEN,
        "image_token_id": image_token_id,
        "image_seq_length": model.config.image_seq_length,
        "tokens_per_image": tokens_per_image,
        "vocab_size": len(tok),
        "config": {
            k: saved_cfg.get(k)
            for k in [
                "vision_feature_layer",
                "vision_feature_select_strategy",
                "multimodal_projector_bias",
                "projector_hidden_act",
                "tie_word_embeddings",
            ]
        },
        "special": {
            "bos_token": tok.bos_token,
            "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token,
            "eos_token_id": tok.eos_token_id,
            "pad_token": tok.pad_token,
            "pad_token_id": tok.pad_token_id,
            "generation_eos_token_id": generation_eos,
        },
    }
    tensors = {}
    cases = []
    all_margins = []
    for case_name, image_names, conv in CASES:
        images = [open_image(n) for n in image_names]
        entry = {"name": case_name, "images": image_names}
        prompt = case_prompt(entry, conv, processor)
        entry["prompt"] = prompt
        entry["add_special_tokens"] = True
        inputs = processor(images=images, text=prompt, return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        unexpanded = tok(prompt)["input_ids"]
        assert raw.encode(prompt).ids == unexpanded, (name, case_name)
        runs = image_runs(ids, image_token_id)
        assert [n for _, n in runs] == [tokens_per_image] * len(images), (name, case_name, runs)
        assert len(ids) == len(unexpanded) + len(images) * (tokens_per_image - 1)
        assert unexpanded.count(image_token_id) == len(images)
        entry["input_ids"] = ids
        entry["prompt_ids_unexpanded"] = unexpanded
        entry["image_token_runs"] = runs

        pixel_values = inputs["pixel_values"]
        assert pixel_values.shape == (len(images), 3, IMAGE_SIZE, IMAGE_SIZE), pixel_values.shape
        with torch.no_grad():
            feats = torch.stack(list(model.get_image_features(pixel_values=pixel_values).pooler_output))
            selected = vision_selected(model, pixel_values)
            assert (model.model.multi_modal_projector(selected) - feats).abs().max().item() < 1e-5
            assert feats.shape == (len(images), tokens_per_image, 64), feats.shape
            logits = model(**inputs).logits
            gen_ids, margins, top_ids, first_step = greedy(model, inputs, eos_ids, image_token_id)
            assert (first_step - logits[0, -1]).abs().max().item() < 1e-4, (name, case_name)
        tensors[f"{case_name}.pixel_values"] = pixel_values
        tensors[f"{case_name}.vision_selected"] = selected
        tensors[f"{case_name}.image_features"] = feats
        tensors[f"{case_name}.logits"] = logits
        entry["greedy"] = {
            "max_new_tokens": MAX_NEW_TOKENS,
            "generated_ids": gen_ids,
            "text": tok.decode(gen_ids),
            "stopped_at_eos": gen_ids[-1] in eos_ids,
            "margins": margins,
            "top2_ids": top_ids,
            "min_margin": min(margins),
        }
        all_margins += margins
        cases.append(entry)
    ref["cases"] = cases
    ref["min_greedy_margin"] = min(all_margins)

    save_file({k: v.detach().contiguous().float().clone() for k, v in tensors.items()}, str(path / "reference.safetensors"))
    (path / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    size = sum(f.stat().st_size for f in path.iterdir())
    if verbose:
        print(
            f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {size / 1024:.0f} KiB, "
            f"vocab {len(tok)}, tokens/image {tokens_per_image}, prompt lengths {[len(c['input_ids']) for c in cases]}, "
            f"min margin {ref['min_greedy_margin']:.4f}, stopped at eos {[c['greedy']['stopped_at_eos'] for c in cases]}"
        )
    return path, ref["min_greedy_margin"], size


FIXTURES = [
    # llava-1.5: CLIP (quick_gelu), penultimate layer, CLS dropped; Llama with GQA, untied. Stored
    # the way the llava-hf repositories are (weights and processor files).
    dict(name="clip-llama", vision="clip", text="llama", layer=-2, strategy="default", bias=True, tie=False,
         layout="llava-hf"),
    # SigLIP (no CLS; its unused MAP head is in the weights), last layer (before post_layernorm), all
    # tokens; Qwen2 with tied embeddings (no lm_head weight), projector without biases. Stored as
    # transformers 5.23 writes it.
    dict(name="siglip-qwen2", vision="siglip", text="qwen2", layer=-1, strategy="full", bias=False, tie=True,
         layout="native"),
    # Two CLIP layers concatenated on the channel axis; "full" keeps CLS (17 tokens per image).
    # Weights named the way transformers 4.52-4.57 saved them.
    dict(name="clip-llama-multilayer", vision="clip", text="llama", layer=[-2, -1], strategy="full", bias=True,
         tie=False, layout="transformers-4.52"),
]


def main():
    for spec in FIXTURES:
        build(spec)


if __name__ == "__main__":
    sys.exit(main())
