#!/usr/bin/python3
"""VRWKV6 in plain PyTorch, to check and time the native engine against.

An importable definition of the official VRWKV6 classifier (VRWKV6.md A.3,
A.4): PatchEmbed with corner padding, the bicubic pos-embed resize, blocks of
the RWKV-6 Spatial Mix (per-head Q-Shift, ddlerp through the five LoRAs, the
data-dependent decay, Bi-WKV6, GroupNorm ln_x, SiLU gate) and Channel Mix,
pre- or post-norm with layer scale, key norms, the final norm, global average
pooling and the linear head. Parameter names are the official checkpoint keys,
so an mmcls checkpoint loads with strict=True.

The official code computes Bi-WKV6 only in its CUDA kernel; here it has two
PyTorch forms (VRWKV6.md A.5):
  * masked: per head the T×T "attention" Q[t,s] = Σ_j r_t[j] k_s[j] P(s,t)[j]
    with the decay products as exp of differences of a cumulative sum of
    e^w, the bonus on the diagonal, then y = Q·V: no loop over tokens,
    O(T²·C) memory;
  * scan: the kernel's two recurrences over an [N,N] state per head, one
    Python step per token.
`--time` measures both and `compare_pytorch.py` uses the faster.

  tools/v6_pytorch.py --check          # float64 against ../shared/golden/v6 (both forms)
  tools/v6_pytorch.py --time --model vrwkv6_t --batch 1,8 --threads 2
  tools/v6_pytorch.py --make-case CASE.json OUT   # a test case (weights, input, outputs, gradients)

`--check` compares logits, features, every block output and every parameter
gradient: max|diff| / max(1, max|golden|) <= 1e-6 in float64.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import compare_pytorch  # noqa: F401  (BLAS settings before torch loads)

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from det_pytorch import write_safetensors  # noqa: E402
from seg_pytorch import read_safetensors  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/golden/v6")
PRESETS = {  # VRWKV6.md A.2: embed dims, post_norm / layer scale
    "vrwkv6_t": (192, False),
    "vrwkv6_s": (384, True),
    "vrwkv6_b": (768, True),
}
TOLERANCE = 1e-6


def preset(name):
    C, post = PRESETS[name]
    return dict(embed_dims=C, depth=12, patch_size=16, img_size=224, post_norm=post, init_values=1e-5 if post else None,
                key_norm=False, hidden_rate=4, final_norm=True, out_indices=[11], num_classes=1000)


# ---------------------------------------------------------------------------------------------------------
# Bi-WKV6

def wkv6_masked(r, k, v, w, u, N=64):
    """r, k, v, w: [B,T,C] (w raw, δ = exp(−exp(w))), u: [H,N] -> y [B,T,C], per head the masked T×T form."""
    B, T, C = r.shape
    H = C // N
    heads = lambda x: x.view(B, T, H, N).transpose(1, 2)  # [B,H,T,N]
    r, k, v, ew = heads(r), heads(k), heads(v), heads(torch.exp(w))
    c = torch.cumsum(ew, 2)  # c_t = Σ_{m<=t} e^{w_m}
    c_before = c - ew  # Σ_{m<t}
    # log P(s,t) = −Σ_{m strictly between}: s < t: c_{t−1} − c_s = c_before_t − c_s; s > t: c_before_s − c_t.
    ct, cs = c_before[:, :, :, None, :], c[:, :, None, :, :]
    lower = torch.exp(-(ct - cs).clamp(min=0))  # s < t (the clamp only touches s >= t, masked below)
    upper = torch.exp(-(c_before[:, :, None, :, :] - c[:, :, :, None, :]).clamp(min=0))  # s > t
    t_idx = torch.arange(T)
    mask_l = (t_idx[None, :] < t_idx[:, None]).to(r.dtype)[None, None, :, :, None]  # [t,s]: s < t
    mask_u = (t_idx[None, :] > t_idx[:, None]).to(r.dtype)[None, None, :, :, None]
    P = lower * mask_l + upper * mask_u  # [B,H,T(t),T(s),N]
    Q = torch.einsum("bhtj,bhsj,bhtsj->bhts", r, k, P)
    Q = Q + torch.diag_embed(torch.einsum("bhtj,hj,bhtj->bht", r, u, k))
    return (Q @ v).transpose(1, 2).reshape(B, T, C)


def wkv6_factored(r, k, v, w, u, N=64):
    """The masked form with the decay products factored: P(s,t) = e^{−(c_{t−1} − m)}·e^{c_s − m} for s < t (m =
    half the total), so Q is two batched matrix products per head. Valid while the exponents stay inside float32's
    range, Σ_t e^{w_t} ≲ 170 over the sequence: true of the official initialisation (e^w ≤ e^−1) at 224²."""
    B, T, C = r.shape
    H = C // N
    heads = lambda x: x.view(B, T, H, N).transpose(1, 2)  # [B,H,T,N]
    r, k, v, ew = heads(r), heads(k), heads(v), heads(torch.exp(w))
    c = torch.cumsum(ew, 2)
    c_before = c - ew
    m = c[:, :, -1:, :] / 2
    lower = (r * torch.exp(m - c_before)) @ (k * torch.exp(c - m)).transpose(-1, -2)  # s < t
    upper = (r * torch.exp(c - m)) @ (k * torch.exp(m - c_before)).transpose(-1, -2)  # s > t
    Q = torch.tril(lower, -1) + torch.triu(upper, 1) + torch.diag_embed((r * u[None, :, None, :] * k).sum(-1))
    return (Q @ v).transpose(1, 2).reshape(B, T, C)


def wkv6_scan(r, k, v, w, u, N=64):
    """The kernel's two passes (VRWKV6.md A.5), one Python step per token."""
    B, T, C = r.shape
    H = C // N
    heads = lambda x: x.view(B, T, H, N)
    r, k, v, d = heads(r), heads(k), heads(v), heads(torch.exp(-torch.exp(w)))
    ys = [None] * T
    S = r.new_zeros(B, H, N, N)  # [key j, value i]
    for t in range(T - 1, -1, -1):
        ys[t] = torch.einsum("bhj,bhji->bhi", r[:, t], S)
        S = S * d[:, t, :, :, None] + k[:, t, :, :, None] * v[:, t, :, None, :]
    S = r.new_zeros(B, H, N, N)
    for t in range(T):
        bonus = (r[:, t] * u * k[:, t]).sum(-1, keepdim=True)
        ys[t] = ys[t] + torch.einsum("bhj,bhji->bhi", r[:, t], S) + bonus * v[:, t]
        S = S * d[:, t, :, :, None] + k[:, t, :, :, None] * v[:, t, :, None, :]
    return torch.stack(ys, 1).reshape(B, T, C)


WKV6 = {"masked": wkv6_masked, "factored": wkv6_factored, "scan": wkv6_scan}


# ---------------------------------------------------------------------------------------------------------
# The model

def q_shift_multihead(x, H, W, head=64):
    """[B,T,C] -> the per-head quarter shift (left, right, above, below neighbours), zeros at the borders."""
    B, T, C = x.shape
    q = head // 4
    x5 = x.view(B, H, W, C // head, head)
    out = torch.zeros_like(x5)
    out[:, :, 1:, :, 0:q] = x5[:, :, :-1, :, 0:q]
    out[:, :, :-1, :, q:2 * q] = x5[:, :, 1:, :, q:2 * q]
    out[:, 1:, :, :, 2 * q:3 * q] = x5[:, :-1, :, :, 2 * q:3 * q]
    out[:, :-1, :, :, 3 * q:4 * q] = x5[:, 1:, :, :, 3 * q:4 * q]
    return out.view(B, T, C)


class SpatialMix(nn.Module):
    def __init__(self, C, key_norm, R=32, D=64, N=64):
        super().__init__()
        self.N = N
        for n in "xwkvrg":
            setattr(self, "time_maa_" + n, nn.Parameter(torch.rand(1, 1, C)))
        self.time_maa_w1 = nn.Parameter(torch.randn(C, 5 * R) * 1e-2)
        self.time_maa_w2 = nn.Parameter(torch.randn(5, R, C) * 1e-2)
        self.time_decay = nn.Parameter(torch.rand(1, 1, C) * 5 - 6)
        self.time_decay_w1 = nn.Parameter(torch.randn(C, D) * 1e-2)
        self.time_decay_w2 = nn.Parameter(torch.randn(D, C) * 1e-2)
        self.time_faaaa = nn.Parameter(torch.rand(C // N, N))
        self.key, self.value, self.receptance, self.gate = (nn.Linear(C, C, bias=False) for _ in range(4))
        self.key_norm = nn.LayerNorm(C) if key_norm else None
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(C // N, C)
        self.wkv = "masked"

    def forward(self, x, H, W):
        B, T, C = x.shape
        xx = q_shift_multihead(x, H, W, self.N) - x
        xxx = x + xx * self.time_maa_x
        z = torch.tanh(xxx @ self.time_maa_w1).view(B * T, 5, -1).transpose(0, 1)
        m = torch.bmm(z, self.time_maa_w2).view(5, B, T, C)
        xw, xk, xv, xr, xg = (x + xx * (getattr(self, "time_maa_" + n) + m[j]) for j, n in enumerate("wkvrg"))
        r, k, v, g = self.receptance(xr), self.key(xk), self.value(xv), F.silu(self.gate(xg))
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        y = WKV6[self.wkv](r, k, v, w, self.time_faaaa, self.N)
        if self.key_norm is not None:
            y = self.key_norm(y)
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        return self.output(y * g)


class ChannelMix(nn.Module):
    def __init__(self, C, hidden, key_norm, N=64):
        super().__init__()
        self.N = N
        self.spatial_mix_k, self.spatial_mix_r = (nn.Parameter(torch.rand(1, 1, C)) for _ in range(2))
        self.key, self.value = nn.Linear(C, hidden, bias=False), nn.Linear(hidden, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.key_norm = nn.LayerNorm(hidden) if key_norm else None

    def forward(self, x, H, W):
        xx = q_shift_multihead(x, H, W, self.N)
        xk = x * self.spatial_mix_k + xx * (1 - self.spatial_mix_k)
        xr = x * self.spatial_mix_r + xx * (1 - self.spatial_mix_r)
        k = torch.square(torch.relu(self.key(xk)))
        if self.key_norm is not None:
            k = self.key_norm(k)
        return torch.sigmoid(self.receptance(xr)) * self.value(k)


class Block(nn.Module):
    def __init__(self, cfg, i):
        super().__init__()
        C = cfg["embed_dims"]
        if i == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att, self.ffn = self.mixers(cfg, i)
        self.post_norm, self.layer_scale = cfg["post_norm"], cfg["init_values"] is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(torch.full((C,), float(cfg["init_values"])))
            self.gamma2 = nn.Parameter(torch.full((C,), float(cfg["init_values"])))

    def mixers(self, cfg, i):
        """The block kind's Spatial Mix and Channel Mix (a subclass makes another kind's)."""
        C = cfg["embed_dims"]
        return SpatialMix(C, cfg["key_norm"]), ChannelMix(C, cfg["hidden_rate"] * C, cfg["key_norm"])

    def forward(self, x, H, W):
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        g1, g2 = (self.gamma1, self.gamma2) if self.layer_scale else (1.0, 1.0)
        if self.post_norm:
            x = x + g1 * self.ln1(self.att(x, H, W))
            return x + g2 * self.ln2(self.ffn(x, H, W))
        x = x + g1 * self.att(self.ln1(x), H, W)
        return x + g2 * self.ffn(self.ln2(x), H, W)


class Backbone(nn.Module):
    """The classification backbone around blocks of a kind: `block(cfg, i)` makes block i (VRWKV6's Block by
    default; tools/ablation_pytorch.py passes the VRWKV block with the ablation's variants)."""

    def __init__(self, cfg, block=None):
        super().__init__()
        block = block or Block
        C, p = cfg["embed_dims"], cfg["patch_size"]
        self.grid = cfg.get("train_grid") or [cfg["img_size"] // p] * 2
        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv2d(3, C, p, p)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], C))
        self.layers = nn.ModuleList(block(cfg, i) for i in range(cfg["depth"]))
        if cfg["final_norm"]:
            self.ln1 = nn.LayerNorm(C)
        self.p, self.out_indices = p, cfg["out_indices"]

    def forward(self, img, keep=None):
        h, w = img.shape[2:]
        img = F.pad(img, (0, -w % self.p, 0, -h % self.p))  # corner padding
        x = self.patch_embed.projection(img)
        B, C, H, W = x.shape
        pos = self.pos_embed
        if [H, W] != list(self.grid):
            pos = F.interpolate(pos.view(1, *self.grid, C).permute(0, 3, 1, 2), size=(H, W), mode="bicubic",
                                align_corners=False).flatten(2).transpose(1, 2)
            if keep is not None:
                keep["pos_embed.resized"] = pos
        x = x.flatten(2).transpose(1, 2) + pos
        if keep is not None:
            keep["embed"] = x
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, H, W)
            if keep is not None:
                keep[f"block.{i}"] = x
            y = self.ln1(x) if i == len(self.layers) - 1 and hasattr(self, "ln1") else x
            if i in self.out_indices:
                outs.append(y.transpose(1, 2).reshape(B, C, H, W))
        return outs


class Classifier(nn.Module):
    def __init__(self, cfg, block=None):
        super().__init__()
        self.backbone = Backbone(cfg, block)
        self.head = nn.Module()
        self.head.fc = nn.Linear(cfg["embed_dims"], cfg["num_classes"])

    def forward(self, img, keep=None):
        feats = self.backbone(img, keep)
        pooled = feats[-1].mean((2, 3))
        if keep is not None:
            keep.update({f"features.{i}": f for i, f in zip(self.backbone.out_indices, feats)})
            keep["features"], keep["pooled"] = feats[-1], pooled
        return self.head.fc(pooled)

    def set_wkv(self, form):
        for layer in self.backbone.layers:
            layer.att.wkv = form


def label_smooth_loss(logits, labels, eps=0.1):
    """mmcls LabelSmoothLoss(0.1, mode='original'), mean over the batch."""
    K = logits.shape[1]
    target = F.one_hot(labels, K).to(logits.dtype) * (1 - eps) + eps / K
    return -(target * F.log_softmax(logits, 1)).sum(1).mean()


def config_from_json(meta):
    bb = meta["backbone"]
    idx = bb["out_indices"]
    idx = [bb["depth"] - 1] if idx == -1 else ([idx] if isinstance(idx, int) else idx)
    return dict(bb, out_indices=idx, num_classes=meta["num_classes"], train_grid=meta.get("train_grid"))


def load_case(path_json, dtype=torch.float64, block=None):
    meta = json.load(open(path_json))
    model = Classifier(config_from_json(meta), block)
    ckpt = os.path.join(os.path.dirname(path_json), meta["checkpoint"])
    model.load_state_dict(torch.load(ckpt, map_location="cpu")["state_dict"], strict=True)
    return meta, model.to(dtype).eval()


def run_case(model, x, labels):
    """Float64 forward keeping every intermediate, loss and d loss / d every parameter."""
    keep = {}
    logits = model(x, keep)
    loss = label_smooth_loss(logits, labels)
    model.zero_grad()
    loss.backward()
    out = {k: v.detach() for k, v in keep.items()}
    out.update(logits=logits.detach(), loss=loss.detach())
    out.update({"grad." + n: p.grad.detach() for n, p in model.named_parameters()})
    return out


class Report:
    """Worst max|got - want| / max(1, max|want|) per kind of tensor, and whether all are within the tolerance."""

    def __init__(self, tolerance=TOLERANCE):
        self.worst, self.ok, self.tolerance = {}, True, tolerance

    def compare(self, what, got, want):
        err = (got.double() - want.double()).abs().max().item() / max(1.0, want.double().abs().max().item())
        self.worst[what] = max(self.worst.get(what, 0.0), err)
        if not err <= self.tolerance:
            self.ok = False
            print(f"  {what}: relative error {err:.3g}", file=sys.stderr)

    def finish(self):
        for k, v in self.worst.items():
            print(f"  {k:55} {v:.2e}")
        return self.ok


def self_check():
    """Both Bi-WKV6 forms on the operator golden, then the model cases: every tensor within TOLERANCE."""
    report = Report()
    compare = report.compare

    op = read_safetensors(os.path.join(GOLDEN, "v6_wkv6_op.safetensors"))
    for T in (1, 2, 7, 64, 200):
        p = f"T{T}."
        ins = [op[p + n].double().requires_grad_() for n in "rkvwu"]
        for form, f in WKV6.items():
            for x in ins:
                x.grad = None
            y = f(*ins)
            (y * op[p + "g"].double()).sum().backward()
            compare(f"wkv6 {form} y", y.detach(), op[p + "y"])
            for n, x in zip("rkvwu", ins):  # no gradient at all: w at T = 1 in the scan form
                compare(f"wkv6 {form} grads", torch.zeros_like(x) if x.grad is None else x.grad, op[p + "grad." + n])
    for case in ("v6_tiny_default", "v6_tiny_postnorm_ls_in37x27"):
        meta, model = load_case(os.path.join(GOLDEN, case + ".json"))
        g = read_safetensors(os.path.join(GOLDEN, case + ".safetensors"))
        for form in WKV6:
            model.set_wkv(form)
            got = run_case(model, g["input"].double(), g["labels"])
            for name, want in g.items():
                if name in ("input", "labels") or name.startswith("att.0."):
                    continue
                compare(f"{case} {form} {name.split('.')[0]}", got[name], want)
    return report.finish()


def make_case(spec_path, out_dir, block=None, model_name="VRWKV6", made_by="tools/v6_pytorch.py --make-case"):
    """A test case from a small description: {name, backbone {...}, num_classes, input [B,3,H,W], seed}:
    random weights (every parameter perturbed, in ranges like the goldens'), random input and labels;
    writes NAME.pth (mmcls layout) and NAME.safetensors (input, labels, outputs, gradients; float64 computed,
    float32 stored) and NAME.json."""
    spec = json.load(open(spec_path))
    g = torch.Generator().manual_seed(spec["seed"])
    cfg = config_from_json(spec)
    model = Classifier(cfg, block).double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            u = torch.rand(p.shape, generator=g, dtype=torch.float64)
            if "time_maa_w" in n[-12:] and n.endswith(("w1", "w2")) or "time_decay_w" in n:
                p.copy_((u - 0.5) * 0.2)  # LoRA matrices: ±0.1
            elif "time_decay" in n:
                p.copy_(u * 5 - 6)  # raw decay −6..−1
            elif "time_maa" in n or "spatial_mix" in n:
                p.copy_(u)
            elif "time_faaaa" in n:
                p.copy_(u - 0.5)
            elif "gamma" in n:
                p.copy_(0.1 + 0.9 * u)
            elif n.endswith(".weight") and p.dim() == 1:  # norms
                p.copy_(0.5 + u)
            elif n.endswith(".bias"):
                p.copy_((u - 0.5) * 0.2)
            else:
                p.copy_((u - 0.5) * 2 * math.sqrt(3.0 / p[0].numel()))  # unit-variance outputs
            p.copy_(p.float().double())  # exactly the stored float32 values
    B, _, H, W = spec["input"]
    x = torch.randn(B, 3, H, W, generator=g, dtype=torch.float64).float().double()
    labels = torch.randint(0, cfg["num_classes"], (B,), generator=g)
    model.eval()
    out = run_case(model, x, labels)
    name = spec["name"]
    sd = {k: v.float() for k, v in model.state_dict().items()}
    torch.save({"meta": {"case": name}, "state_dict": sd}, os.path.join(out_dir, name + ".pth"))
    tensors = {"input": x.float(), "labels": labels}
    tensors.update({k: v.float() for k, v in out.items()})
    write_safetensors(os.path.join(out_dir, name + ".safetensors"), tensors)
    desc = dict(spec, checkpoint=name + ".pth", safetensors=name + ".safetensors", model=model_name,
                made_by=made_by + " (float64, autograd)")
    json.dump(desc, open(os.path.join(out_dir, name + ".json"), "w"), indent=1)
    return out["loss"].item()


def make_op_case(out_path, T, seed):
    """The Bi-WKV6 operator alone at T tokens (B 1, one head): inputs F32, y and gradients of Σ y·g F64."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).float().double()
    r, k, v, gy = (rnd(1, T, 64) for _ in range(4))
    w = (torch.rand(1, T, 64, generator=g, dtype=torch.float64) * 5 - 6).float().double()
    u = rnd(1, 64)
    ins = [x.clone().requires_grad_() for x in (r, k, v, w, u)]
    y = wkv6_masked(*ins)
    (y * gy).sum().backward()
    t = {f"T{T}.{n}": x.float() for n, x in zip("rkvwu", (r, k, v, w, u))}
    t[f"T{T}.g"] = gy.float()
    t[f"T{T}.y"] = y.detach()
    t.update({f"T{T}.grad.{n}": x.grad for n, x in zip("rkvwu", ins)})
    write_safetensors(out_path, t)


def init_official(model):
    """The time_* parameters as the official fancy initialisation sets them (VRWKV6.md A.3): the decays, and
    with them the factored form's exponents, are those of a model about to be trained."""
    L = len(model.backbone.layers)
    with torch.no_grad():
        for i, layer in enumerate(model.backbone.layers):
            a = layer.att
            C = a.time_decay.shape[-1]
            r01, r10 = i / (L - 1), 1 - i / L
            ddd = torch.arange(C, dtype=torch.float64) / C
            n = torch.arange(C, dtype=torch.float64)
            for name in "xwk":
                getattr(a, "time_maa_" + name).copy_(1 - ddd ** r10)
            a.time_maa_v.copy_(1 - (ddd ** r10 + 0.3 * r01))
            a.time_maa_r.copy_(1 - ddd ** (0.5 * r10))
            a.time_maa_g.copy_(1 - ddd ** (0.5 * r10))
            a.time_decay.copy_(-6 + 5 * (n / (C - 1)) ** (0.7 + 1.3 * r01))
            a.time_faaaa.copy_((r01 * (1 - n / (C - 1)) + 0.1 * (((n + 1) % 3) - 1)).view_as(a.time_faaaa))
            for p in (a.time_maa_w1, a.time_maa_w2, a.time_decay_w1, a.time_decay_w2):
                p.uniform_(-1e-4, 1e-4)


def time_model(name, batch, form, warmup, reps, res=224, hw=None):
    """images/s and median ms of the preset `name` (official initialisation, random input) at res² or hw."""
    torch.manual_seed(0)
    model = Classifier(preset(name)).float().eval()
    init_official(model)
    model.set_wkv(form)
    x = torch.randn(batch, 3, *(hw or (res, res)))
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times), 1000 * statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="float64 against the goldens")
    p.add_argument("--time", action="store_true", help="time both Bi-WKV6 forms")
    p.add_argument("--model", default="vrwkv6_t")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--make-case", nargs=2, metavar=("SPEC_JSON", "OUT_DIR"))
    p.add_argument("--make-op-case", nargs=3, metavar=("OUT", "T", "SEED"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.make_case:
        print(f"loss {make_case(*a.make_case):.6f}")
        return
    if a.make_op_case:
        make_op_case(a.make_op_case[0], int(a.make_op_case[1]), int(a.make_op_case[2]))
        return
    if not (a.check or a.time):
        p.error("give --check and/or --time")
    status = 0
    if a.check:
        ok = self_check()
        print(f"self-check {'passed' if ok else 'FAILED'} (tolerance {TOLERANCE:g}, float64)")
        status |= not ok
    if a.time:
        for b in (int(v) for v in a.batch.split(",")):
            for form in WKV6:
                ips, ms = time_model(a.model, b, form, a.warmup, a.reps)
                print(f"{a.model} batch {b} {form}: {ips:.2f} images/s, {ms:.1f} ms", flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
