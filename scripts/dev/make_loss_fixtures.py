"""Write reference values for glimpse-train losses, AdamW, schedule and clipping.

Dev-only (house rule 8): run with the pinned venv, commit the JSON, Rust tests read it.

    ~/.venvs/glimpse-dev/bin/python scripts/dev/make_loss_fixtures.py

Everything is computed in float64 with PyTorch; inputs are written next to outputs.
"""

import json
import math
import pathlib

import torch
import torch.nn.functional as F

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "losses" / "reference.json"

B, D = 6, 8
GROUPS = [0, 1, 2, 1, 3, 4]  # rows 1 and 3 carry the same caption


def positives(groups, n):
    if groups is None:
        return torch.eye(n, dtype=torch.bool)
    g = torch.tensor(groups)
    return g[:, None] == g[None, :]


def infonce(img, txt, logit_scale, groups=None):
    """CLIP loss (Radford et al. 2021) with the multi-positive form for duplicate captions."""
    i = F.normalize(img, dim=-1)
    t = F.normalize(txt, dim=-1)
    scale = torch.clamp(logit_scale.exp(), max=100.0)
    logits = scale * i @ t.T
    pos = positives(groups, img.shape[0])

    def direction(lg, p):
        logp = F.log_softmax(lg, dim=-1)
        return -torch.logsumexp(logp.masked_fill(~p, float("-inf")), dim=-1).mean()

    return 0.5 * (direction(logits, pos) + direction(logits.T, pos.T))


def siglip(img, txt, t_prime, bias, groups=None):
    """Sigmoid loss (Zhai et al. 2023, Algorithm 1): sum over columns, mean over rows."""
    i = F.normalize(img, dim=-1)
    t = F.normalize(txt, dim=-1)
    logits = t_prime.exp() * i @ t.T + bias
    labels = 2.0 * positives(groups, img.shape[0]).double() - 1.0
    return -F.logsigmoid(labels * logits).sum() / img.shape[0]


def grads_of(fn, *tensors):
    leaves = [x.clone().requires_grad_(True) for x in tensors]
    loss = fn(*leaves)
    loss.backward()
    return loss.item(), [leaf.grad.tolist() for leaf in leaves]


img = torch.randn(B, D)
txt = torch.randn(B, D)
txt[3] = txt[1] + 0.05 * torch.randn(D)  # duplicate caption: near-identical text rows
ref = {"inputs": {"image": img.tolist(), "text": txt.tolist(), "groups": GROUPS}}

cases = {}
for name, ls, groups in [
    ("infonce", math.log(1 / 0.07), None),
    ("infonce_groups", math.log(1 / 0.07), GROUPS),
    ("infonce_clamped", math.log(200.0), None),
]:
    loss, (gi, gt, gs) = grads_of(
        lambda a, b, s: infonce(a, b, s, groups), img, txt, torch.tensor(ls)
    )
    cases[name] = {"logit_scale": ls, "loss": loss, "grad_image": gi, "grad_text": gt, "grad_logit_scale": gs}

for name, groups in [("siglip", None), ("siglip_groups", GROUPS)]:
    tp, b = math.log(10.0), -10.0
    loss, (gi, gt, gtp, gb) = grads_of(
        lambda a, c, s, d: siglip(a, c, s, d, groups), img, txt, torch.tensor(tp), torch.tensor(b)
    )
    cases[name] = {
        "t_prime": tp, "bias": b, "loss": loss, "grad_image": gi, "grad_text": gt,
        "grad_t_prime": gtp, "grad_bias": gb,
    }
ref["contrastive"] = cases

# Masked LM cross-entropy, no shift: logits (B, T, V), labels (B, T) with -100 ignored.
lm_logits = torch.randn(2, 5, 7)
lm_labels = torch.tensor([[3, -100, 0, 6, -100], [-100, 2, 2, 5, 1]])
loss, (g,) = grads_of(
    lambda x: F.cross_entropy(x.reshape(-1, 7), lm_labels.reshape(-1), ignore_index=-100), lm_logits
)
# With shift: logits[:, :-1] predict labels[:, 1:].
loss_shift, (g_shift,) = grads_of(
    lambda x: F.cross_entropy(
        x[:, :-1].reshape(-1, 7), lm_labels[:, 1:].reshape(-1), ignore_index=-100
    ),
    lm_logits,
)
ref["masked_lm"] = {
    "logits": lm_logits.tolist(), "labels": lm_labels.tolist(),
    "loss": loss, "grad_logits": g, "loss_shift": loss_shift, "grad_logits_shift": g_shift,
}

# AdamW: two parameter groups, three steps with a fixed gradient sequence.
w = torch.randn(3, 4)
bvec = torch.randn(4)
gw = [torch.randn(3, 4) for _ in range(3)]
gb = [torch.randn(4) for _ in range(3)]
pw, pb = w.clone().requires_grad_(True), bvec.clone().requires_grad_(True)
opt = torch.optim.AdamW(
    [{"params": [pw], "weight_decay": 0.1}, {"params": [pb], "weight_decay": 0.0}],
    lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
)
for k in range(3):
    pw.grad, pb.grad = gw[k].clone(), gb[k].clone()
    opt.step()
st = opt.state
ref["adamw"] = {
    "lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1,
    "weight": w.tolist(), "bias": bvec.tolist(),
    "grads_weight": [x.tolist() for x in gw], "grads_bias": [x.tolist() for x in gb],
    "weight_after": pw.detach().tolist(), "bias_after": pb.detach().tolist(),
    "exp_avg_weight": st[pw]["exp_avg"].tolist(), "exp_avg_sq_weight": st[pw]["exp_avg_sq"].tolist(),
}

# Linear warmup then cosine (nanoGPT form): step < warmup -> max*(step+1)/warmup.
max_lr, min_lr, warmup, total = 1e-3, 1e-4, 5, 20


def lr_at(step):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step > total:
        return min_lr
    ratio = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


ref["schedule"] = {
    "max_lr": max_lr, "min_lr": min_lr, "warmup_steps": warmup, "total_steps": total,
    "lrs": [lr_at(s) for s in range(25)],
}

# Global-norm clipping: torch.nn.utils.clip_grad_norm_.
clip = {}
for max_norm in (1.0, 100.0):
    a, c = torch.randn(3, 4) * 2.0, torch.randn(5) * 2.0
    pa, pc = torch.zeros(3, 4, requires_grad=True), torch.zeros(5, requires_grad=True)
    pa.grad, pc.grad = a.clone(), c.clone()
    norm = torch.nn.utils.clip_grad_norm_([pa, pc], max_norm).item()
    clip[str(int(max_norm))] = {
        "max_norm": max_norm, "grad_a": a.tolist(), "grad_b": c.tolist(), "norm": norm,
        "clipped_a": pa.grad.tolist(), "clipped_b": pc.grad.tolist(),
    }
ref["clip"] = clip

ref["torch_version"] = torch.__version__
OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(json.dumps(ref, indent=1) + "\n")
print(f"wrote {OUT}")
