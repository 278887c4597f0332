#!/usr/bin/env python3
"""PyTorch side of the LLaVA-shaped VLM benchmark: transformers'
LlavaForConditionalGeneration, random weights, f32, the same threads as
glimpse. bench/run_vlm.sh runs it next to bench-vlm.

    python bench/vlm_pytorch.py --write DIR          # build the random model once
    python bench/vlm_pytorch.py --run DIR --threads 2 --runs 3 --new-tokens 64 [--generate]

The model: CLIP ViT-B/16 tower (768 wide, 12 layers, 224x224, patch 16,
quick_gelu), LLaVA's 2-layer GELU MLP projector, a 12-layer 768-wide Llama
(12 heads, 12 KV heads, FFN 2048, vocab 32000 + <image>), features from the
tower's second-to-last layer with the class token dropped: 196 image tokens.

The prompt: <s>, 16 text ids, 196 <image> ids, 16 text ids (1 + 32 + 196 =
229 positions), the ids bench-vlm uses. Preprocessing is excluded on both
sides: the input is a synthetic (1, 3, 224, 224) pixel tensor, sin(0.37 i).

Timed with the model's own forward, not `generate`:
  ttft     pixel_values -> first token: vision tower + projector + prefill of
           the 229 positions (KV cache on, LM head on the last position only)
           + argmax
  decode   --new-tokens greedy steps, each one forward of the last token with
           the KV cache + argmax
vision_ms: the tower + projector alone (glimpse: encode_images inside the
TTFT; here get_image_features, timed separately after each request).
--generate adds `model.generate` (greedy, min = max new tokens) for reference:
its TTFT is generate(max_new_tokens=1), its decode rate new_tokens / (time of
generate(max_new_tokens=1 + new_tokens) - that TTFT).
"""
import json
import resource
import statistics
import time

import torch
from transformers import (
    CLIPVisionConfig,
    DynamicCache,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from ttft_pytorch import parse_args  # bench/, beside this file

IMAGE_TOKEN_ID = 32000
IMAGE_TOKENS = 196
SEED = 0


def prompt_ids():
    """1 + 32 + 196 ids; the same list as bench/src/vlm.rs."""
    text = [(1000 + 37 * i) % 31000 + 2 for i in range(32)]
    return [1] + text[:16] + [IMAGE_TOKEN_ID] * IMAGE_TOKENS + text[16:]


def write(path):
    torch.manual_seed(SEED)
    vision = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=224, patch_size=16, hidden_act="quick_gelu", projection_dim=768)
    text = LlamaConfig(vocab_size=32001, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                       num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
                      image_seq_length=IMAGE_TOKENS, projector_hidden_act="gelu", vision_feature_layer=-2,
                      vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"wrote": path, "parameters": n}))


def argmax_last(logits):
    # (1, 1, V) -> (1, 1)
    return logits[:, -1:].argmax(-1)


def main():
    a = parse_args(lambda p: p.add_argument("--new-tokens", type=int, default=64), "also time model.generate")
    if a.write:
        write(a.write)
        return
    model = LlavaForConditionalGeneration.from_pretrained(a.run, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids()])
    # sin(0.37 i), the same pixels as bench-vlm, so both greedy answers can be compared
    pixels = (torch.arange(3 * 224 * 224, dtype=torch.float32) * 0.37).sin().reshape(1, 3, 224, 224)

    def once():
        """(ttft seconds, decode tok/s, generated ids)"""
        t = time.perf_counter()
        cache = DynamicCache(config=model.config.get_text_config())
        out = model(input_ids=ids, pixel_values=pixels, past_key_values=cache, use_cache=True, logits_to_keep=1)
        tok = argmax_last(out.logits)
        tok.item()
        ttft = time.perf_counter() - t
        cache = out.past_key_values
        gen = [tok.item()]
        t = time.perf_counter()
        for _ in range(a.new_tokens):
            out = model(input_ids=tok, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            tok = argmax_last(out.logits)
            gen.append(tok.item())
        return ttft, a.new_tokens / (time.perf_counter() - t), gen

    def vision():
        """Seconds of the TTFT's vision part alone (tower + projector), run separately."""
        t = time.perf_counter()
        model.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                       vision_feature_select_strategy="default")
        return time.perf_counter() - t

    def generate(n):
        t = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, do_sample=False,
                       max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
        return time.perf_counter() - t

    impl = f"transformers {__import__('transformers').__version__} / torch {torch.__version__}"
    with torch.inference_mode():
        once()  # warm-up: first-touch page faults, thread pool, allocator
        ttfts, rates, visions, gen = [], [], [], None
        for _ in range(a.runs):
            ttft, rate, gen = once()
            ttfts.append(ttft * 1e3)
            rates.append(rate)
            visions.append(vision() * 1e3)
        row = {
            "impl": impl,
            "mode": "forward",
            "prompt_tokens": ids.shape[1],
            "new_tokens": a.new_tokens,
            "runs": a.runs,
            "threads": a.threads,
            "ttft_ms_median": statistics.median(ttfts),
            "ttft_ms_all": ttfts,
            "vision_ms_median": statistics.median(visions),
            "decode_tok_per_s_median": statistics.median(rates),
            "decode_tok_per_s_all": rates,
            "first_tokens": gen[:8],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        print(json.dumps(row), flush=True)
        if a.generate:
            generate(1)
            gt, gr = [], []
            for _ in range(a.runs):
                first = generate(1)
                total = generate(1 + a.new_tokens)
                gt.append(first * 1e3)
                gr.append(a.new_tokens / max(total - first, 1e-9))
            print(json.dumps({
                **row,
                "mode": "generate",
                "ttft_ms_median": statistics.median(gt),
                "ttft_ms_all": gt,
                "vision_ms_median": None,
                "decode_tok_per_s_median": statistics.median(gr),
                "decode_tok_per_s_all": gr,
                "first_tokens": None,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }), flush=True)


if __name__ == "__main__":
    main()
