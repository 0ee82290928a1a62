#!/usr/bin/python3
"""The Vision-RWKV segmentor in plain PyTorch, to time the native engine against.

An importable definition of the official ADE20K segmentor (DENSE.md): an mmseg
0.x EncoderDecoder with the VRWKV_Adapter backbone (VRWKV blocks, spatial prior
module, four interaction blocks with multi-scale deformable attention), UPerHead
as decode head and FCNHead as auxiliary head, in eval mode. Parameter and buffer
names are the official checkpoint keys (backbone.*, decode_head.*,
auxiliary_head.*, BatchNorm statistics included), so an official checkpoint's
state_dict loads with strict=True. The pieces the official code runs as CUDA
operators are written in PyTorch here:
  * Bi-WKV: the closed form of the official kernel (VRWKV.md 2.3), chunked over
    S token chunks (32 in the segmentation code base), with its EPS relative to
    the largest exponent; no loop over tokens (in-chunk sums are products with
    triangular matrices, chunk-to-chunk sums a weighted [S,S] sum per
    channel);
  * MSDeformAttn: the pure-PyTorch form (grid_sample, bilinear, zero padding,
    align_corners=False on 2*loc-1), which is the CUDA operator's arithmetic;
  * SyncBN: BatchNorm2d (the same thing in eval).
It runs in float32 for timing and in float64 for checking.

  tools/seg_pytorch.py --check     # float64 against ../shared/golden/dense
  tools/seg_pytorch.py --time --model upernet_vrwkv_t --res 512 --threads 2

`--check` runs every golden case of the dense golden folder and compares the
four backbone features, the decode and auxiliary logits (of the first crop in
slide cases), the segmentation logits and the named intermediates; each must
agree to max|diff| / max(1, max|golden|) <= 1e-6. tools/compare_pytorch.py
--task seg runs this check, then times whole-mode inference against
`vrwkv bench`.

Presets upernet_vrwkv_t/s/b/l are the official configurations (150 classes,
UPerHead channels 512, FCNHead channels 256) with random weights.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

if __name__ == "__main__":
    # The BLAS reads its settings when torch loads it: compare_pytorch sets them (threads, kernels, spinning)
    # from the same --threads / --blas-threads / --openblas-coretype arguments before importing torch.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import compare_pytorch  # noqa: F401

import torch
import torch.nn as nn
import torch.nn.functional as F

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/golden/dense")

# ---------------------------------------------------------------------------------------------------------
# Configuration

def preset(name, num_classes=150):
    """The official ADE20K configuration (DENSE.md (a), (c)) of upernet_vrwkv_{t,s,b,l}."""
    C, depth, img, init_values, post_norm, key_norm, heads, ratio = {
        "upernet_vrwkv_t": (192, 12, 224, 1.0, False, False, 6, 1.0),
        "upernet_vrwkv_s": (384, 12, 224, 1e-5, True, False, 6, 1.0),
        "upernet_vrwkv_b": (768, 12, 224, 1e-5, True, False, 12, 0.5),
        "upernet_vrwkv_l": (1024, 24, 192, 1e-5, True, True, 16, 0.5),
    }[name]
    q = depth // 4
    return dict(embed_dims=C, depth=depth, img_size=img, patch_size=16, init_values=init_values,
                post_norm=post_norm, key_norm=key_norm, conv_inplane=64, deform_num_heads=heads, n_points=4,
                deform_ratio=ratio, cffn_ratio=0.25,
                interaction_indexes=[[i * q, i * q + q - 1] for i in range(4)],
                channels=512, aux_channels=256, num_classes=num_classes, wkv_chunks=32)


PRESETS = ("upernet_vrwkv_t", "upernet_vrwkv_s", "upernet_vrwkv_b", "upernet_vrwkv_l")


def config_from_case(meta):
    """The Segmentor configuration of a golden case's json (its mmseg config)."""
    bb, dh, ah = meta["config"]["backbone"], meta["config"]["decode_head"], meta["config"]["auxiliary_head"]
    return dict(embed_dims=bb["embed_dims"], depth=bb["depth"], img_size=bb.get("img_size", 224),
                patch_size=bb.get("patch_size", 16), init_values=bb.get("init_values"),
                post_norm=bb.get("post_norm", False), key_norm=bb.get("key_norm", False),
                conv_inplane=bb.get("conv_inplane", 64), deform_num_heads=bb.get("deform_num_heads", 6),
                n_points=bb.get("n_points", 4), deform_ratio=bb.get("deform_ratio", 1.0),
                cffn_ratio=bb.get("cffn_ratio", 0.25), interaction_indexes=bb["interaction_indexes"],
                channels=dh["channels"], aux_channels=ah["channels"], num_classes=dh["num_classes"],
                wkv_chunks=meta.get("wkv_token_split", 32))


# ---------------------------------------------------------------------------------------------------------
# Bi-WKV, official kernel semantics

WKV_EPS = 1e-6
_MASKS = {}


def _masks(L, dtype):
    """[3L, L] stacked 0/1 matrices: rows t of j < t (in-chunk past), 0 < j <= t (the kernel's in-chunk
    correction), j > t (in-chunk future)."""
    key = (L, dtype)
    if key not in _MASKS:
        t, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
        _MASKS[key] = torch.cat([j < t, (j > 0) & (j <= t), j > t]).to(dtype)
    return _MASKS[key]


def bi_wkv_kernel(w, u, k, v, S=32):
    """What the official chunked CUDA kernel computes (VRWKV.md 2.3), vectorised.

    w, u: [C] (spatial_decay/T, spatial_first/T); k, v: [B,T,C]. With L = ceil(T/S), s the start of t's
    chunk and E_j = e^{k_j - max_t k}:
      y_t = sum_j a(t,j) E_j v_j / (sum_j a(t,j) E_j + 1e-6 e^{m_t}),
      a = e^{-(t-j)w} (j < s), e^{-(t-j-1)w} (j = s < t), e^{-(t-j-1)w} + (1-e^w) e^{(t-j)w} (s < j < t),
          e^u + [t > s](1-e^w) (j = t), e^{-(j-t)w} (j > t),
    m_t = the largest exponent among the terms of the kernel's past sum (k_j - (t-j)w for j < s,
    k_j - (t-j-1)w for s <= j < t), of its future sum (k_j - (j-t)w, j > t) and u + k_t, as in the
    goldens (biwkv*.safetensors agree to 1e-15 in float64).
    Numerator and denominator go through the same products ([B,T,2C]). All exponents of the products
    stay within |spatial_decay| (|w| T)."""
    B, T, C = k.shape
    L = -(-T // S)                    # chunk length
    n = -(-T // L)                    # non-empty chunks
    dt = k.dtype
    lk = k - k.amax(1, keepdim=True)
    E = torch.exp(lk)
    X = torch.cat([E * v, E], -1)     # [B,T,2C]
    w2, u2 = torch.cat([w, w]), torch.cat([u, u])
    if n * L != T:
        X = F.pad(X, (0, 0, 0, n * L - T))
    X = X.view(B, n, L, 2 * C)
    tl = torch.arange(L, dtype=dt)[:, None]                     # local index [L,1]
    A1 = X * torch.exp(tl * w2)                                  # e^{jw} X_j
    A2 = X * torch.exp(-tl * w2)                                 # e^{-jw} X_j
    M = _masks(L, dt)
    past = M[:L] @ A1                                            # sum_{s<=j<t} e^{jw} X_j
    corr_fut = M[L:] @ A2                                        # [..., 2L, 2C]
    num = torch.exp(-(tl - 1) * w2) * past                       # e^{-(t-j-1)w}
    num = num + torch.exp(tl * w2) * ((-torch.expm1(w2)) * corr_fut[:, :, :L] + corr_fut[:, :, L:])
    num = num + torch.exp(u2) * X
    # Chunk to chunk: Z_q = sum_j e^{-(L-j)w} X_j (weights from the next chunk's start), Y_q = sum_j e^{-jw} X_j.
    Z, Y = torch.exp(-L * w2) * A1.sum(2), A2.sum(2)            # [B,n,2C]
    p, q = torch.arange(n)[:, None], torch.arange(n)[None, :]
    d = (p - q).to(dt)[:, :, None] * (L * w2)                    # (p-q)Lw [n,n,2C]
    zero = torch.zeros((), dtype=dt)
    Wpast = torch.where((q < p)[:, :, None], torch.exp(L * w2 - d), zero)   # e^{-(p-1-q)Lw}, q < p
    Wfut = torch.where((q > p)[:, :, None], torch.exp(L * w2 + d), zero)    # e^{-(q-p-1)Lw}, q > p
    Qs = (Wpast * Z[:, None]).sum(2)                            # sum over earlier tokens, at the chunk start
    Fs = (Wfut * Y[:, None]).sum(2)                             # sum over later chunks, from the chunk end
    num = num + torch.exp(-tl * w2) * Qs[:, :, None] + torch.exp(-(L - tl) * w2) * Fs[:, :, None]
    num = num.reshape(B, n * L, 2 * C)[:, :T]
    # e^{m_t}, in the log domain: past maxima of k_j + jw (exclusive, within the chunk and over the earlier
    # chunks), future maxima of k_j - jw (exclusive).
    t = torch.arange(T, dtype=dt)[:, None]
    neg = torch.full((B, 1, C), -math.inf, dtype=dt)
    a = lk + t * w
    ac = (F.pad(a, (0, 0, 0, n * L - T), value=-math.inf) if n * L != T else a).view(B, n, L, C)
    negc = neg[:, :, None].expand(B, n, 1, C)
    in_chunk = torch.cat([negc, torch.cummax(ac, 2).values[:, :, :-1]], 2) + w        # (|t-j|-1) weights
    earlier = torch.cat([neg, torch.cummax(ac.amax(2), 1).values[:, :-1]], 1)[:, :, None]
    past_max = torch.maximum(in_chunk, earlier).reshape(B, n * L, C)[:, :T] - t * w
    fut = torch.flip(torch.cummax(torch.flip(lk - t * w, [1]), 1).values, [1])
    fut_max = torch.cat([fut[:, 1:], neg], 1) + t * w
    m = torch.maximum(torch.maximum(past_max, fut_max), lk + u)
    return num[..., :C] / (num[..., C:] + WKV_EPS * torch.exp(m))


# ---------------------------------------------------------------------------------------------------------
# VRWKV blocks (VRWKV.md 1.4-1.7), tokens [B,T,C]

def q_shift(x, H, W):
    """Quarter shift (left, right, above, below neighbours of the four channel groups), zero borders."""
    B, T, C = x.shape
    q = C // 4
    x = x.view(B, H, W, C)
    out = torch.zeros_like(x)
    out[:, :, 1:, 0:q] = x[:, :, :-1, 0:q]
    out[:, :, :-1, q:2 * q] = x[:, :, 1:, q:2 * q]
    out[:, 1:, :, 2 * q:3 * q] = x[:, :-1, :, 2 * q:3 * q]
    out[:, :-1, :, 3 * q:4 * q] = x[:, 1:, :, 3 * q:4 * q]
    out[..., 4 * q:] = x[..., 4 * q:]
    return out.view(B, T, C)


def mix(x, xx, m):
    return torch.addcmul(xx, x - xx, m)  # x*m + xx*(1-m)


class SpatialMix(nn.Module):
    def __init__(self, C, layer_id, depth, key_norm, wkv_chunks):
        super().__init__()
        r01 = layer_id / max(depth - 1, 1)
        r10 = 1 - layer_id / depth
        h = torch.arange(C, dtype=torch.float32)
        ramp = h / C
        # 'fancy' initial values (VRWKV.md 1.9)
        self.spatial_decay = nn.Parameter(-5 + 8 * (h / max(C - 1, 1)) ** (0.7 + 1.3 * r01))
        self.spatial_first = nn.Parameter(math.log(0.3) + 0.5 * (((h + 1) % 3) - 1))
        self.spatial_mix_k = nn.Parameter((ramp ** r10).view(1, 1, C))
        self.spatial_mix_v = nn.Parameter((ramp ** r10 + 0.3 * r01).view(1, 1, C))
        self.spatial_mix_r = nn.Parameter((ramp ** (0.5 * r10)).view(1, 1, C))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.key_norm = nn.LayerNorm(C) if key_norm else None
        self.output = nn.Linear(C, C, bias=False)
        self.wkv_chunks = wkv_chunks

    def forward(self, x, H, W):
        xx = q_shift(x, H, W)
        k = self.key(mix(x, xx, self.spatial_mix_k))
        v = self.value(mix(x, xx, self.spatial_mix_v))
        r = self.receptance(mix(x, xx, self.spatial_mix_r))
        T = x.shape[1]
        y = bi_wkv_kernel(self.spatial_decay / T, self.spatial_first / T, k, v, self.wkv_chunks)
        if self.key_norm is not None:
            y = self.key_norm(y)
        return self.output(torch.sigmoid(r) * y)


class ChannelMix(nn.Module):
    def __init__(self, C, layer_id, depth, key_norm, hidden_rate=4):
        super().__init__()
        ramp = (torch.arange(C, dtype=torch.float32) / C) ** (1 - layer_id / depth)
        self.spatial_mix_k = nn.Parameter(ramp.view(1, 1, C).clone())
        self.spatial_mix_r = nn.Parameter(ramp.view(1, 1, C).clone())
        hid = hidden_rate * C
        self.key = nn.Linear(C, hid, bias=False)
        self.key_norm = nn.LayerNorm(hid) if key_norm else None
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(hid, C, bias=False)

    def forward(self, x, H, W):
        xx = q_shift(x, H, W)
        k = torch.square(torch.relu(self.key(mix(x, xx, self.spatial_mix_k))))
        if self.key_norm is not None:
            k = self.key_norm(k)
        return torch.sigmoid(self.receptance(mix(x, xx, self.spatial_mix_r))) * self.value(k)


class Block(nn.Module):
    def __init__(self, C, layer_id, depth, init_values, post_norm, key_norm, wkv_chunks):
        super().__init__()
        if init_values is not None:
            self.gamma1 = nn.Parameter(torch.full((C,), float(init_values)))
            self.gamma2 = nn.Parameter(torch.full((C,), float(init_values)))
        else:
            self.gamma1 = self.gamma2 = None
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.ln0 = nn.LayerNorm(C) if layer_id == 0 else None
        self.att = SpatialMix(C, layer_id, depth, key_norm, wkv_chunks)
        self.ffn = ChannelMix(C, layer_id, depth, key_norm)
        self.post_norm = post_norm

    def forward(self, x, H, W):
        scale = lambda g, y: y if g is None else g * y
        if self.ln0 is not None:
            x = self.ln0(x)
        if self.post_norm:
            x = x + scale(self.gamma1, self.ln1(self.att(x, H, W)))
            return x + scale(self.gamma2, self.ln2(self.ffn(x, H, W)))
        x = x + scale(self.gamma1, self.att(self.ln1(x), H, W))
        return x + scale(self.gamma2, self.ffn(self.ln2(x), H, W))


# ---------------------------------------------------------------------------------------------------------
# Multi-scale deformable attention (DENSE.md (b))

class MSDeformAttn(nn.Module):
    def __init__(self, d_model, n_levels, n_heads, n_points, ratio):
        super().__init__()
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.value_dim = int(d_model * ratio)
        self.head_dim = self.value_dim // n_heads
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, self.value_dim)
        self.output_proj = nn.Linear(self.value_dim, d_model)
        with torch.no_grad():  # the official initial values (weights 0, a ring of points per head)
            self.sampling_offsets.weight.zero_()
            th = torch.arange(n_heads, dtype=torch.float32) * (2 * math.pi / n_heads)
            grid = torch.stack([th.cos(), th.sin()], -1)
            grid = grid / grid.abs().max(-1, keepdim=True).values
            grid = grid.view(n_heads, 1, 1, 2).repeat(1, n_levels, n_points, 1)
            grid *= torch.arange(1, n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
            self.sampling_offsets.bias.copy_(grid.flatten())
            self.attention_weights.weight.zero_()
            self.attention_weights.bias.zero_()
            for lin in (self.value_proj, self.output_proj):
                nn.init.xavier_uniform_(lin.weight)
                lin.bias.zero_()

    def forward(self, query, ref, value_in, shapes):
        """query [N,Lq,C], ref [N,Lq,1 or L,2] ((x,y) in [0,1]), value_in [N,Len,C], shapes [(H_l,W_l)]."""
        N, Lq, _ = query.shape
        M, L, P, D = self.n_heads, self.n_levels, self.n_points, self.head_dim
        assert sum(h * w for h, w in shapes) == value_in.shape[1]
        value = self.value_proj(value_in)
        off = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        aw = torch.softmax(self.attention_weights(query).view(N, Lq, M, L * P), -1)
        norm = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype)   # (W_l, H_l)
        loc = ref.to(query.dtype)[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
        grid = (2 * loc - 1).transpose(1, 2)                                  # [N,M,Lq,L,P,2]
        sampled, start = [], 0
        for l, (h, w) in enumerate(shapes):
            v = value[:, start:start + h * w].view(N, h, w, M, D).permute(0, 3, 4, 1, 2).reshape(N * M, D, h, w)
            start += h * w
            g = grid[:, :, :, l].reshape(N * M, Lq, P, 2)
            sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
        s = torch.stack(sampled, -2).flatten(-2)                              # [N*M, D, Lq, L*P]
        aw = aw.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
        out = (s * aw).sum(-1).view(N, M * D, Lq).transpose(1, 2)
        return self.output_proj(out)


# ---------------------------------------------------------------------------------------------------------
# Adapter modules (DENSE.md (a))

def bn(c):
    return nn.BatchNorm2d(c)  # SyncBN in eval: running statistics, eps 1e-5


class SpatialPriorModule(nn.Module):
    def __init__(self, inplanes, C):
        super().__init__()
        i = inplanes
        conv = lambda a, b, s: nn.Conv2d(a, b, 3, s, 1, bias=False)
        self.stem = nn.Sequential(conv(3, i, 2), bn(i), nn.ReLU(), conv(i, i, 1), bn(i), nn.ReLU(),
                                  conv(i, i, 1), bn(i), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(conv(i, 2 * i, 2), bn(2 * i), nn.ReLU())
        self.conv3 = nn.Sequential(conv(2 * i, 4 * i, 2), bn(4 * i), nn.ReLU())
        self.conv4 = nn.Sequential(conv(4 * i, 4 * i, 2), bn(4 * i), nn.ReLU())
        self.fc1 = nn.Conv2d(i, C, 1)
        self.fc2 = nn.Conv2d(2 * i, C, 1)
        self.fc3 = nn.Conv2d(4 * i, C, 1)
        self.fc4 = nn.Conv2d(4 * i, C, 1)

    def forward(self, x):
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        tok = lambda t: t.flatten(2).transpose(1, 2)
        return self.fc1(c1), tok(self.fc2(c2)), tok(self.fc3(c3)), tok(self.fc4(c4))


class DWConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, H, W):
        B, N, C = x.shape
        n = N // 21
        parts = []
        for lo, hi, h, w in ((0, 16 * n, 2 * H, 2 * W), (16 * n, 20 * n, H, W), (20 * n, N, H // 2, W // 2)):
            m = x[:, lo:hi].transpose(1, 2).reshape(B, C, h, w)
            parts.append(self.dwconv(m).flatten(2).transpose(1, 2))
        return torch.cat(parts, 1)


class ConvFFN(nn.Module):
    def __init__(self, C, hidden):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, C)

    def forward(self, x, H, W):
        return self.fc2(self.act(self.dwconv(self.fc1(x), H, W)))


def ln6(C):
    return nn.LayerNorm(C, eps=1e-6)


class Injector(nn.Module):
    def __init__(self, C, heads, points, levels, ratio):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(C))  # init_values_inject 0
        self.query_norm, self.feat_norm = ln6(C), ln6(C)
        self.attn = MSDeformAttn(C, levels, heads, points, ratio)

    def forward(self, x, ref, c, shapes):
        return x + self.gamma * self.attn(self.query_norm(x), ref, self.feat_norm(c), shapes)


class Extractor(nn.Module):
    def __init__(self, C, heads, points, ratio, cffn_ratio):
        super().__init__()
        self.query_norm, self.feat_norm = ln6(C), ln6(C)
        self.attn = MSDeformAttn(C, 1, heads, points, ratio)
        self.ffn = ConvFFN(C, int(C * cffn_ratio))
        self.ffn_norm = ln6(C)

    def forward(self, c, ref, x, shapes, H, W):
        c = c + self.attn(self.query_norm(c), ref, self.feat_norm(x), shapes)
        return c + self.ffn(self.ffn_norm(c), H, W)


class InteractionBlock(nn.Module):
    def __init__(self, C, heads, points, ratio, cffn_ratio, extra):
        super().__init__()
        self.injector = Injector(C, heads, points, 3, ratio)
        self.extractor = Extractor(C, heads, points, ratio, cffn_ratio)
        self.extra_extractors = nn.ModuleList(
            Extractor(C, heads, points, ratio, cffn_ratio) for _ in range(2)) if extra else None

    def forward(self, x, c, blocks, d1, d2, H, W):
        x = self.injector(x, d1[0], c, d1[1])
        for blk in blocks:
            x = blk(x, H, W)
        c = self.extractor(c, d2[0], x, d2[1], H, W)
        for e in self.extra_extractors or ():
            c = e(c, d2[0], x, d2[1], H, W)
        return x, c


def reference_points(shapes):
    """Cell centres of each level, (x, y) in [0,1], row-major, in float32 as the official code: [1,sum,1,2]."""
    refs = []
    for h, w in shapes:
        ry, rx = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=torch.float32),
                                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32), indexing="ij")
        refs.append(torch.stack((rx.reshape(-1)[None] / w, ry.reshape(-1)[None] / h), -1))
    return torch.cat(refs, 1)[:, :, None]


def deform_inputs(h, w):
    lv = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
    return (reference_points([lv[1]]), lv), (reference_points(lv), [lv[1]])


class PatchEmbed(nn.Module):
    def __init__(self, C, patch):
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(3, C, patch, patch)

    def forward(self, x):
        p = self.patch
        ph, pw = (-x.shape[2]) % p, (-x.shape[3]) % p  # mmcv AdaptivePadding 'corner': bottom/right
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x = self.projection(x)
        return x.flatten(2).transpose(1, 2), x.shape[2:]


class VRWKVAdapter(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, depth = cfg["embed_dims"], cfg["depth"]
        self.grid = cfg["img_size"] // cfg["patch_size"]
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid * self.grid, C) * 0.02)
        self.level_embed = nn.Parameter(torch.randn(3, C) * 0.02)
        self.patch_embed = PatchEmbed(C, cfg["patch_size"])
        self.layers = nn.ModuleList(
            Block(C, i, depth, cfg["init_values"], cfg["post_norm"], cfg["key_norm"], cfg["wkv_chunks"])
            for i in range(depth))
        self.spm = SpatialPriorModule(cfg["conv_inplane"], C)
        self.interactions = nn.ModuleList(
            InteractionBlock(C, cfg["deform_num_heads"], cfg["n_points"], cfg["deform_ratio"], cfg["cffn_ratio"],
                             extra=(i == len(cfg["interaction_indexes"]) - 1))
            for i in range(len(cfg["interaction_indexes"])))
        self.indexes = [list(ix) for ix in cfg["interaction_indexes"]]
        self.up = nn.ConvTranspose2d(C, C, 2, 2)
        self.norm1, self.norm2, self.norm3, self.norm4 = bn(C), bn(C), bn(C), bn(C)
        # The detection adapter (DENSE.md (f)) adds the last interaction's tokens to all four scales.
        self.final_fusion = cfg.get("final_fusion", False)

    def forward(self, img, trace=None):
        """img [B,3,h,w] (h, w multiples of 32) -> 4 maps at strides 4, 8, 16, 32. trace: a dict that
        receives the intermediates under the golden vectors' names."""
        rec = (lambda k, t: trace.__setitem__(k, t)) if trace is not None else (lambda k, t: None)
        B, _, h, w = img.shape
        d1, d2 = deform_inputs(h, w)
        rec("deform.ref1", d1[0])
        rec("deform.ref2", d2[0])
        c1, c2, c3, c4 = self.spm(img)
        for i, t in enumerate((c1, c2, c3, c4)):
            rec(f"backbone.spm.c{i + 1}", t)
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], 1)
        x, (H, W) = self.patch_embed(img)
        rec("backbone.patch_embed", x)
        C = x.shape[2]
        pos = self.pos_embed
        if (H, W) != (self.grid, self.grid):
            pos = pos.view(1, self.grid, self.grid, C).permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=(H, W), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
        x = x + pos
        outs = []
        for i, (blk, ix) in enumerate(zip(self.interactions, self.indexes)):
            x, c = blk(x, c, self.layers[ix[0]:ix[-1] + 1], d1, d2, H, W)
            rec(f"backbone.interactions.{i}.x", x)
            rec(f"backbone.interactions.{i}.c", c)
            outs.append(x.transpose(1, 2).reshape(B, C, H, W))
        n2, n3 = c2.shape[1], c3.shape[1]
        c2 = c[:, :n2].transpose(1, 2).reshape(B, C, 2 * H, 2 * W)
        c3 = c[:, n2:n2 + n3].transpose(1, 2).reshape(B, C, H, W)
        c4 = c[:, n2 + n3:].transpose(1, 2).reshape(B, C, H // 2, W // 2)
        up = self.up(c2)
        rec("backbone.up", up)
        c1 = up + c1
        if self.final_fusion:
            outs = [outs[-1]] * 4
        bil = lambda t, s: F.interpolate(t, scale_factor=s, mode="bilinear", align_corners=False)
        ins = (c1 + bil(outs[0], 4), c2 + bil(outs[1], 2), c3 + outs[2], c4 + bil(outs[3], 0.5))
        feats = []
        for j, (t, norm) in enumerate(zip(ins, (self.norm1, self.norm2, self.norm3, self.norm4))):
            rec(f"backbone.norm{j + 1}.in", t)
            feats.append(norm(t))
        return feats


# ---------------------------------------------------------------------------------------------------------
# Heads (mmseg UPerHead, FCNHead; DENSE.md (c))

class ConvModule(nn.Module):
    """mmcv ConvModule: Conv2d without bias -> BN -> ReLU."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, k // 2, bias=False)
        self.bn = bn(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def resize(x, size):
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    def __init__(self, C, channels, num_classes, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.psp_modules = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(C, channels, 1))
                                         for s in pool_scales)
        self.bottleneck = ConvModule(C + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(C, channels, 1) for _ in range(3))
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in range(3))
        self.fpn_bottleneck = ConvModule(4 * channels, channels, 3)

    def forward(self, feats):
        f4 = feats[3]
        psp = [f4] + [resize(m(f4), f4.shape[2:]) for m in self.psp_modules]
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats[:3])] + [self.bottleneck(torch.cat(psp, 1))]
        for i in range(3, 0, -1):
            lat[i - 1] = lat[i - 1] + resize(lat[i], lat[i - 1].shape[2:])
        outs = [conv(t) for conv, t in zip(self.fpn_convs, lat[:3])] + [lat[3]]
        outs = [outs[0]] + [resize(t, outs[0].shape[2:]) for t in outs[1:]]
        return self.conv_seg(self.fpn_bottleneck(torch.cat(outs, 1)))  # Dropout2d: identity in eval


class FCNHead(nn.Module):
    def __init__(self, C, channels, num_classes):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.convs = nn.Sequential(ConvModule(C, channels, 3))

    def forward(self, feats):
        return self.conv_seg(self.convs(feats[2]))  # in_index 2


class Segmentor(nn.Module):
    """mmseg EncoderDecoder(VRWKV_Adapter, UPerHead, auxiliary FCNHead), eval mode."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        C = cfg["embed_dims"]
        self.backbone = VRWKVAdapter(cfg)
        self.decode_head = UPerHead(C, cfg["channels"], cfg["num_classes"])
        self.auxiliary_head = FCNHead(C, cfg["aux_channels"], cfg["num_classes"])
        self.eval()

    def forward(self, img, trace=None):
        feats = self.backbone(img, trace)
        return {"features": feats, "decode": self.decode_head(feats), "aux": self.auxiliary_head(feats)}

    def encode_decode(self, img):
        """Backbone and decode head, logits resized to the input size (the auxiliary head is training-only)."""
        return resize(self.decode_head(self.backbone(img)), img.shape[2:])

    def inference_whole(self, img, ori_shape=None):
        out = self.encode_decode(img)
        return out if ori_shape is None or tuple(ori_shape) == tuple(img.shape[2:]) else resize(out, ori_shape)

    @staticmethod
    def slide_boxes(h, w, crop, stride):
        boxes = []
        hg = max(h - crop[0] + stride[0] - 1, 0) // stride[0] + 1
        wg = max(w - crop[1] + stride[1] - 1, 0) // stride[1] + 1
        for i in range(hg):
            for j in range(wg):
                y2, x2 = min(i * stride[0] + crop[0], h), min(j * stride[1] + crop[1], w)
                boxes.append((max(y2 - crop[0], 0), y2, max(x2 - crop[1], 0), x2))
        return boxes

    def inference_slide(self, img, crop, stride, ori_shape=None):
        B, _, h, w = img.shape
        preds = img.new_zeros((B, self.cfg["num_classes"], h, w))
        count = img.new_zeros((B, 1, h, w))
        for y1, y2, x1, x2 in self.slide_boxes(h, w, crop, stride):
            preds[:, :, y1:y2, x1:x2] += self.encode_decode(img[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
        preds = preds / count
        return preds if ori_shape is None or tuple(ori_shape) == (h, w) else resize(preds, ori_shape)


# ---------------------------------------------------------------------------------------------------------
# FLOPs: 2 x multiply-adds of every convolution and linear

class FlopCounter:
    """Context manager counting 2 x multiply-adds of Conv2d, ConvTranspose2d and Linear calls in a model,
    per top-level child (backbone, decode_head, ...)."""

    def __init__(self, model):
        self.model, self.flops, self.handles = model, {}, []

    def __enter__(self):
        for top, child in self.model.named_children():
            for m in child.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                    self.handles.append(m.register_forward_hook(lambda m, i, o, top=top: self._add(top, m, i, o)))
        return self

    def _add(self, top, m, inp, out):
        if isinstance(m, nn.Linear):
            macs = out.numel() * m.in_features
        elif isinstance(m, nn.ConvTranspose2d):
            macs = inp[0].numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)
        else:
            macs = out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        self.flops[top] = self.flops.get(top, 0) + 2 * macs

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    @property
    def total(self):
        return sum(self.flops.values())


# ---------------------------------------------------------------------------------------------------------
# Timing

def time_whole(model, h, w, warmup, reps):
    """Median ms of whole-mode inference (batch 1, the model's dtype), with the backbone's and the decode
    head's (incl. the final resize) medians and the FLOPs of one inference."""
    x = torch.randn(1, 3, h, w, dtype=next(model.parameters()).dtype)
    parts = []
    counter = FlopCounter(model)
    with torch.inference_mode():
        for r in range(warmup + reps):
            if r == 0:
                counter.__enter__()
            t0 = time.perf_counter()
            feats = model.backbone(x)
            t1 = time.perf_counter()
            resize(model.decode_head(feats), (h, w))
            t2 = time.perf_counter()
            if r == 0:
                counter.__exit__()
            if r >= warmup:
                parts.append((t2 - t0, t1 - t0, t2 - t1))
    med = [1000 * statistics.median(p[i] for p in parts) for i in range(3)]
    return dict(ms=med[0], backbone_ms=med[1], head_ms=med[2], flops=counter.total,
                backbone_flops=counter.flops.get("backbone", 0), head_flops=counter.flops.get("decode_head", 0))


# ---------------------------------------------------------------------------------------------------------
# Golden check

def read_safetensors(path):
    """All tensors of a safetensors file (the safetensors package when installed, else the format by hand:
    8-byte little-endian header length, JSON header, raw little-endian data)."""
    try:
        from safetensors.torch import load_file
        return load_file(path)
    except ImportError:
        pass
    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header, base, out = json.loads(data[8:8 + n]), 8 + n, {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        lo, hi = h["data_offsets"]
        buf = bytearray(data[base + lo:base + hi])
        t = torch.frombuffer(buf, dtype=dtypes[h["dtype"]]) if buf else torch.empty(0, dtype=dtypes[h["dtype"]])
        out[name] = t.reshape(h["shape"])
    return out


def load_checkpoint(path):
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # older torch, or objects beyond tensors in meta
        ck = torch.load(path, map_location="cpu", weights_only=False)
    return ck["state_dict"] if "state_dict" in ck else ck


REQUIRED = ("features.0", "features.1", "features.2", "features.3", "decode.logits", "aux.logits")
TOLERANCE = 1e-6


def rel_err(got, want):
    return (got.double() - want.double()).abs().max().item() / max(1.0, want.double().abs().max().item())


def check_case(path_json, verbose=False):
    """Runs one golden case in float64; returns {tensor: relative error} (required tensors, seg.logits and
    every intermediate the golden file stores for the checked crop)."""
    meta = json.load(open(path_json))
    base = path_json[:-len(".json")]
    cfg = config_from_case(meta)
    model = Segmentor(cfg)
    model.load_state_dict(load_checkpoint(base + ".pth"), strict=True)
    model.double().eval()
    gold = read_safetensors(base + ".safetensors")
    img = gold["input"].double()
    slide = meta["test_cfg"]["mode"] == "slide"
    prefix, crop = "", img
    if slide:
        boxes = meta["slide_boxes_y1y2x1x2"]
        y1, y2, x1, x2 = boxes[0]
        crop, prefix = img[:, :, y1:y2, x1:x2], "crop.0."
        tc = meta["test_cfg"]
        mine = Segmentor.slide_boxes(img.shape[2], img.shape[3], tc["crop_size"], tc["stride"])
        assert [list(b) for b in mine] == [list(b) for b in boxes], (mine, boxes)
    trace, errs = {}, {}
    with torch.inference_mode():
        out = model(crop, trace)
        got = {f"features.{i}": f for i, f in enumerate(out["features"])}
        got.update({"decode.logits": out["decode"], "aux.logits": out["aux"]})
        got.update(trace)
        for name in list(REQUIRED) + sorted(set(got) - set(REQUIRED)):
            if prefix + name in gold:
                errs[name] = rel_err(got[name], gold[prefix + name])
        if "seg.logits" in gold:
            ori = meta.get("ori_shape")
            seg = (model.inference_slide(img, meta["test_cfg"]["crop_size"], meta["test_cfg"]["stride"], ori)
                   if slide else model.inference_whole(img, ori))
            errs["seg.logits"] = rel_err(seg, gold["seg.logits"])
    missing = [n for n in REQUIRED if n not in errs]
    if missing:
        raise RuntimeError(f"{os.path.basename(base)}: golden tensors {missing} not found")
    return errs


def self_check(golden_dir=GOLDEN_DIR, verbose=True, out=sys.stdout):
    """Every dense golden case in float64. Returns (ok, {case: worst error over the required tensors}).
    Prints each case's errors."""
    cases = sorted(f for f in os.listdir(golden_dir) if f.endswith(".json")) if os.path.isdir(golden_dir) else []
    cases = [c for c in cases if os.path.exists(os.path.join(golden_dir, c[:-5] + ".safetensors"))]
    if not cases:
        print(f"seg_pytorch: no golden cases in {golden_dir}: check skipped", file=out)
        return True, {}
    ok, summary = True, {}
    for c in cases:
        errs = check_case(os.path.join(golden_dir, c))
        bad = [n for n, e in errs.items() if not e <= TOLERANCE]
        ok &= not bad
        summary[c[:-5]] = max(errs[n] for n in REQUIRED)
        if verbose:
            print(f"{c[:-5]}: " + ("ok" if not bad else "FAILED " + ", ".join(bad)), file=out)
            print("  " + ", ".join(f"{n} {errs[n]:.1e}" for n in REQUIRED), file=out)
            rest = [n for n in errs if n not in REQUIRED]
            if rest:
                print("  also: " + ", ".join(f"{n} {errs[n]:.1e}" for n in rest), file=out)
    return ok, summary


def check_bi_wkv(golden_dir=os.path.join(GOLDEN_DIR, "..")):
    """The Bi-WKV alone against the kernel-semantics goldens (biwkv: S=32, biwkv_kernel16: S=16), float64.
    Returns the worst error relative to max(1, max|y|), or None when the files are missing."""
    worst = None
    for name, S, form in (("biwkv", 32, "kernel"), ("biwkv_kernel16", 16, "kernel16")):
        base = os.path.join(golden_dir, name)
        if not os.path.exists(base + ".safetensors"):
            continue
        meta, t = json.load(open(base + ".json")), read_safetensors(base + ".safetensors")
        for T in meta["Ts"]:
            key = f"T{T}.{form}.y"
            if key not in t:
                continue
            w, u, k, v = (t[f"T{T}.{x}"].double() for x in "wukv")
            err = rel_err(bi_wkv_kernel(w, u, k, v, S), t[key])
            worst = err if worst is None else max(worst, err)
    return worst


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="float64 check against the dense goldens")
    p.add_argument("--golden", default=GOLDEN_DIR, help="the dense golden folder")
    p.add_argument("--time", action="store_true", help="time whole-mode inference (float32, batch 1)")
    p.add_argument("--model", default="upernet_vrwkv_t", help=", ".join(PRESETS))
    p.add_argument("--res", default="512", help="comma-separated square sizes (multiples of 32)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blas-threads", type=int, help="OpenBLAS threads (default: --threads)")
    p.add_argument("--openblas-coretype", help="OpenBLAS kernels (see compare_pytorch.py)")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--reps", type=int, default=1)
    a = p.parse_args()
    if not (a.check or a.time):
        p.error("give --check and/or --time")
    torch.set_num_threads(a.threads)
    status = 0
    if a.check:
        torch.manual_seed(0)
        wkv = check_bi_wkv(os.path.join(a.golden, ".."))
        if wkv is not None:
            print(f"Bi-WKV (kernel S=32, S=16) against biwkv goldens: {wkv:.1e}"
                  f"{'' if wkv <= TOLERANCE else ' FAILED'}")
            status |= not wkv <= TOLERANCE
        ok, _ = self_check(a.golden)
        print(f"self-check {'passed' if ok else 'FAILED'} (tolerance {TOLERANCE:g}, float64)")
        status |= not ok
    if a.time:
        torch.manual_seed(0)
        model = Segmentor(preset(a.model)).float().eval()
        print(f"{a.model}: {count_params(model):,} parameters, float32, {torch.get_num_threads()} threads")
        for r in (int(x) for x in a.res.split(",")):
            t = time_whole(model, r, r, a.warmup, a.reps)
            print(f"{r}x{r}: {t['ms']:.0f} ms (backbone {t['backbone_ms']:.0f}, decode head {t['head_ms']:.0f}), "
                  f"{t['flops'] / 1e9:.1f} GFLOP (backbone {t['backbone_flops'] / 1e9:.1f}, decode head "
                  f"{t['head_flops'] / 1e9:.1f}), {t['flops'] / t['ms'] / 1e6:.1f} GFLOP/s", flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
