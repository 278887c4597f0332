#!/usr/bin/env python3
"""Writes the tiny Qwen2-VL parity fixture under fixtures/qwen2_vl/ (dev-only, run by hand).

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_qwen2_vl_fixtures.py

Versions are pinned in scripts/dev/requirements.txt. The output is deterministic (fixed seeds,
f32, eager attention on CPU, the PIL image-processor backend) and committed, so CI compares
against it without Python. Everything is built locally from configs; nothing is downloaded.

fixtures/qwen2_vl/images/*.png: generated pictures whose sizes hit smart_resize's branches
(see IMAGES); the cases also use fixtures/images/test.png and gray.png.

fixtures/qwen2_vl/tiny/ is an HF directory as Qwen2VLForConditionalGeneration and
Qwen2VLProcessor.save_pretrained (transformers 5.23) write it: a vision tower (patch 4,
temporal patch 2, merge 2, embed 32, 2 blocks, quick_gelu) and a qwen2 decoder (hidden 32,
2 heads of 16, 1 KV head, mrope_section [2, 3, 3]); the image processor's min_pixels 256 and
max_pixels 2048 (factor 8), a byte-level BPE tokenizer with Qwen2-VL's special tokens and
Qwen2-VL's chat template. Plus:

reference.safetensors (f32):
    image.<name>.pixel_values    (grid_h * grid_w, 3 * 2 * 4 * 4) what the processor makes of
                                 one image (patches block-major over 2x2 merge blocks; each row
                                 (C, T, ph, pw) with the frame repeated)
    image.<name>.image_features  (grid_h * grid_w / 4, 32) model.get_image_features(...)
                                 .pooler_output: the merger's rows
    case.<case>.logits           (1, T, V) forward over the whole prompt ("all" cases)
    case.<case>.last_logits      (V,) the prompt's last position, every case
    case.<case>.step_logits      (steps, V) generate()'s logits at every greedy step (the
                                 decode steps run at position past + rope_deltas)
    video.frames.pixel_values_videos  (2 * h * w, 96) four frames as a video's patch rows
                                 (see the video case in main: model side only)
    video.frames.video_features  (2 * h * w / 4, 32) model.get_video_features(...)

reference.json:
    versions, special token ids, vocab_size, processor settings
    images[{name, file (relative to fixtures/), height, width, resized [h, w], grid_thw,
        tokens (grid_h * grid_w / merge^2), why}]
    cases[{name, images, messages, prompt, input_ids (expanded), mm_token_type_ids,
        position_ids (3, T) and rope_deltas from model.model.get_rope_index, logits ("all" or
        "last"), greedy{max_new_tokens, generated_ids, margins, min_margin}}]
    smart_resize[{height, width, resized or error}]: extra sizes through smart_resize alone
    video_case{name, images, frames (file stems under images/), video_grid_thw, video_tokens,
        messages, prompt, input_ids (both placeholders expanded), mm_token_type_ids, position_ids,
        rope_deltas, greedy}: an image and a four-frame video in one prompt
    video_cases[{name, video (relative to fixtures/), sampling {frames or null}, indices,
        timestamps, images, messages or null, prompt, raw, video_grid_thw, video_tokens, input_ids,
        mm_token_type_ids, position_ids, rope_deltas, greedy}]: videos read from files through
        transformers' own Qwen2VLProcessor and Qwen2VLVideoProcessor (see VIDEO_* below)

fixtures/qwen2_vl/video/frames/frame1.png .. frame6.png and clip.gif: one 6-frame 24x8 video (a
block moving right over a gradient), as a folder of frames and as an animated GIF (100 ms a frame,
at most 192 colours a frame, so GIF's palette holds every frame exactly: checked on reading back).
The frames are already at their smart_resize size under the video processor (factor 8, min_pixels
128, max_pixels 1024, tiny/video_preprocessor_config.json), so no resize happens: torchvision is
not installed here, and its resize is the one step glimpse does differently (Pillow). The video
processor runs with a stand-in for the three torchvision functions it calls on such frames
(normalize as torchvision's normalize_image, grayscale_to_rgb, and resize, which refuses any size
change); everything else is transformers' code. Under the image processor (min_pixels 256) the
same frames would be resized to 16x32, so a reader that took the image processor's settings for
videos gets other grids. The frames are sampled by transformers' default_sample_indices_fn (the
rule glimpse's --frames follows) and handed to the processor as arrays (do_sample_frames false).

reference.safetensors, for each video case:
    video.<case>.pixel_values_videos  (t * h * w, 96) the video processor's patch rows
    case.<case>.last_logits           (V,)
"""

import json
import math
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
    AutoImageProcessor,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize
from transformers.processing_utils import ProcessorMixin

# Qwen2VLProcessor also holds a video processor, whose classes need torchvision (not pinned here:
# these fixtures are images only). Without it ProcessorMixin fails to look up the class of the
# absent (None) video processor; skip that check for None only.
_check = ProcessorMixin.check_argument_for_proper_class
# The video processor below is loaded from its module file (see video_processor_class), which
# the class lookup cannot resolve without torchvision either.
ProcessorMixin.check_argument_for_proper_class = (
    lambda self, name, arg: None if arg is None or name == "video_processor" else _check(self, name, arg)
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_decoder_fixtures import qwen2_tokenizer, top2  # noqa: E402
from make_llava_fixtures import greedy_generation_config  # noqa: E402
from make_llava_next_fixtures import make_image as make_picture, open_image  # noqa: E402
from transformers.video_utils import VideoMetadata, default_sample_indices_fn  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
OUT = FIXTURES / "qwen2_vl"
SEED = 7
PATCH, TEMPORAL, MERGE = 4, 2, 2
FACTOR = PATCH * MERGE
MIN_PIXELS, MAX_PIXELS = 256, 2048
MAX_NEW_TOKENS = 8
SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL-Instruct's chat template (as on the Hub), kept verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# name -> (height, width, why); factor 8, pixels within [256, 2048].
IMAGES = {
    "small": (10, 13, "below min_pixels: scaled up by ceil (16x24)"),
    "wide": (30, 75, "above max_pixels after rounding: scaled down by floor (24x64)"),
    "tall": (45, 20, "20/8 = 2.5 rounds half to even (2), 45/8 rounds up: 48x16"),
    "odd": (37, 29, "both sides round to nearest (40x32), non-square"),
}
SHARED = {"test": ("images/test.png", "67x97 above max_pixels: 32x48"), "gray": ("images/gray.png", "mode L, 60x45: 60/8 = 7.5 rounds half to even (8); above max_pixels then: 48x32")}
# The video read from files: VIDEO_FRAMES frames of VIDEO_H x VIDEO_W, its own pixel budget.
VIDEO_DIR = OUT / "video"
VIDEO_FRAMES, VIDEO_H, VIDEO_W = 6, 8, 24
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 128, 1024
GIF_DURATION_MS = 100
FOLDER_FPS = 25.0  # glimpse's rate for a folder of frames (ffmpeg's image2 default)
# name, source ("folder" / "gif"), frames asked for (None: every frame), image names, question or raw prompt
VIDEO_CASES = [
    ("video_folder", "folder", 4, [], "What moves?"),
    ("image_video_gif", "gif", 3, ["wide"], "Which comes first?"),
    ("raw_video_gif", "gif", None, [], "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Describe it.<|im_end|>\n<|im_start|>assistant\n"),
]
# smart_resize alone: the aspect-ratio error and the clamps to one factor.
EXTRA_SIZES = [(1, 300), (1, 150), (3, 500), (8, 8), (200, 200), (17, 3000), (2, 2)]


def make_image(name, h, w, seed):
    return make_picture(name, h, w, seed, out=OUT)


def make_video_files(seed):
    """The fixture video as frame1.png .. frameN.png and clip.gif; returns the frames (N, H, W, 3)."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:VIDEO_H, 0:VIDEO_W]
    frames = []
    for k in range(VIDEO_FRAMES):
        base = np.stack([10 * x, 30 * y, 200 - 20 * k + 0 * x], -1).astype(np.int64)
        base[2:6, 3 * k : 3 * k + 4] = [250, 40, 40]
        base += rng.randint(-6, 7, base.shape)
        frames.append(np.clip(base, 0, 255).astype(np.uint8))
    frames = np.stack(frames)
    folder = VIDEO_DIR / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()
    for k, f in enumerate(frames):
        Image.fromarray(f, "RGB").save(folder / f"frame{k + 1}.png", optimize=True)
    pics = [Image.fromarray(f, "RGB") for f in frames]
    # optimize=False, disposal 1: each frame stored whole (see make_video_fixtures.py)
    pics[0].save(VIDEO_DIR / "clip.gif", save_all=True, append_images=pics[1:], duration=GIF_DURATION_MS,
                 loop=0, optimize=False, disposal=1)
    with Image.open(VIDEO_DIR / "clip.gif") as gif:
        back = []
        for k in range(gif.n_frames):
            gif.seek(k)
            back.append(np.asarray(gif.convert("RGB")))
    assert len(back) == VIDEO_FRAMES and all(np.array_equal(a, b) for a, b in zip(back, frames)), "GIF is lossy"
    return frames


def video_processor_class():
    """transformers' Qwen2VLVideoProcessor without torchvision: its module imports
    torchvision.transforms.v2.functional, and on frames that need no resize the processor calls
    three functions of it. A stand-in module gives those (normalize as torchvision's
    normalize_image: (x - mean) / std in the tensor's dtype; grayscale_to_rgb; resize, which
    refuses any size change), and the module file is loaded directly (the lazy import refuses
    without torchvision). Installed only here, after every other import."""
    import importlib.util
    import types

    import transformers.image_processing_backends as backends
    import transformers.models.qwen2_vl as pkg
    import transformers.video_processing_utils as video_utils

    def module(name):
        m = types.ModuleType(name)
        sys.modules[name] = m
        return m

    tv, tr, v2, F = (module(n) for n in ["torchvision", "torchvision.transforms", "torchvision.transforms.v2", "torchvision.transforms.v2.functional"])
    tv.transforms, tr.v2, v2.functional = tr, v2, F

    class InterpolationMode:
        NEAREST, LANCZOS, BILINEAR, BICUBIC = "nearest", "lanczos", "bilinear", "bicubic"

    def normalize(image, mean, std, inplace=False):
        mean = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
        std = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
        return (image if inplace else image.clone()).sub_(mean).div_(std)

    def resize(image, size, interpolation=None, antialias=True):
        # torchvision returns the input unchanged at its own size
        assert list(size) == list(image.shape[-2:]), f"torchvision would resize {tuple(image.shape)} to {size}"
        return image

    F.InterpolationMode, F.normalize, F.resize = InterpolationMode, normalize, resize
    F.grayscale_to_rgb = lambda v: v if v.shape[-3] == 3 else v.expand(*v.shape[:-3], 3, *v.shape[-2:])
    backends.tvF = video_utils.tvF = F
    backends.pil_torch_interpolation_mapping = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
    name = "transformers.models.qwen2_vl.video_processing_qwen2_vl"
    spec = importlib.util.spec_from_file_location(name, Path(pkg.__file__).parent / "video_processing_qwen2_vl.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod.Qwen2VLVideoProcessor


def random_init(model, seed):
    """Vision tower std 0.2, decoder std 0.35 (as the other VLM fixtures); norms around 1,
    biases non-zero, so that every parameter shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            vision = ".visual." in name or name.startswith("visual.")
            if "norm" in name or ".ln_q." in name:
                base = 1.0 if name.endswith(".weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_((0.2 if vision else 0.5) * torch.randn(p.shape, generator=g))
            else:
                p.copy_((0.2 if vision else 0.35) * torch.randn(p.shape, generator=g))


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

    raw_tok = qwen2_tokenizer(300)
    raw_tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw_tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    ids = {t: fast.convert_tokens_to_ids(t) for t in SPECIALS + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]}

    cfg = Qwen2VLConfig(
        vision_config={
            "depth": 2, "embed_dim": 32, "hidden_size": 32, "hidden_act": "quick_gelu", "mlp_ratio": 2,
            "num_heads": 4, "in_channels": 3, "patch_size": PATCH, "spatial_merge_size": MERGE,
            "temporal_patch_size": TEMPORAL,
        },
        text_config={
            "vocab_size": len(fast), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512,
            "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": None, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=PATCH, temporal_patch_size=TEMPORAL, merge_size=MERGE,
    )
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=fast, chat_template=CHAT_TEMPLATE)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    random_init(model, seed)
    greedy_generation_config(model, ids["<|im_end|>"], ids["<|endoftext|>"], None)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(model_dir)
    # The processor's parts one by one (ProcessorMixin.save_pretrained needs the video processor):
    # preprocessor_config.json, the tokenizer files and chat_template.jinja, as Hub checkpoints
    # of Qwen2-VL carry them.
    image_processor.save_pretrained(model_dir)
    fast.save_pretrained(model_dir)
    (model_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    # The references are what a user gets from the directory.
    image_processor = AutoImageProcessor.from_pretrained(model_dir)
    assert type(image_processor).__name__ == "Qwen2VLImageProcessorPil", type(image_processor)
    processor = Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(model_dir),
        chat_template=(model_dir / "chat_template.jinja").read_text(),
    )
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    tok = processor.tokenizer
    image_token_id = ids["<|image_pad|>"]

    tensors, images, per_image = {}, [], {}
    for name, (path, why) in files.items():
        img = open_image(path)
        w, h = img.size
        out = processor.image_processor(images=[img], return_tensors="pt")
        thw = out["image_grid_thw"][0].tolist()
        rh, rw = smart_resize(h, w, FACTOR, MIN_PIXELS, MAX_PIXELS)
        assert thw == [1, rh // PATCH, rw // PATCH], (name, thw, rh, rw)
        pv = out["pixel_values"]
        assert pv.shape == (thw[1] * thw[2], 3 * TEMPORAL * PATCH * PATCH), pv.shape
        with torch.no_grad():
            feats = model.model.get_image_features(pixel_values=pv, image_grid_thw=out["image_grid_thw"]).pooler_output[0]
        tokens = thw[1] * thw[2] // MERGE**2
        assert feats.shape == (tokens, 32), feats.shape
        tensors[f"image.{name}.pixel_values"] = pv
        tensors[f"image.{name}.image_features"] = feats
        per_image[name] = tokens
        images.append({
            "name": name, "file": str(path.relative_to(FIXTURES)), "height": h, "width": w,
            "resized": [rh, rw], "grid_thw": thw, "tokens": tokens, "why": why,
        })

    def user(names, text):
        return [{"role": "user", "content": [{"type": "image"} for _ in names] + [{"type": "text", "text": text}]}]

    cases_spec = [
        ("chat_test", ["test"], user(["test"], "What is in the picture?"), "all"),
        ("chat_two", ["small", "wide"], user(["small", "wide"], "Which is larger?"), "last"),
        ("chat_tall", ["tall"], user(["tall"], "Describe it."), "last"),
        ("chat_odd_gray", ["odd", "gray"], [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "First"}, {"type": "image"}, {"type": "text", "text": "then"}, {"type": "image"}, {"type": "text", "text": "compare."}]},
        ], "last"),
    ]
    cases, all_margins = [], []
    for case_name, names, conv, logits_kind in cases_spec:
        imgs = [open_image(files[n][0]) for n in names]
        prompt = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        inputs = processor(images=imgs, text=prompt, return_tensors="pt")
        input_ids = inputs["input_ids"][0].tolist()
        assert input_ids.count(image_token_id) == sum(per_image[n] for n in names), case_name
        # the batch's pixel rows are the single images' rows, one after another
        assert torch.equal(inputs["pixel_values"], torch.cat([tensors[f"image.{n}.pixel_values"] for n in names]))
        with torch.no_grad():
            pos, deltas = model.model.get_rope_index(
                inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
                attention_mask=inputs["attention_mask"],
            )
            logits = model(**inputs).logits
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, return_dict_in_generate=True, output_logits=True)
        gen = [int(x) for x in out.sequences[0, len(input_ids):]]
        margins = [top2(out.logits[s][0])[0] for s in range(len(gen))]
        assert image_token_id not in gen, "greedy emitted <|image_pad|>: pick another seed"
        assert (out.logits[0][0] - logits[0, -1]).abs().max().item() < 1e-4
        if logits_kind == "all":
            tensors[f"case.{case_name}.logits"] = logits
        tensors[f"case.{case_name}.last_logits"] = logits[0, -1]
        tensors[f"case.{case_name}.step_logits"] = torch.stack([out.logits[s][0] for s in range(len(gen))])
        cases.append({
            "name": case_name, "images": names, "messages": conv, "prompt": prompt, "input_ids": input_ids,
            "mm_token_type_ids": inputs["mm_token_type_ids"][0].tolist(),
            "position_ids": pos[:, 0].tolist(), "rope_deltas": int(deltas[0, 0]), "logits": logits_kind,
            "greedy": {"max_new_tokens": MAX_NEW_TOKENS, "generated_ids": gen, "margins": margins, "min_margin": min(margins)},
        })
        all_margins += margins

    # A video as frames, model side only: transformers' Qwen2VLVideoProcessor needs torchvision
    # (not pinned here), so the rows are built from four frames that the image processor resized
    # alike (each image row is (C, T, p, p) with its frame twice; a video row takes T slot k from
    # frame 2j + k), laid out as the video processor does: (t, block rows, block cols, m, m).
    # The prompt's <|video_pad|> is expanded by hand to t * h * w / merge^2 and typed 2 in
    # mm_token_type_ids, as Qwen2VLProcessor does for videos.
    frame_names = ["small", "small_b", "small_c", "small_d"]
    frame_rows = []
    for k, fname in enumerate(frame_names):
        path = files["small"][0] if k == 0 else make_image(fname, 10, 13, 300 + k)
        out = processor.image_processor(images=[open_image(path)], return_tensors="pt")
        assert out["image_grid_thw"][0].tolist() == images[0]["grid_thw"]
        frame_rows.append(out["pixel_values"].reshape(-1, 3, TEMPORAL, PATCH, PATCH))
    video_rows = torch.cat(
        [torch.stack([frame_rows[2 * j][:, :, 0], frame_rows[2 * j + 1][:, :, 1]], dim=2) for j in range(2)]
    ).reshape(-1, 3 * TEMPORAL * PATCH * PATCH)
    _, gh, gw = images[0]["grid_thw"]
    video_grid = [2, gh, gw]
    video_tokens = 2 * gh * gw // MERGE**2
    tensors["video.frames.pixel_values_videos"] = video_rows
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    prompt = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    # (the processor refuses a <|video_pad|> without a video: both placeholders are expanded here,
    # the image's by its grid as the processor does in the image-only cases)
    img_inputs = processor.image_processor(images=[open_image(files["wide"][0])], return_tensors="pt")
    image_tokens = int(img_inputs["image_grid_thw"][0].prod()) // MERGE**2
    video_token_id = ids["<|video_pad|>"]
    seq = []
    for t in tok(prompt)["input_ids"]:
        seq += [video_token_id] * video_tokens if t == video_token_id else [image_token_id] * image_tokens if t == image_token_id else [t]
    input_ids = torch.tensor([seq])
    mm = torch.tensor([[1 if t == image_token_id else 2 if t == video_token_id else 0 for t in seq]])
    v_inputs = {
        "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "mm_token_type_ids": mm,
        "pixel_values": img_inputs["pixel_values"], "image_grid_thw": img_inputs["image_grid_thw"],
        "pixel_values_videos": video_rows, "video_grid_thw": torch.tensor([video_grid]),
    }
    with torch.no_grad():
        vfeats = model.model.get_video_features(pixel_values_videos=video_rows, video_grid_thw=torch.tensor([video_grid])).pooler_output[0]
        pos, deltas = model.model.get_rope_index(
            input_ids, mm, image_grid_thw=v_inputs["image_grid_thw"], video_grid_thw=v_inputs["video_grid_thw"],
            attention_mask=v_inputs["attention_mask"],
        )
        logits = model(**v_inputs).logits
        out = model.generate(**v_inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, return_dict_in_generate=True, output_logits=True)
    gen = [int(x) for x in out.sequences[0, len(seq):]]
    margins = [top2(out.logits[s][0])[0] for s in range(len(gen))]
    assert image_token_id not in gen and video_token_id not in gen
    tensors["video.frames.video_features"] = vfeats
    tensors["case.image_video.last_logits"] = logits[0, -1]
    tensors["case.image_video.step_logits"] = torch.stack([out.logits[s][0] for s in range(len(gen))])
    video_case = {
        "name": "image_video", "images": ["wide"], "frames": frame_names, "video_grid_thw": video_grid,
        "video_tokens": video_tokens, "messages": conv, "prompt": prompt, "input_ids": seq,
        "mm_token_type_ids": mm[0].tolist(), "position_ids": pos[:, 0].tolist(), "rope_deltas": int(deltas[0, 0]),
        "greedy": {"max_new_tokens": MAX_NEW_TOKENS, "generated_ids": gen, "margins": margins, "min_margin": min(margins)},
    }
    all_margins += margins

    # Videos from files, through transformers' processor (image, video and text together).
    video_frames = make_video_files(seed + 500)
    VideoProcessor = video_processor_class()
    VideoProcessor(
        min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS, patch_size=PATCH, temporal_patch_size=TEMPORAL,
        merge_size=MERGE, cap_pixels_per_frame=False,
    ).save_pretrained(model_dir)
    video_processor = VideoProcessor.from_pretrained(model_dir)
    assert video_processor.size.shortest_edge == VIDEO_MIN_PIXELS, video_processor.size
    vprocessor = Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
        chat_template=(model_dir / "chat_template.jinja").read_text(),
    )
    sources = {
        "folder": (str((VIDEO_DIR / "frames").relative_to(FIXTURES)), FOLDER_FPS, [k / FOLDER_FPS for k in range(VIDEO_FRAMES)]),
        "gif": (str((VIDEO_DIR / "clip.gif").relative_to(FIXTURES)), 1000 / GIF_DURATION_MS, [k * GIF_DURATION_MS / 1000 for k in range(VIDEO_FRAMES)]),
    }
    video_cases = []
    for case_name, source, n, names, text in VIDEO_CASES:
        rel, fps, times = sources[source]
        meta = VideoMetadata(total_num_frames=VIDEO_FRAMES, fps=fps)
        indices = [int(i) for i in default_sample_indices_fn(meta, num_frames=n)] if n else list(range(VIDEO_FRAMES))
        raw = text.startswith("<|im_start|>")
        conv = None if raw else [{"role": "user", "content": [{"type": "image"} for _ in names] + [{"type": "video"}, {"type": "text", "text": text}]}]
        prompt = text if raw else vprocessor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        imgs = [open_image(files[nm][0]) for nm in names]
        inputs = vprocessor(
            text=prompt, images=imgs or None, videos=[video_frames[indices]], return_tensors="pt",
            videos_kwargs={"cap_pixels_per_frame": False},
        )
        grid = inputs["video_grid_thw"][0].tolist()
        assert grid == [math.ceil(len(indices) / TEMPORAL), VIDEO_H // PATCH, VIDEO_W // PATCH], grid
        seq = inputs["input_ids"][0].tolist()
        video_tokens = seq.count(ids["<|video_pad|>"])
        assert video_tokens == math.prod(grid) // MERGE**2
        with torch.no_grad():
            pos, deltas = model.model.get_rope_index(
                inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"),
                video_grid_thw=inputs["video_grid_thw"], attention_mask=inputs["attention_mask"],
            )
            logits = model(**inputs).logits
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, return_dict_in_generate=True, output_logits=True)
        gen = [int(x) for x in out.sequences[0, len(seq):]]
        margins = [top2(out.logits[s][0])[0] for s in range(len(gen))]
        assert image_token_id not in gen and ids["<|video_pad|>"] not in gen
        tensors[f"video.{case_name}.pixel_values_videos"] = inputs["pixel_values_videos"]
        tensors[f"case.{case_name}.last_logits"] = logits[0, -1]
        video_cases.append({
            "name": case_name, "video": rel, "sampling": {"frames": n}, "total_frames": VIDEO_FRAMES,
            "indices": indices, "timestamps": [times[i] for i in indices], "images": names,
            "messages": conv, "prompt": prompt, "raw": raw, "video_grid_thw": grid, "video_tokens": video_tokens,
            "input_ids": seq, "mm_token_type_ids": inputs["mm_token_type_ids"][0].tolist(),
            "position_ids": pos[:, 0].tolist(), "rope_deltas": int(deltas[0, 0]),
            "greedy": {"max_new_tokens": MAX_NEW_TOKENS, "generated_ids": gen, "margins": margins, "min_margin": min(margins)},
        })
        # (min_greedy_margin stays the earlier cases'; each video case keeps its own min_margin)

    extra = []
    for h, w in EXTRA_SIZES:
        try:
            extra.append({"height": h, "width": w, "resized": list(smart_resize(h, w, FACTOR, MIN_PIXELS, MAX_PIXELS))})
        except ValueError as e:
            extra.append({"height": h, "width": w, "error": str(e)})

    ref = {
        "model": "tiny",
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__, "pillow": PIL.__version__,
        },
        "special_ids": ids, "image_token_id": image_token_id, "vocab_size": len(tok),
        "patch_size": PATCH, "temporal_patch_size": TEMPORAL, "merge_size": MERGE,
        "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS,
        "images": images, "cases": cases, "video_case": video_case, "video_token_id": ids["<|video_pad|>"],
        "video_min_pixels": VIDEO_MIN_PIXELS, "video_max_pixels": VIDEO_MAX_PIXELS, "video_cases": video_cases,
        "smart_resize": extra, "min_greedy_margin": min(all_margins),
    }
    save_file({k: v.detach().contiguous().float().clone() for k, v in tensors.items()}, str(model_dir / "reference.safetensors"))
    write_json(model_dir / "reference.json", ref)
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(
        f"wrote {OUT.relative_to(ROOT)}: {size / 1024:.0f} KiB, vocab {len(tok)}, tokens per image {per_image}, "
        f"prompt lengths {[len(c['input_ids']) for c in cases]}, min margin {ref['min_greedy_margin']:.4f}"
    )


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[2]) if sys.argv[1:2] == ["--seed"] else SEED))
