#!/usr/bin/python3
"""The VRWKV block with the ablation's variants (ABLATION.md B.3) in plain PyTorch, float64.

An independent definition to check the native engine against and to make test cases the shared goldens do not
cover (other sizes, the RWKV-4 decay): the VRWKV block of VRWKV.md 1.4-1.7 with official key names, plugged into
the classifier of tools/v6_pytorch.py, and
  * shift q (Q-Shift), 1d (out[t] = x[t-1] in raster order, zeros for token 0, every channel) or none (x itself,
    no spatial_mix parameters);
  * wkv_direction bi (the paper Bi-WKV) or uni (the same restricted to j <= t), as the masked T x T form:
    exponents k_j - (|t-j|-1)w (j != t) and u + k_t (j = t), each row rescaled by its largest exponent before
    the 1e-6 is added;
  * wkv_decay vrwkv (w = spatial_decay/T, u = spatial_first/T) or rwkv4 (w = exp(spatial_decay),
    u = spatial_first).

  tools/ablation_pytorch.py --check                     # against ../shared/golden/ablation
  tools/ablation_pytorch.py --make-case SPEC.json OUT   # a test case (weights, input, outputs, gradients)

`--check` compares logits, features, every block output and every parameter gradient of each golden case, and
the uni operator case: max|diff| / max(1, max|golden|) <= 1e-6 in float64.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import v6_pytorch as v6  # noqa: E402
from seg_pytorch import read_safetensors  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/golden/ablation")
TOLERANCE = 1e-6


def q_shift(x, H, W, s=1, gamma=0.25):
    """[B,T,C] -> Q-Shift (VRWKV.md 1.5): groups of int(C*gamma) channels from the left, right, upper and lower
    neighbour at distance s, zeros beyond the border, the rest copied."""
    B, T, C = x.shape
    q = int(C * gamma)
    x4 = x.view(B, H, W, C)
    out = x4.clone()
    out[..., :4 * q] = 0
    out[:, :, s:, 0:q] = x4[:, :, :-s, 0:q]
    out[:, :, :-s, q:2 * q] = x4[:, :, s:, q:2 * q]
    out[:, s:, :, 2 * q:3 * q] = x4[:, :-s, :, 2 * q:3 * q]
    out[:, :-s, :, 3 * q:4 * q] = x4[:, s:, :, 3 * q:4 * q]
    return out.view(B, T, C)


def shift_1d(x, s=1):
    """RWKV's token shift on [B,T,C]: out[t] = x[t-s] for every channel, zeros for t < s."""
    out = torch.zeros_like(x)
    out[:, s:] = x[:, :-s]
    return out


def wkv(w, u, k, v, direction):
    """The paper Bi-WKV (bi) or its causal restriction (uni); w, u: [C], k, v: [B,T,C]."""
    B, T, C = k.shape
    t = torch.arange(T, dtype=k.dtype)
    d = t[:, None] - t[None, :]  # t - j
    dist = (d.abs() - 1).clamp(min=0)[:, :, None]  # |t-j| - 1 off the diagonal
    e = k[:, None, :, :] - dist * w  # [B, t, j, C]
    diag = torch.eye(T, dtype=torch.bool)[None, :, :, None]
    e = torch.where(diag, (u + k)[:, :, None, :].expand(B, T, T, C), e)
    if direction == "uni":
        e = e.masked_fill((d < 0)[None, :, :, None], float("-inf"))
    m = e.amax(2, keepdim=True)
    a = torch.exp(e - m)
    return (a * v[:, None, :, :]).sum(2) / (a.sum(2) + 1e-6)


def operands(att, T, decay):
    if decay == "rwkv4":
        return torch.exp(att.spatial_decay), att.spatial_first
    return att.spatial_decay / T, att.spatial_first / T


class Shift(nn.Module):
    """The token shift of both mixers, with its mixing parameters named as the checkpoint names them."""

    def __init__(self, C, names, cfg):
        super().__init__()
        self.kind, self.s, self.gamma, self.names = cfg["variant"]["shift"], cfg["shift_pixel"], cfg["channel_gamma"], names
        if self.kind != "none":
            for n in names:
                setattr(self, "spatial_mix_" + n, nn.Parameter(torch.rand(1, 1, C)))

    def mixes(self, x, H, W):
        if self.kind == "none":
            return [x] * len(self.names)
        xx = q_shift(x, H, W, self.s, self.gamma) if self.kind == "q" else shift_1d(x, self.s)
        return [x * m + xx * (1 - m) for m in (getattr(self, "spatial_mix_" + n) for n in self.names)]


class SpatialMix(Shift):
    def __init__(self, C, cfg):
        super().__init__(C, "kvr", cfg)
        self.spatial_decay = nn.Parameter(torch.randn(C))
        self.spatial_first = nn.Parameter(torch.randn(C))
        self.key, self.value, self.receptance, self.output = (nn.Linear(C, C, bias=False) for _ in range(4))
        self.key_norm = nn.LayerNorm(C) if cfg["key_norm"] else None
        self.direction, self.decay = cfg["variant"]["wkv_direction"], cfg["variant"]["wkv_decay"]

    def forward(self, x, H, W):
        xk, xv, xr = self.mixes(x, H, W)
        k, v, r = self.key(xk), self.value(xv), self.receptance(xr)
        y = wkv(*operands(self, x.shape[1], self.decay), k, v, self.direction)
        if self.key_norm is not None:
            y = self.key_norm(y)
        return self.output(torch.sigmoid(r) * y)


class ChannelMix(Shift):
    def __init__(self, C, hidden, cfg):
        super().__init__(C, "kr", cfg)
        self.key, self.value = nn.Linear(C, hidden, bias=False), nn.Linear(hidden, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.key_norm = nn.LayerNorm(hidden) if cfg["key_norm"] else None

    def forward(self, x, H, W):
        xk, xr = self.mixes(x, H, W)
        k = torch.square(torch.relu(self.key(xk)))
        if self.key_norm is not None:
            k = self.key_norm(k)
        return torch.sigmoid(self.receptance(xr)) * self.value(k)


class Block(v6.Block):
    """The VRWKV block: v6.Block's norms, layer scale and residuals around the VRWKV mixers."""

    def mixers(self, cfg, i):
        C = cfg["embed_dims"]
        return SpatialMix(C, cfg), ChannelMix(C, cfg["hidden_rate"] * C, cfg)


def config(meta):
    return dict(v6.config_from_json(meta), variant=meta["variant"])


def self_check():
    report = v6.Report(TOLERANCE)
    compare = report.compare

    op = read_safetensors(os.path.join(GOLDEN, "ablation_uniwkv_op.safetensors"))
    for T in (1, 2, 7, 50, 196):
        p = f"T{T}."
        ins = [op[p + n].double().requires_grad_() for n in "wukv"]
        y = wkv(*ins, "uni")
        (y * op[p + "g"].double()).sum().backward()
        compare("uni op y", y.detach(), op[p + "y"])
        for n, x in zip("wukv", ins):
            compare("uni op grads", x.grad, op[p + "grad." + n])
    for case in ("ablation_shift_none", "ablation_shift_1d", "ablation_wkv_uni", "ablation_rwkv_orig"):
        path = os.path.join(GOLDEN, case + ".json")
        meta = json.load(open(path))
        model = v6.Classifier(config(meta), Block)
        sd = torch.load(os.path.join(GOLDEN, meta["checkpoint"]), map_location="cpu")["state_dict"]
        model.load_state_dict(sd, strict=True)
        model = model.double().eval()
        g = read_safetensors(os.path.join(GOLDEN, case + ".safetensors"))
        got = v6.run_case(model, g["input"].double(), g["labels"])
        for name, want in g.items():
            if name not in ("input", "labels"):
                compare(f"{case} {name.split('.')[0]}", got[name], want)
    return report.finish()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="float64 against the goldens")
    p.add_argument("--make-case", nargs=2, metavar=("SPEC_JSON", "OUT_DIR"),
                   help="SPEC: {name, backbone, num_classes, input, seed, variant, wkv_impl}")
    a = p.parse_args()
    torch.set_num_threads(2)
    if a.check:
        ok = self_check()
        print("ablation check:", "ok" if ok else "FAILED")
        sys.exit(0 if ok else 1)
    if a.make_case:
        spec = json.load(open(a.make_case[0]))
        block = lambda cfg, i: Block(dict(cfg, variant=spec["variant"]), i)  # noqa: E731
        loss = v6.make_case(a.make_case[0], a.make_case[1], block, "VRWKV ablation variant",
                            "tools/ablation_pytorch.py --make-case")
        print(f"{spec['name']}: loss {loss:.6f}")
        return
    p.print_help()


if __name__ == "__main__":
    main()
