#!/usr/bin/env python3
"""Writes the tiny VQ image-tokenizer parity fixtures under fixtures/vq/ (dev-only, run by hand).

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_vq_fixtures.py

Versions are pinned in scripts/dev/requirements.txt. Deterministic (fixed seeds, f32, CPU, the PIL
image-processor backend); committed, so CI compares against it without Python. Nothing is
downloaded: every model is built from a config.

fixtures/vq/image.png: a 40x48 (h x w) RGB test picture (gradients + seeded noise).

fixtures/vq/chameleon/: ChameleonForConditionalGeneration.save_pretrained in f16 (the references
run the f16-rounded weights in f32; a minimal text model:
hidden 16, one layer) with a ChameleonVQVAE of base_channels 32 (GroupNorm has 32 groups, so no
smaller), channel_multiplier [1, 1], one res block per level, attention at resolution 16 (the
second level) and in the middle, latent 8, embed_dim 4, 32 codes; resolution 32, so a 32x32 image
gives a 16x16 grid. `vocabulary_map` names codes as Chameleon does (IMGIMG + the digits as letters
A-J + Z) with token ids shuffled; preprocessor_config.json from ChameleonImageProcessorPil
(shortest edge 32, LANCZOS, centre crop 32, rescale 0.0078, mean = std = 1).

fixtures/vq/janus/: JanusForConditionalGeneration.save_pretrained in f16 (tiny SigLIP-like tower
and Llama decoder; the references run the f16-rounded weights in f32) with a JanusVQVAE of the same sizes (attention on the last level and in the
middle, both in the encoder and the decoder), num_patches 8 (JanusConfig sets it to the tower's image_size // patch_size: 16 // 2); preprocessor_config.json from
JanusImageProcessorPil (size 16: the longer side to 16, padded to a square with the mean colour,
bicubic).

fixtures/vq/emu3/: Emu3ForConditionalGeneration.save_pretrained in f16 (minimal text model) with an
Emu3VQVAE of base_channels 32, channel_multiplier [1, 1], one res block, attention (2 heads,
hidden 32) on level 1 and in the middle, latent = embed_dim = 4, temporal_downsample_factor 2
(one temporal downsample / upsample), BatchNorm3d running statistics randomised, 32 codes;
`vocabulary_map` with visual tokens `<|visual token NNNNNN|>` (ids shuffled) and `<|extra_200|>`
(end of row); preprocessor_config.json from Emu3ImageProcessor (spatial_factor 2, min_pixels 24²,
max_pixels 32², bicubic, mean = std = 0.5): image.png becomes 28x34, a 14x17 grid. Its
reference.safetensors has pixel_values, latents (1, 4, 14, 17), codes, decoded (1, 3, 28, 34)
and token_ids (Emu3's get_image_tokens: each row of codes as token ids, then <|extra_200|>).

Each model directory has reference.safetensors (f32):
    pixel_values   (1, 3, S, S)  the processor's output for image.png
    latents        (1, E, h, w)  quant_conv's output (what the quantiser sees)
    codes          (h*w,)        nearest-codebook indices, as float
    embedding_loss ()            the quantiser's codebook + beta*commitment loss
and chameleon: token_ids (h*w,) (vocabulary_mapping.convert_img2bpe of the codes, as float);
janus: decoded (1, 3, S, S) JanusVQVAE.decode(codes), and decoded_custom with codes_custom (a
hand-picked grid that uses every code, so a decode test does not depend on the encoder).
reference.json: versions, grid [h, w], codes, token_ids (chameleon), min_margin (smallest gap
between the best and second-best codebook distance over the grid: far above f32 noise, so the
codes cannot flip between implementations).

fixtures/vq/quantizer.safetensors: a quantiser case in plain PyTorch (no transformers):
    z (2, 4, 3, 5) encoder output, codebook (16, 4), w (2, 4, 3, 5) a fixed upstream gradient;
    codes (2, 3, 5); quantized (straight-through output, equal to codebook[codes]); codebook_loss
    mean((zq - sg z)^2); commitment mean((sg zq - z)^2); loss = codebook_loss + beta*commitment
    with beta 0.25; for L = loss + sum(w * quantized): grad_z and grad_codebook; usage (distinct
    codes / 16) and perplexity (exp of the code distribution's entropy).
"""

import json
import sys
from pathlib import Path

import numpy as np
import PIL
import safetensors
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    ChameleonConfig,
    ChameleonForConditionalGeneration,
    Emu3Config,
    Emu3ForConditionalGeneration,
    JanusConfig,
    JanusForConditionalGeneration,
)
from transformers.models.emu3.image_processing_emu3 import Emu3ImageProcessor
from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil
from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "vq"
SEED = 21
CODES = 32
EMBED = 4
BETA = 0.25


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def test_image():
    g = np.random.default_rng(SEED)
    h, w = 40, 48
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 255 / (h + w)], axis=-1)
    img = np.clip(base + g.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def vq_dict(**extra):
    return dict(
        embed_dim=EMBED, num_embeddings=CODES, latent_channels=8, in_channels=3, base_channels=32,
        channel_multiplier=[1, 1], num_res_blocks=1, dropout=0.0, **extra,
    )


def random_vq(vq, seed):
    """Conv weights at a He-like scale so activations neither vanish nor blow up; GroupNorm
    weights around 1, biases non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vq.named_parameters():
            if "norm" in name:
                base = 1.0 if name.endswith(".weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / fan_in) ** 0.5)


def spread_codebook(vq, pixel_values, seed):
    """Codebook rows drawn from this image's own latents (plus noise), so the codes spread over
    the codebook instead of all landing on the entry nearest the latents' mean."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = vq.quant_conv(vq.encoder(pixel_values)).permute(0, 2, 3, 1).reshape(-1, EMBED)
        pick = torch.randperm(z.shape[0], generator=g)[:CODES]
        vq.quantize.embedding.weight.copy_(z[pick] + 0.05 * z.std() * torch.randn(CODES, EMBED, generator=g))


def margins(latents, codebook):
    z = latents.permute(0, 2, 3, 1).reshape(-1, codebook.shape[1]).double()
    d = torch.cdist(z, codebook.double()) ** 2
    top2 = d.topk(2, largest=False).values
    return (top2[:, 1] - top2[:, 0]).min().item()


def encode_reference(vq, pixel_values):
    with torch.no_grad():
        out = vq.encode(pixel_values, return_dict=True)
        latents = vq.quant_conv(out.last_hidden_state)
    codes = out.image_tokens.reshape(-1)
    return latents, codes, out.embedding_loss


def chameleon(image):
    name_of = lambda code: "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"  # noqa: E731
    g = torch.Generator().manual_seed(SEED)
    ids = (torch.randperm(CODES, generator=g) + 8).tolist()  # ids 8..39, shuffled
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<image>": 4, "<racm3:break>": 5, "<eoss>": 6, "a": 7}
    vocab.update({name_of(c): ids[c] for c in range(CODES)})
    cfg = ChameleonConfig(
        vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, vocabulary_map=vocab, image_token_id=4,
        vq_config=vq_dict(resolution=32, attn_resolutions=[16], attn_type="vanilla"),
    )
    torch.manual_seed(SEED)
    model = ChameleonForConditionalGeneration(cfg).eval()
    proc = ChameleonImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixel_values = proc(images=image, return_tensors="pt")["pixel_values"]
    vq = model.model.vqmodel
    random_vq(vq, SEED + 1)
    spread_codebook(vq, pixel_values, SEED + 2)
    # weights stored as f16 (the fixture's size); the reference runs them in f32
    model.to(torch.float16).to(torch.float32)

    latents, codes, loss = encode_reference(vq, pixel_values)
    token_ids = model.model.get_image_tokens(pixel_values).reshape(-1)
    assert token_ids.tolist() == [ids[c] for c in codes.tolist()]

    d = OUT / "chameleon"
    model.to(torch.float16).save_pretrained(d)
    model.to(torch.float32)
    proc.save_pretrained(d)
    back = ChameleonForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    assert torch.equal(back.model.get_image_tokens(pixel_values).reshape(-1), token_ids)
    h, w = latents.shape[-2:]
    save_file(
        {"pixel_values": pixel_values, "latents": latents, "codes": codes.float(),
         "embedding_loss": loss.reshape(()), "token_ids": token_ids.float()},
        str(d / "reference.safetensors"),
    )
    m = margins(latents, vq.quantize.embedding.weight)
    write_json(d / "reference.json", {
        "versions": versions(), "grid": [h, w], "codes": codes.tolist(), "token_ids": token_ids.tolist(),
        "distinct_codes": len(set(codes.tolist())), "min_margin": m,
    })
    return m, len(set(codes.tolist()))


def janus(image):
    cfg = JanusConfig(
        text_config=dict(
            model_type="llama", vocab_size=40, hidden_size=16, intermediate_size=32,
            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        ),
        vision_config=dict(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=2,
            intermediate_size=32, projection_dim=16, depth=1,
        ),
        vq_config=vq_dict(num_patches=8, projection_dim=16, image_token_embed_dim=16),
        image_token_id=39,
    )
    torch.manual_seed(SEED)
    model = JanusForConditionalGeneration(cfg).eval()
    proc = JanusImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    pixel_values = proc(images=image, return_tensors="pt")["pixel_values"]
    vq = model.model.vqmodel
    random_vq(vq, SEED + 3)
    spread_codebook(vq, pixel_values, SEED + 4)
    # weights stored as f16 (the fixture's size); the reference runs them in f32
    model.to(torch.float16).to(torch.float32)

    latents, codes, loss = encode_reference(vq, pixel_values)
    with torch.no_grad():
        decoded = vq.decode(codes.reshape(1, -1))
        custom = (torch.arange(64) * 7 % CODES).reshape(1, -1)
        decoded_custom = vq.decode(custom)

    d = OUT / "janus"
    model.to(torch.float16).save_pretrained(d)
    model.to(torch.float32)
    proc.save_pretrained(d)
    back = JanusForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(back.model.vqmodel.decode(custom), decoded_custom)
    h, w = latents.shape[-2:]
    save_file(
        {"pixel_values": pixel_values, "latents": latents, "codes": codes.float(),
         "embedding_loss": loss.reshape(()), "decoded": decoded, "codes_custom": custom.reshape(-1).float(),
         "decoded_custom": decoded_custom},
        str(d / "reference.safetensors"),
    )
    m = margins(latents, vq.quantize.embedding.weight)
    write_json(d / "reference.json", {
        "versions": versions(), "grid": [h, w], "codes": codes.tolist(),
        "distinct_codes": len(set(codes.tolist())), "min_margin": m,
    })
    return m, len(set(codes.tolist()))


def emu3(image):
    """Emu3: the image repeated over 2 frames (temporal_downsample_factor), one temporal
    downsample and two temporal res blocks around the 2D VQGAN, spatially-normalised decoder."""
    visual = lambda code: f"<|visual token {code:06d}|>"  # noqa: E731
    g = torch.Generator().manual_seed(SEED + 6)
    ids = (torch.randperm(CODES, generator=g) + 8).tolist()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<image>": 4, "<|extra_200|>": 5, "a": 6, "b": 7}
    vocab.update({visual(c): ids[c] for c in range(CODES)})
    cfg = Emu3Config(
        text_config=dict(
            vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, pad_token_id=3, bos_token_id=1, eos_token_id=2,
        ),
        vq_config=dict(
            codebook_size=CODES, embed_dim=EMBED, latent_channels=EMBED, in_channels=3, out_channels=3,
            temporal_downsample_factor=2, base_channels=32, channel_multiplier=[1, 1], num_res_blocks=1,
            attn_resolutions=[1], hidden_size=32, num_attention_heads=2,
        ),
        vocabulary_map=vocab,
    )
    torch.manual_seed(SEED)
    model = Emu3ForConditionalGeneration(cfg).eval()
    proc = Emu3ImageProcessor(
        min_pixels=24 * 24, max_pixels=32 * 32, spatial_factor=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    batch = proc(images=image, return_tensors="pt")
    pixel_values, image_sizes = batch["pixel_values"], batch["image_sizes"]
    vq = model.model.vqmodel
    random_vq(vq, SEED + 7)
    g = torch.Generator().manual_seed(SEED + 8)
    with torch.no_grad():
        for name, b in vq.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(1.0 + 0.2 * torch.rand(b.shape, generator=g))
    # weights stored as f16 (the fixture's size); the reference runs them in f32
    model.to(torch.float16).to(torch.float32)
    with torch.no_grad():
        frames = pixel_values.unsqueeze(1).repeat(1, 2, 1, 1, 1)
        hidden = vq.encoder(frames)
        latents = vq.quant_conv(hidden.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4)[:, 0]
        z = latents.permute(0, 2, 3, 1).reshape(-1, EMBED)
        pick = torch.randperm(z.shape[0], generator=g)[:CODES]
        vq.quantize.embedding.weight.copy_(
            (z[pick] + 0.05 * z.std() * torch.randn(CODES, EMBED, generator=g)).half().float()
        )
        codes = vq.encode(pixel_values, image_sizes, return_dict=True).image_tokens[0]
        decoded = vq.decode(codes.unsqueeze(0))
        token_ids = model.model.get_image_tokens(pixel_values, image_sizes)
    h, w = codes.shape

    d = OUT / "emu3"
    model.to(torch.float16).save_pretrained(d)
    model.to(torch.float32)
    proc.save_pretrained(d)
    back = Emu3ForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(back.model.vqmodel.encode(pixel_values, image_sizes, return_dict=True).image_tokens[0], codes)
        assert (back.model.vqmodel.decode(codes.unsqueeze(0)) - decoded).abs().max() == 0
    save_file(
        {"pixel_values": pixel_values, "latents": latents.contiguous(), "codes": codes.reshape(-1).float(),
         "decoded": decoded.contiguous(), "token_ids": token_ids.reshape(-1).float()},
        str(d / "reference.safetensors"),
    )
    m = margins(latents, vq.quantize.embedding.weight)
    write_json(d / "reference.json", {
        "versions": versions(), "grid": [h, w], "codes": codes.reshape(-1).tolist(),
        "token_ids": token_ids.reshape(-1).tolist(), "image_sizes": image_sizes.tolist(),
        "distinct_codes": len(set(codes.reshape(-1).tolist())), "min_margin": m,
    })
    return m, len(set(codes.reshape(-1).tolist()))


def quantizer_case():
    g = torch.Generator().manual_seed(SEED + 5)
    n = 16
    codebook = torch.randn(n, 4, generator=g).requires_grad_(True)
    z = torch.randn(2, 4, 3, 5, generator=g).requires_grad_(True)
    w = torch.randn(2, 4, 3, 5, generator=g)
    # nearest codebook row per position: z as (B, H, W, C) rows
    rows = z.permute(0, 2, 3, 1)
    flat = rows.reshape(-1, 4)
    dist = (flat**2).sum(1, keepdim=True) + (codebook**2).sum(1) - 2 * flat @ codebook.t()
    codes = dist.argmin(1)
    zq = codebook[codes].view(rows.shape)
    codebook_loss = ((zq - rows.detach()) ** 2).mean()
    commitment = ((zq.detach() - rows) ** 2).mean()
    loss = codebook_loss + BETA * commitment
    quantized = (rows + (zq - rows).detach()).permute(0, 3, 1, 2)
    total = loss + (quantized * w).sum()
    total.backward()
    counts = torch.bincount(codes, minlength=n).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    perplexity = torch.exp(-(nz * nz.log()).sum())
    top2 = dist.detach().double().topk(2, largest=False).values
    save_file(
        {"z": z.detach(), "codebook": codebook.detach(), "w": w, "codes": codes.view(2, 3, 5).float(),
         "quantized": quantized.detach().contiguous(), "codebook_loss": codebook_loss.detach().reshape(()),
         "commitment": commitment.detach().reshape(()), "loss": loss.detach().reshape(()),
         "grad_z": z.grad, "grad_codebook": codebook.grad,
         "usage": torch.tensor(len(nz) / n), "perplexity": perplexity.float()},
        str(OUT / "quantizer.safetensors"),
    )
    return (top2[:, 1] - top2[:, 0]).min().item()


def versions():
    return {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "safetensors": safetensors.__version__, "pillow": PIL.__version__,
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    image = test_image()
    image.save(OUT / "image.png")
    image = Image.open(OUT / "image.png")
    cm, cd = chameleon(image)
    jm, jd = janus(image)
    em, ed = emu3(image)
    qm = quantizer_case()
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(
        f"wrote {OUT.relative_to(ROOT)}: {size / 1024:.0f} KiB; chameleon {cd} distinct codes, margin {cm:.3g}; "
        f"janus {jd} distinct codes, margin {jm:.3g}; "
        f"emu3 {ed} distinct codes, margin {em:.3g}; quantizer margin {qm:.3g}"
    )


if __name__ == "__main__":
    sys.exit(main())
