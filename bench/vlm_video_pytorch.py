#!/usr/bin/env python3
"""PyTorch side of the Qwen2-VL video benchmark (issue 20): transformers' own
processor (image and video processors) and Qwen2VLForConditionalGeneration on
the checkpoint this script writes, f32, the same threads as glimpse.
bench/run_vlm_video.sh runs it next to bench-vlm-video.

    python bench/vlm_video_pytorch.py --write DIR
    python bench/vlm_video_pytorch.py --run DIR --threads 2 --runs 3 [--generate]

The model is random and Qwen2-VL-shaped: its tower (Conv3d patches 14 x 14 x 2,
2-D rope, 12 blocks 768 wide, 2x2 merger) and a 12-layer 768-wide qwen2 decoder
(12 heads, 2 KV heads, FFN 2048, M-RoPE sections [8, 12, 12]). Two inputs:
  video  DIR/frames/frame1.png .. frame8.png, 8 frames of 224x224: 4 temporal
         patches x 16 x 16 patches = 1024 tower rows, 256 video tokens
  image  DIR/bench.png, 448x448: 32 x 32 patches = 1024 tower rows, 256 tokens
Both sizes are their own smart_resize size (min_pixels 3136), so neither side
resizes.

TTFT is the whole path from the files: open + decode the PNG(s), the
processor, the model's forward with a KV cache (tower, merger, prefill with
M-RoPE positions, LM head on the last position), argmax. vision_ms: the tower +
merger alone (get_video_features / get_image_features on the processor's
output), timed separately. --generate also times model.generate(max_new_tokens=1)
from the processor's output.

transformers' video processor needs torchvision; where it is not installed
(the dev venv), the stand-in of scripts/dev/make_qwen2_vl_fixtures.py runs it
(torchvision's normalize, no resize: valid since these frames need none).
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2VLConfig
from transformers import Qwen2VLForConditionalGeneration, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "dev"))
from make_decoder_fixtures import qwen2_tokenizer  # noqa: E402
import make_qwen2_vl_fixtures  # noqa: E402  (its ProcessorMixin patch admits the video processor)
from ttft_pytorch import colour_field, forward_ttft, parse_args, report, seconds  # noqa: E402  (bench/, beside this file)

SEED = 0
FRAMES, FRAME_SIDE, IMAGE_SIDE = 8, 224, 448
PATCH, TEMPORAL, MERGE = 14, 2, 2
MIN_PIXELS = 56 * 56
# The same prompts as bench/src/vlm_video.rs.
VIDEO_PROMPT = "<|vision_start|><|video_pad|><|vision_end|>Describe the video."
IMAGE_PROMPT = "<|vision_start|><|image_pad|><|vision_end|>Describe the picture."
SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def video_processor_class():
    try:
        import torchvision  # noqa: F401
        from transformers import Qwen2VLVideoProcessor
        return Qwen2VLVideoProcessor
    except ImportError:
        return make_qwen2_vl_fixtures.video_processor_class()


def picture(h, w, k=0):
    """Smooth colour fields and a block that moves with k, deterministic."""
    rgb = colour_field(h, w)
    x0 = (20 + 20 * k) % (w - 60)
    rgb[h // 3 : h // 3 + 60, x0 : x0 + 60] = [220, 40, 40]
    return Image.fromarray(rgb.astype(np.uint8))


def write(path):
    path = Path(path)
    torch.manual_seed(SEED)
    raw = qwen2_tokenizer(300)
    raw.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS + ["<|im_end|>", "<|endoftext|>"]}
    cfg = Qwen2VLConfig(
        vision_config={
            "depth": 12, "embed_dim": 768, "hidden_size": 768, "hidden_act": "quick_gelu", "mlp_ratio": 4,
            "num_heads": 12, "in_channels": 3, "patch_size": PATCH, "spatial_merge_size": MERGE,
            "temporal_patch_size": TEMPORAL,
        },
        text_config={
            "vocab_size": len(tok), "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
            "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
            "bos_token_id": None, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=28 * 28 * 1280, patch_size=PATCH,
                             temporal_patch_size=TEMPORAL, merge_size=MERGE).save_pretrained(path)
    video_processor_class()(min_pixels=MIN_PIXELS, max_pixels=28 * 28 * 768, patch_size=PATCH,
                            temporal_patch_size=TEMPORAL, merge_size=MERGE,
                            cap_pixels_per_frame=False).save_pretrained(path)
    picture(IMAGE_SIDE, IMAGE_SIDE).save(path / "bench.png")
    (path / "frames").mkdir(exist_ok=True)
    for k in range(FRAMES):
        picture(FRAME_SIDE, FRAME_SIDE, k).save(path / "frames" / f"frame{k + 1}.png")
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"wrote": str(path), "parameters": n}))


def main():
    a = parse_args()
    if a.write:
        write(a.write)
        return
    d = Path(a.run)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(d), tokenizer=AutoTokenizer.from_pretrained(d),
        video_processor=video_processor_class().from_pretrained(d),
    )
    model = Qwen2VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    frame_files = [d / "frames" / f"frame{k + 1}.png" for k in range(FRAMES)]

    def inputs(kind):
        if kind == "video":
            frames = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in frame_files])
            return processor(text=VIDEO_PROMPT, videos=[frames], return_tensors="pt",
                             videos_kwargs={"cap_pixels_per_frame": False})
        return processor(text=IMAGE_PROMPT, images=[Image.open(d / "bench.png").convert("RGB")], return_tensors="pt")

    def vision(kind):
        x = inputs(kind)
        if kind == "video":
            return seconds(lambda: model.model.get_video_features(pixel_values_videos=x["pixel_values_videos"],
                                                                  video_grid_thw=x["video_grid_thw"]))
        return seconds(lambda: model.model.get_image_features(pixel_values=x["pixel_values"],
                                                              image_grid_thw=x["image_grid_thw"]))

    def generate(kind):
        return seconds(lambda: model.generate(**inputs(kind), do_sample=False, max_new_tokens=1))

    with torch.inference_mode():
        for kind in ["video", "image"]:
            report({"input": kind}, a.runs, a.threads, lambda: forward_ttft(model, lambda: inputs(kind)),
                   lambda: vision(kind), (lambda: generate(kind)) if a.generate else None)


if __name__ == "__main__":
    main()
