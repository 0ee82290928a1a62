#!/usr/bin/python3
"""Times VRWKV with PyTorch on this machine and prints vrwkv/PyTorch ratios.

Runs `vrwkv bench` for the given configurations, then the same configurations
in PyTorch (Debian's python3-torch, float32, the same thread count), in one run,
and prints a table. The PyTorch model is this file's own definition of VRWKV
(VRWKV.md 1) with a vectorised O(T) Bi-WKV in the paper's semantics, the fastest
form PyTorch offers on a CPU; weights are random (speed does not depend on them).

  tools/compare_pytorch.py --vrwkv build/vrwkv --model vrwkv_t --batch 1,8 --res 224,1024 --threads 2

With --train both sides time one training step instead: forward, label-smoothed
cross-entropy (0.1), backward, gradient clipping (max norm 5) and AdamW
(torch.optim.AdamW, weight decay 0.05) against `vrwkv bench --train`.

  tools/compare_pytorch.py --train --model vrwkv_t --batch 8 --res 224
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

# PyTorch's best setting measured on this machine (Debian's torch calls the
# system BLAS; with OpenBLAS's pthread build, 2 BLAS threads inside 2 OpenMP
# threads ran VRWKV-T at 1.9 images/s, 1 BLAS thread with the Haswell kernels
# at 5.5). Set before torch loads the library; the environment can override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_CORETYPE", "HASWELL")

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # embed dims, depth, post_norm / layer scale, key_norm
    "vrwkv_t": (192, 12, False, False),
    "vrwkv_s": (384, 12, True, False),
    "vrwkv_b": (768, 12, True, False),
    "vrwkv_l": (1024, 24, True, True),
}


def q_shift(x, H, W):
    B, T, C = x.shape
    q = C // 4
    x = x.transpose(1, 2).reshape(B, C, H, W)
    out = torch.zeros_like(x)
    out[:, 0:q, :, 1:] = x[:, 0:q, :, :-1]
    out[:, q:2 * q, :, :-1] = x[:, q:2 * q, :, 1:]
    out[:, 2 * q:3 * q, 1:, :] = x[:, 2 * q:3 * q, :-1, :]
    out[:, 3 * q:4 * q, :-1, :] = x[:, 3 * q:4 * q, 1:, :]
    out[:, 4 * q:] = x[:, 4 * q:]
    return out.flatten(2).transpose(1, 2)


def bi_wkv(w, u, k, v):
    """Paper Bi-WKV in O(T) with cumulative sums; w, u: [C], k, v: [B,T,C]."""
    B, T, C = k.shape
    idx = torch.arange(T, dtype=k.dtype).unsqueeze(1)  # [T,1]
    E = torch.exp(k - k.amax(dim=1, keepdim=True))
    up, down = torch.exp(idx * w), torch.exp(-idx * w)  # e^{iw}, e^{-iw}: |iw| <= |spatial_decay|
    past_n = torch.cumsum(up * E * v, 1) - up * E * v
    past_d = torch.cumsum(up * E, 1) - up * E
    fut_n = torch.flip(torch.cumsum(torch.flip(down * E * v, [1]), 1), [1]) - down * E * v
    fut_d = torch.flip(torch.cumsum(torch.flip(down * E, [1]), 1), [1]) - down * E
    a = torch.exp(-(idx - 1) * w)  # past weight e^{-(t-1)w}
    b = torch.exp((idx + 1) * w)   # future weight e^{(t+1)w}
    eu = torch.exp(u)
    return (a * past_n + b * fut_n + eu * E * v) / (a * past_d + b * fut_d + eu * E + 1e-6)


class SpatialMix(nn.Module):
    def __init__(self, C, key_norm):
        super().__init__()
        self.spatial_decay = nn.Parameter(torch.randn(C))
        self.spatial_first = nn.Parameter(torch.randn(C))
        self.mix = nn.Parameter(torch.rand(3, C))
        self.key, self.value, self.receptance, self.output = (nn.Linear(C, C, bias=False) for _ in range(4))
        self.key_norm = nn.LayerNorm(C) if key_norm else None

    def forward(self, x, H, W):
        xx = q_shift(x, H, W)
        xk, xv, xr = (x * m + xx * (1 - m) for m in self.mix)
        k, v, r = self.key(xk), self.value(xv), self.receptance(xr)
        T = x.shape[1]
        y = bi_wkv(self.spatial_decay / T, self.spatial_first / T, k, v)
        if self.key_norm is not None:
            y = self.key_norm(y)
        return self.output(torch.sigmoid(r) * y)


class ChannelMix(nn.Module):
    def __init__(self, C, key_norm):
        super().__init__()
        self.mix = nn.Parameter(torch.rand(2, C))
        self.key, self.value = nn.Linear(C, 4 * C, bias=False), nn.Linear(4 * C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.key_norm = nn.LayerNorm(4 * C) if key_norm else None

    def forward(self, x, H, W):
        xx = q_shift(x, H, W)
        xk, xr = (x * m + xx * (1 - m) for m in self.mix)
        k = torch.square(torch.relu(self.key(xk)))
        if self.key_norm is not None:
            k = self.key_norm(k)
        return torch.sigmoid(self.receptance(xr)) * self.value(k)


class Block(nn.Module):
    def __init__(self, C, i, post_norm, key_norm):
        super().__init__()
        self.ln0 = nn.LayerNorm(C) if i == 0 else None
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att, self.ffn = SpatialMix(C, key_norm), ChannelMix(C, key_norm)
        self.post_norm = post_norm
        self.gamma1 = nn.Parameter(torch.ones(C)) if post_norm else None
        self.gamma2 = nn.Parameter(torch.ones(C)) if post_norm else None

    def forward(self, x, H, W):
        if self.ln0 is not None:
            x = self.ln0(x)
        if self.post_norm:
            x = x + self.gamma1 * self.ln1(self.att(x, H, W))
            return x + self.gamma2 * self.ln2(self.ffn(x, H, W))
        x = x + self.att(self.ln1(x), H, W)
        return x + self.ffn(self.ln2(x), H, W)


class VRWKV(nn.Module):
    def __init__(self, name):
        super().__init__()
        C, depth, post_norm, key_norm = PRESETS[name]
        self.grid = 12 if name == "vrwkv_l" else 14
        self.patch_embed = nn.Conv2d(3, C, 16, 16)
        self.pos_embed = nn.Parameter(torch.zeros(1, C, self.grid, self.grid))
        self.layers = nn.ModuleList(Block(C, i, post_norm, key_norm) for i in range(depth))
        self.ln1 = nn.LayerNorm(C)
        self.head = nn.Linear(C, 1000)

    def forward(self, img):
        x = self.patch_embed(img)
        B, C, H, W = x.shape
        pos = self.pos_embed if (H, W) == (self.grid, self.grid) else F.interpolate(
            self.pos_embed, size=(H, W), mode="bicubic", align_corners=False)
        x = (x + pos).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = layer(x, H, W)
        return self.head(self.ln1(x).mean(1))


class ViT(nn.Module):
    """DeiT-T/S: the baseline of the paper's efficiency figure."""

    def __init__(self, name):
        super().__init__()
        C, heads = {"vit_t": (192, 3), "vit_s": (384, 6)}[name]
        self.heads = heads
        self.patch_embed = nn.Conv2d(3, C, 16, 16)
        self.cls = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, C, 14, 14))
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(n1=nn.LayerNorm(C, eps=1e-6), qkv=nn.Linear(C, 3 * C), proj=nn.Linear(C, C),
                               n2=nn.LayerNorm(C, eps=1e-6), fc1=nn.Linear(C, 4 * C), fc2=nn.Linear(4 * C, C)))
            for _ in range(12))
        self.norm, self.head = nn.LayerNorm(C, eps=1e-6), nn.Linear(C, 1000)

    def forward(self, img):
        x = self.patch_embed(img)
        B, C, H, W = x.shape
        pos = F.interpolate(self.pos_embed, size=(H, W), mode="bicubic", align_corners=False)
        x = torch.cat([self.cls.expand(B, -1, -1), (x + pos).flatten(2).transpose(1, 2)], 1)
        T, d = x.shape[1], C // self.heads
        for b in self.blocks:
            q, k, v = b["qkv"](b["n1"](x)).reshape(B, T, 3, self.heads, d).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v
            x = x + b["proj"](att.transpose(1, 2).reshape(B, T, C))
            x = x + b["fc2"](F.gelu(b["fc1"](b["n2"](x))))
        return self.head(self.norm(x)[:, 0])


def time_pytorch_train(name, batch, h, w, warmup, reps):
    model = VRWKV(name).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x, y = torch.randn(batch, 3, h, w), torch.arange(batch) % 1000

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times), 1000 * statistics.median(times)


def time_pytorch(name, batch, h, w, warmup, reps):
    model = (ViT(name) if name.startswith("vit") else VRWKV(name)).eval()
    x = torch.randn(batch, 3, h, w)
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
    p.add_argument("--vrwkv", default="build/vrwkv", help="the vrwkv program")
    p.add_argument("--model", default="vrwkv_t", help="comma-separated presets (vrwkv_t/s/b/l, vit_t/s)")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--res", default="224")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", help="write vrwkv's and PyTorch's records here")
    p.add_argument("--train", action="store_true", help="time a training step (vrwkv bench --train)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([a.vrwkv, "bench", "--model", a.model, "--batch", a.batch, "--res", a.res, "--threads",
                        str(a.threads), "--warmup", str(a.warmup), "--reps", str(a.reps), "--json", f.name] +
                       (["--train"] if a.train else []),
                       check=True, stdout=sys.stderr)
        records = json.load(open(f.name))
    blas = subprocess.run(["update-alternatives", "--query", "libblas.so.3-x86_64-linux-gnu"], capture_output=True,
                          text=True).stdout
    blas = next((l.split(": ", 1)[1] for l in blas.splitlines() if l.startswith("Value:")), "unknown")
    print(f"{'training step' if a.train else 'inference'}: "
          f"PyTorch {torch.__version__}, {a.threads} threads, float32, BLAS {blas}, "
          f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}\n")
    print(f"{'model':10} {'batch':>5} {'resolution':>11} {'vrwkv img/s':>12} {'PyTorch img/s':>14} {'ratio':>7}")
    for r in records:
        timer = time_pytorch_train if a.train else time_pytorch
        ips, ms = timer(r["model"], r["batch"], r["height"], r["width"], a.warmup, a.reps)
        r["pytorch_images_per_second"], r["pytorch_latency_ms_median"] = ips, ms
        r["ratio"] = r["images_per_second"] / ips
        print(f"{r['model']:10} {r['batch']:5} {r['height']:>5}x{r['width']:<5} {r['images_per_second']:12.2f} "
              f"{ips:14.2f} {r['ratio']:6.2f}x", flush=True)
    if a.json:
        json.dump(records, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
