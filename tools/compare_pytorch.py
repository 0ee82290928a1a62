#!/usr/bin/python3
"""Times VRWKV with PyTorch on this machine and prints vrwkv/PyTorch ratios.

Runs `vrwkv bench` for the given configurations, then the same configurations
in PyTorch (Debian's python3-torch, float32, the same thread count), in one run,
and prints a table. Needs `VRWKV_PYTORCH=1 tools/setup.sh` (python3-torch and
OpenBLAS). Weights are random (speed does not depend on them).

The PyTorch VRWKV is this file's own definition (VRWKV.md 1) with the official
block's operations (q_shift, mixes, bias-free linears, LayerNorms) and a Bi-WKV
in the paper's semantics without any loop over tokens: the past and future sums
are matrix products with triangular matrices (BLAS) up to 256 tokens and
cumulative sums beyond. (The official code has no CPU Bi-WKV: it always calls
its CUDA kernel.) Tokens are kept outermost ([T,B,C]) so that each such sum is
one matrix product for the whole batch. Before timing, the script checks its
Bi-WKV (values and gradients) and VRWKV-T (logits) against the official code's
goldens (../shared/golden, when present), and the BLAS's sgemm against float64.

PyTorch at its best here: Debian's torch calls the system BLAS (libblas.so.3),
which should be OpenBLAS (the reference BLAS is ~15x slower on these models).
OpenBLAS 0.3.21 takes processors it does not know (like this Xeon) for a
Prescott and runs SSE3 kernels; the script then names the kernels of the CPU's
instruction set (SKYLAKEX with AVX-512, HASWELL with AVX2), in place of any
OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE workaround the environment sets. OpenBLAS
gets as many threads as torch and vrwkv, both thread pools spin briefly before
sleeping (GOMP_SPINCOUNT=10000, as vrwkv runs; OPENBLAS_THREAD_TIMEOUT=16) so
that they do not fight over the cores, and malloc keeps freed memory (no page
faults on every new tensor). --blas-threads, --openblas-coretype and the
environment's OMP_WAIT_POLICY/GOMP_SPINCOUNT/OPENBLAS_THREAD_TIMEOUT override
these; the BLAS and the settings used are printed above the table.

  tools/compare_pytorch.py --vrwkv build/vrwkv --model vrwkv_t,vit_t --batch 1,8 --res 224 --threads 2

VRWKV6 presets (vrwkv6_t/s/b) use tools/v6_pytorch.py, checked first against ../shared/golden/v6; both its
Bi-WKV6 forms are timed (the factored masked T×T form: batched matrix products per head; the scan: one Python
step per token) and the faster one is the one compared.

  tools/compare_pytorch.py --model vrwkv6_t,vrwkv_t --batch 1,8 --res 224 --threads 2

With --train both sides time one training step instead: forward, label-smoothed
cross-entropy (0.1), backward, gradient clipping (max norm 5) and AdamW
(torch.optim.AdamW, weight decay 0.05) against `vrwkv bench --train`.

  tools/compare_pytorch.py --train --model vrwkv_t --batch 8 --res 224

With --task seg both sides time whole-mode segmentation inference of one image
(batch 1): the VRWKV-Adapter backbone and the UPerHead decode head, logits
resized to the input size (`vrwkv bench --mode whole`). The PyTorch segmentor
is tools/seg_pytorch.py (the official module tree and checkpoint keys, the
official kernel's Bi-WKV with S = 32 chunks, MSDeformAttn by grid_sample);
before timing, the script runs it in float64 on the dense goldens
(../shared/golden/dense) and stops unless it agrees to 1e-6. The table gives
PyTorch's GFLOP/s (2 x multiply-adds of every convolution and linear) and its
time in the backbone and in the decode head. Resolutions are square, multiples
of 32.

  tools/compare_pytorch.py --task seg --model upernet_vrwkv_t --res 512,1024 --threads 2

With --task det both sides time the Mask R-CNN detector on one 1333x800 image
(padded to 800x1344): backbone, FPN, RPN with NMS, RoI heads with NMS, masks
(`vrwkv bench --model mask_rcnn_vrwkv_t`). The score threshold is 0 on both
sides so that 100 detections reach the mask head, as a trained model's do on
a COCO photo. The PyTorch detector is tools/det_pytorch.py (RoIAlign, NMS and
mask pasting in PyTorch); before timing it is checked in float64 against
../shared/golden/det and det_e2e.

  tools/compare_pytorch.py --task det --model mask_rcnn_vrwkv_t --res 800x1344 --threads 2
"""
import argparse
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(l.split(":", 1)[1].split()) for l in f if l.startswith("flags")), set())
    except OSError:
        return set()


def detected_coretype():
    """The kernels OpenBLAS picks by itself here (without OPENBLAS_CORETYPE), or None when the system BLAS
    is not OpenBLAS."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    probe = ("import ctypes; f = ctypes.CDLL('libblas.so.3').openblas_get_corename; f.restype = ctypes.c_char_p; "
             "print(f().decode())")
    r = subprocess.run([sys.executable, "-c", probe], env=dict(env, OPENBLAS_NUM_THREADS="1"), capture_output=True,
                       text=True)
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def default_coretype():
    """OpenBLAS kernels for this CPU: its own choice unless that is older than the CPU's instruction set
    (OpenBLAS 0.3.21 takes processors it does not know, like this Xeon, for a Prescott: SSE3 kernels), then
    the kernels of that set. None: OpenBLAS's own choice."""
    detected = (detected_coretype() or "").lower()
    flags = cpu_flags()
    avx512 = {"skylakex", "cooperlake", "sapphirerapids"}
    if not detected:
        return None
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags and detected not in avx512:
        return "SKYLAKEX"
    if {"avx2", "fma"} <= flags and detected not in avx512 | {"haswell", "zen"}:
        return "HASWELL"
    return None


# The BLAS reads its settings when torch loads it: set them first.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=2)
_pre.add_argument("--blas-threads", type=int)
_pre.add_argument("--openblas-coretype")
_pre_args, _ = _pre.parse_known_args()
ENV_BEFORE = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
# The environment's OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are a workaround for older OpenBLAS builds on some
# processors; they go as a pair, and check_sgemm() tests the kernels chosen instead.
os.environ.pop("OPENBLAS_L2_SIZE", None)
os.environ.pop("OPENBLAS_CORETYPE", None)
_coretype = _pre_args.openblas_coretype or default_coretype()
if _coretype and _coretype.lower() != "auto":
    os.environ["OPENBLAS_CORETYPE"] = _coretype
os.environ["OPENBLAS_NUM_THREADS"] = str(_pre_args.blas_threads or _pre_args.threads)  # as many as torch's
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"  # torch's OpenMP threads: the short spin vrwkv runs with
# OpenBLAS's threads: spin 2^16 cycles (~20 us, like the OpenMP ones) after a call, not 2^28 (~0.1 s), so
# that they leave the cores to torch's threads between matrix products.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")


def keep_freed_memory():
    """glibc malloc keeps freed blocks up to 32 MiB instead of returning them to the system, so that a new
    tensor is not a fresh mapping with a page fault per 4 KiB (PyTorch's tuning guides use jemalloc or
    tcmalloc for the same; measured here: VRWKV-T batch 8 1.5x faster)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        if libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30):
            return "glibc malloc mmap threshold 32 MiB, trim threshold 1 GiB"
    except OSError:
        pass
    return "default malloc"


MALLOC = keep_freed_memory()

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
    """Quarter shift of tokens in [T,B,C] layout (t = row * W + column), zeros where a shift leaves the grid."""
    T, B, C = x.shape
    q = C // 4
    x = x.view(H, W, B, C)
    out = torch.zeros_like(x)
    out[:, 1:, :, 0:q] = x[:, :-1, :, 0:q]                    # from the left
    out[:, :-1, :, q:2 * q] = x[:, 1:, :, q:2 * q]            # from the right
    out[1:, :, :, 2 * q:3 * q] = x[:-1, :, :, 2 * q:3 * q]    # from above
    out[:-1, :, :, 3 * q:4 * q] = x[1:, :, :, 3 * q:4 * q]    # from below
    out[:, :, :, 4 * q:] = x[:, :, :, 4 * q:]
    return out.view(T, B, C)


_TRI = {}
GEMM_TOKENS = 256


def tri(n, upper, dtype):
    """[n,n] strictly lower (upper) triangular matrix of ones."""
    key = (n, upper, dtype)
    if key not in _TRI:
        ones = torch.ones(n, n, dtype=dtype)
        _TRI[key] = torch.triu(ones, 1) if upper else torch.tril(ones, -1)
    return _TRI[key]


def exclusive_sum(X, upper):
    """sum_{j<t} X_j (upper: sum_{j>t} X_j) along dim 0 of X [T,...]: up to GEMM_TOKENS tokens as one matrix
    product with a triangular matrix (BLAS; torch's cumsum takes about twice as long there), beyond by cumsum."""
    T = X.shape[0]
    if T <= GEMM_TOKENS:
        return (tri(T, upper, X.dtype) @ X.reshape(T, -1)).view(X.shape)
    if upper:
        X = torch.flip(X, [0])
    out = torch.cumsum(X, 0) - X
    return torch.flip(out, [0]) if upper else out


def bi_wkv(w, u, k, v):
    """Paper Bi-WKV in O(T) memory, no loop over tokens; w, u: [C], k, v: [T,B,C].

    y_t = (a_t P_t + b_t F_t + e^u E_t v_t) / (the same with v = 1, + 1e-6), E = e^{k - max_t k},
    P_t = sum_{j<t} e^{jw} E_j v_j, F_t = sum_{j>t} e^{-jw} E_j v_j, a_t = e^{-(t-1)w}, b_t = e^{(t+1)w}
    (so a_t e^{jw} = e^{-(t-j-1)w}; |jw| <= |spatial_decay|)."""
    T, B, C = k.shape
    idx = torch.arange(T, dtype=k.dtype).unsqueeze(1)  # [T,1]
    E = torch.exp(k - k.amax(dim=0, keepdim=True))

    def weighted(X):  # e^u X_t + a_t sum_{j<t} e^{jw} X_j + b_t sum_{j>t} e^{-jw} X_j, X: [T,...,C]
        wt = lambda e: torch.exp(e).view((T,) + (1,) * (X.dim() - 2) + (C,))
        past, fut = exclusive_sum(X * wt(idx * w), upper=False), exclusive_sum(X * wt(-idx * w), upper=True)
        return torch.addcmul(torch.addcmul(torch.exp(u) * X, wt(-(idx - 1) * w), past), wt((idx + 1) * w), fut)

    if T <= GEMM_TOKENS:  # numerator and denominator in the same matrix products
        Y = weighted(torch.stack((E * v, E), 2))
        return Y[:, :, 0] / (Y[:, :, 1] + 1e-6)
    return weighted(E * v) / (weighted(E) + 1e-6)


def mix(x, xx, m):
    """x * m + xx * (1 - m) for each row of m ([n,C]), as one [n,T,B,C] tensor."""
    return torch.addcmul(xx, x - xx, m[:, None, None, :])


class SpatialMix(nn.Module):
    def __init__(self, C, key_norm):
        super().__init__()
        self.spatial_decay = nn.Parameter(torch.randn(C))
        self.spatial_first = nn.Parameter(torch.randn(C))
        self.mix = nn.Parameter(torch.rand(3, C))
        self.key, self.value, self.receptance, self.output = (nn.Linear(C, C, bias=False) for _ in range(4))
        self.key_norm = nn.LayerNorm(C) if key_norm else None

    def forward(self, x, H, W):
        xk, xv, xr = mix(x, q_shift(x, H, W), self.mix)
        k, v, r = self.key(xk), self.value(xv), self.receptance(xr)
        T = x.shape[0]
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
        xk, xr = mix(x, q_shift(x, H, W), self.mix)
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
        x = (x + pos).flatten(2).permute(2, 0, 1).contiguous()  # [T,B,C]: tokens outermost
        for layer in self.layers:
            x = layer(x, H, W)
        return self.head(self.ln1(x).mean(0))

    def load_official(self, sd):
        """Loads an official (mmcls) VRWKV state dict: backbone.* and head.fc.*."""
        g = lambda k: sd[k].float()
        with torch.no_grad():
            self.patch_embed.weight.copy_(g("backbone.patch_embed.projection.weight"))
            self.patch_embed.bias.copy_(g("backbone.patch_embed.projection.bias"))
            C = self.pos_embed.shape[1]
            self.pos_embed.copy_(g("backbone.pos_embed").reshape(1, self.grid, self.grid, C).permute(0, 3, 1, 2))
            for i, blk in enumerate(self.layers):
                p = f"backbone.layers.{i}."
                for name, m in [("ln0", blk.ln0), ("ln1", blk.ln1), ("ln2", blk.ln2),
                                ("att.key_norm", blk.att.key_norm), ("ffn.key_norm", blk.ffn.key_norm)]:
                    if m is not None:
                        m.weight.copy_(g(p + name + ".weight"))
                        m.bias.copy_(g(p + name + ".bias"))
                a, f = blk.att, blk.ffn
                a.spatial_decay.copy_(g(p + "att.spatial_decay"))
                a.spatial_first.copy_(g(p + "att.spatial_first"))
                a.mix.copy_(torch.stack([g(p + f"att.spatial_mix_{c}").flatten() for c in "kvr"]))
                f.mix.copy_(torch.stack([g(p + f"ffn.spatial_mix_{c}").flatten() for c in "kr"]))
                for name in ("att.key", "att.value", "att.receptance", "att.output", "ffn.key", "ffn.value",
                             "ffn.receptance"):
                    blk.get_submodule(name).weight.copy_(g(p + name + ".weight"))
                if blk.post_norm:
                    blk.gamma1.copy_(g(p + "gamma1") if p + "gamma1" in sd else torch.ones_like(blk.gamma1))
                    blk.gamma2.copy_(g(p + "gamma2") if p + "gamma2" in sd else torch.ones_like(blk.gamma2))
            self.ln1.weight.copy_(g("backbone.ln1.weight"))
            self.ln1.bias.copy_(g("backbone.ln1.bias"))
            self.head.weight.copy_(g("head.fc.weight"))
            self.head.bias.copy_(g("head.fc.bias"))


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


def read_safetensors(path, names):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header, base, out = json.loads(f.read(n)), 8 + n, {}
        for name in names:
            h = header[name]
            lo, hi = h["data_offsets"]
            f.seek(base + lo)
            dtype = {"F32": torch.float32, "F64": torch.float64}[h["dtype"]]
            out[name] = torch.frombuffer(bytearray(f.read(hi - lo)), dtype=dtype).reshape(h["shape"]).float()
    return out


def check_golden(golden_dir):
    """The script's Bi-WKV (values and gradients) and VRWKV-T (logits) against the official code's float64
    goldens (biwkv, biwkv_kernel16 paper forms, vrwkv_t_224_b2) with their tolerances."""
    case = os.path.join(golden_dir, "vrwkv_t_224_b2")
    if not os.path.exists(case + ".pth"):
        return f"skipped ({case}.pth not found)"
    worst = {}

    def compare(what, got, want, tol):
        err = (got - want).abs().max().item() / max(1.0, want.abs().max().item())
        worst[what] = max(worst.get(what, 0.0), err)
        if not err <= tol:
            sys.exit(f"compare_pytorch: the PyTorch model is not the golden one ({what}: relative error {err:.3g})")

    for name, form in (("biwkv", ""), ("biwkv_kernel16", "paper.")):
        meta = json.load(open(os.path.join(golden_dir, name + ".json")))
        for T in (t for t in meta["Ts"] if not form or form[:-1] in meta["forms"][str(t)]):
            keys = [f"T{T}.{x}" for x in "wukvg"] + [f"T{T}.{form}{x}" for x in ("y", "grad.w", "grad.u", "grad.k",
                                                                                 "grad.v")]
            t = read_safetensors(os.path.join(golden_dir, name + ".safetensors"), keys)
            w, u, k, v, g, y, *grads = (t[key] for key in keys)
            inputs = [w.clone().requires_grad_(), u.clone().requires_grad_(),
                      k.transpose(0, 1).contiguous().requires_grad_(), v.transpose(0, 1).contiguous().requires_grad_()]
            out = bi_wkv(*inputs)
            (out * g.transpose(0, 1)).sum().backward()
            compare("Bi-WKV", out.detach().transpose(0, 1), y, 2e-5)
            for x, want in zip(inputs, grads):
                got = x.grad if x.dim() == 1 else x.grad.transpose(0, 1)
                compare("Bi-WKV gradients", got, want, 5e-5)
    model = VRWKV("vrwkv_t").eval()
    model.load_official(torch.load(case + ".pth", map_location="cpu")["state_dict"])
    t = read_safetensors(case + ".safetensors", ["input", "logits"])
    with torch.inference_mode():
        compare("VRWKV-T logits", model(t["input"]), t["logits"], 2e-5)
    return "matches the official code's goldens (relative errors: " + ", ".join(
        f"{k} {v:.1e}" for k, v in worst.items()) + ")"


def check_sgemm():
    """The BLAS's sgemm against float64 on shapes of the models (a wrong kernel fails here)."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for m, k, n in [(196, 192, 768), (1568, 768, 192), (197, 576, 192), (1000, 3, 777), (33, 1025, 65)]:
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        err = ((a @ b).double() - a.double() @ b.double()).abs().max().item() / math.sqrt(k)
        worst = max(worst, err)
    if not worst < 1e-5:
        sys.exit(f"compare_pytorch: sgemm is wrong with OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')} "
                 f"(error {worst:.3g}); choose other kernels with --openblas-coretype")
    return worst


def blas_info():
    """Which BLAS torch loaded (its mapped libraries) and, for OpenBLAS, its kernels and threads."""
    with open("/proc/self/maps") as f:
        libs = sorted({l.split()[-1] for l in f if "blas" in l.split()[-1]})
    desc = ", ".join(os.path.realpath(l) for l in libs) or "none mapped"
    ob = next((l for l in libs if "openblas" in l), None)
    if ob:
        lib = ctypes.CDLL(ob)
        lib.openblas_get_corename.restype = lib.openblas_get_config.restype = ctypes.c_char_p
        desc = (f"{lib.openblas_get_config().decode()} ({desc}), kernels {lib.openblas_get_corename().decode()}, "
                f"{lib.openblas_get_num_threads()} threads")
    return desc, bool(ob)


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
    if name.startswith("vrwkv6"):  # the faster of the Bi-WKV6 forms, each timed (tools/v6_pytorch.py)
        import v6_pytorch
        best = None
        for form in ("factored", "scan"):
            ips, ms = v6_pytorch.time_model(name, batch, form, warmup, reps, res=h if h == w else None, hw=(h, w))
            print(f"  PyTorch {name} batch {batch}: Bi-WKV6 {form} form {ips:.2f} images/s", file=sys.stderr)
            if best is None or ips > best[0]:
                best = (ips, ms, form)
        return best
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
    return batch / statistics.median(times), 1000 * statistics.median(times), None


def settings_text():
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                     "OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                   if k in os.environ) + ", " + MALLOC
    before = " ".join(f"{k}={v}" for k, v in ENV_BEFORE.items() if v is not None)
    return env, before


def run_vrwkv_bench(args):
    """Runs `vrwkv bench ARGS --json FILE` and returns (records, None), or ([], error text) when it fails."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        try:
            r = subprocess.run(args + ["--json", f.name], stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        except OSError as e:
            return [], str(e)
        sys.stderr.write(r.stderr)
        if r.returncode != 0:
            return [], (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        try:
            records = json.load(open(f.name))
        except (OSError, ValueError) as e:
            return [], f"no records in its --json output ({e})"
    return (records if isinstance(records, list) else [records]), None


def main_seg(a):
    """--task seg: the PyTorch segmentor's golden check, `vrwkv bench --mode whole`, then the PyTorch timings."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import seg_pytorch

    models = a.model.split(",")
    for m in models:
        if m not in seg_pytorch.PRESETS:
            sys.exit(f"compare_pytorch: --model {m}: expected one of {', '.join(seg_pytorch.PRESETS)}")
    sizes = []
    for r in a.res.split(","):
        h, _, w = r.lower().partition("x")
        if not (h.isdigit() and (w.isdigit() or not w)):
            sys.exit(f"compare_pytorch: --res {r}: expected N or HxW")
        h, w = int(h), int(w or h)
        if h % 32 or w % 32 or not h or not w:
            sys.exit(f"compare_pytorch: --res {r}: the segmentor needs multiples of 32")
        sizes.append((h, w))
    blas, is_openblas = blas_info()
    sgemm_err = check_sgemm()
    dense = os.path.join(a.golden, "dense")
    wkv_err = seg_pytorch.check_bi_wkv(a.golden)
    ok, worst = seg_pytorch.self_check(dense, out=sys.stderr)
    if not ok or (wkv_err is not None and not wkv_err <= seg_pytorch.TOLERANCE):
        sys.exit("compare_pytorch: the PyTorch segmentor is not the golden one (see the errors above)")
    golden = ("skipped (no dense goldens found)" if not worst else "matches the official code's dense goldens in "
              "float64 (worst relative error " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) +
              (f"; Bi-WKV {wkv_err:.1e}" if wkv_err is not None else "") + ")")
    records, error = run_vrwkv_bench([a.vrwkv, "bench", "--model", a.model, "--batch", "1", "--res", a.res,
                                      "--mode", "whole", "--threads", str(a.threads), "--warmup", str(a.warmup),
                                      "--reps", str(a.reps)])
    env, before = settings_text()
    print(f"segmentation, whole-mode inference of one image: PyTorch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, float32\n"
          f"BLAS: {blas}{'' if is_openblas else ' (not OpenBLAS: run VRWKV_PYTORCH=1 tools/setup.sh)'}; "
          f"sgemm error {sgemm_err:.1e}\n"
          f"settings: {env}{f' (the environment had {before})' if before else ''}\n"
          f"PyTorch segmentor: {golden}\n"
          f"FLOPs: 2 x multiply-adds of every convolution and linear (backbone and decode head)")
    if error:
        print(f"vrwkv bench failed: {error}\n(PyTorch numbers only)")
    print()
    print(f"{'model':16} {'resolution':>11} {'vrwkv ms':>9} {'PyTorch ms':>11} {'ratio':>7} {'GFLOP':>7} "
          f"{'PyTorch GFLOP/s':>16} {'backbone ms':>12} {'head ms':>8}")
    out = []
    for name in models:
        torch.manual_seed(0)
        model = seg_pytorch.Segmentor(seg_pytorch.preset(name)).float().eval()
        for h, w in sizes:
            same = [r for r in records if r.get("height") == h and r.get("width") == w]
            r = next((r for r in same if r.get("model") == name), same[0] if len(models) == 1 and same else None) or {
                "model": name, "batch": 1, "height": h, "width": w}
            t = seg_pytorch.time_whole(model, h, w, a.warmup, a.reps)
            r.update(pytorch_latency_ms_median=t["ms"], pytorch_backbone_ms_median=t["backbone_ms"],
                     pytorch_head_ms_median=t["head_ms"], pytorch_flops_per_image=t["flops"],
                     pytorch_gflops_per_second=t["flops"] / t["ms"] / 1e6,
                     pytorch_settings={"blas": blas, "env": env, "threads": a.threads})
            ms = r.get("latency_ms_median")
            if ms:
                r["ratio"] = t["ms"] / ms
            vrwkv_ms = f"{ms:9.0f}" if ms else f"{'-':>9}"
            ratio = f"{r['ratio']:6.2f}x" if ms else f"{'-':>7}"
            print(f"{name:16} {h:>5}x{w:<5} {vrwkv_ms} {t['ms']:11.0f} {ratio} {t['flops'] / 1e9:7.1f} "
                  f"{r['pytorch_gflops_per_second']:16.1f} {t['backbone_ms']:12.0f} {t['head_ms']:8.0f}", flush=True)
            if r.get("flops_per_image") and abs(r["flops_per_image"] - t["flops"]) > 0.01 * t["flops"]:
                print(f"  (vrwkv counts {r['flops_per_image'] / 1e9:.1f} GFLOP)")
            out.append(r)
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


def main_det(a):
    """--task det: the PyTorch detector's golden check, `vrwkv bench` of the detector, then the PyTorch
    timings, with the time per stage on both sides."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import det_pytorch

    if a.model not in det_pytorch.PRESETS:
        sys.exit(f"compare_pytorch: --model {a.model}: expected one of {', '.join(det_pytorch.PRESETS)}")
    h, _, w = a.res.lower().partition("x")
    if not (h.isdigit() and w.isdigit()) or int(h) % 32 or int(w) % 32:
        sys.exit(f"compare_pytorch: --res {a.res}: expected HxW, multiples of 32")
    h, w = int(h), int(w)
    blas, is_openblas = blas_info()
    if not det_pytorch.self_check(out=sys.stderr):
        sys.exit("compare_pytorch: the PyTorch detector is not the golden one (see the errors above)")
    records, error = run_vrwkv_bench([a.vrwkv, "bench", "--model", a.model, "--res", f"{h}x{w}", "--threads",
                                      str(a.threads), "--warmup", str(a.warmup), "--reps", str(a.reps)])
    env, before = settings_text()
    print(f"detection of one image ({h}x{w} input, score threshold 0 so that 100 detections reach the masks): "
          f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, float32\n"
          f"BLAS: {blas}{'' if is_openblas else ' (not OpenBLAS: run VRWKV_PYTORCH=1 tools/setup.sh)'}\n"
          f"settings: {env}{f' (the environment had {before})' if before else ''}\n"
          f"PyTorch detector: matches the goldens of shared/golden/det and det_e2e in float64\n"
          f"FLOPs: 2 x multiply-adds of every convolution and linear")
    if error:
        print(f"vrwkv bench failed: {error}\n(PyTorch numbers only)")
    torch.manual_seed(0)
    model = det_pytorch.Detector(det_pytorch.preset(a.model)).float().eval()
    model.test["score_thr"] = 0.0
    t = det_pytorch.time_detect(model, h, w, a.warmup, a.reps)
    r = records[0] if records else {"model": a.model, "height": h, "width": w}
    r.update(pytorch_latency_ms_median=t["ms"], pytorch_stage_ms=t["stages"], pytorch_flops_per_image=t["flops"],
             pytorch_settings={"blas": blas, "env": env, "threads": a.threads})
    ms = r.get("latency_ms_median")
    print(f"\n{'':10} {'total ms':>9} {'backbone':>9} {'FPN':>7} {'RPN+NMS':>8} {'RoI+NMS':>8} {'masks':>7} "
          f"{'GFLOP/s':>8}")
    if ms:
        s = r.get("stage_ms", {})
        print(f"{'vrwkv':10} {ms:9.0f} {s.get('backbone', 0):9.0f} {s.get('fpn', 0):7.0f} {s.get('rpn', 0):8.0f} "
              f"{s.get('roi', 0):8.0f} {s.get('mask', 0):7.0f} {r['flops_per_image'] / ms / 1e6:8.1f}")
    s = t["stages"]
    print(f"{'PyTorch':10} {t['ms']:9.0f} {s['backbone']:9.0f} {s['fpn']:7.0f} {s['rpn']:8.0f} {s['roi']:8.0f} "
          f"{s['mask']:7.0f} {t['flops'] / t['ms'] / 1e6:8.1f}")
    if ms:
        r["ratio"] = t["ms"] / ms
        print(f"vrwkv / PyTorch: {r['ratio']:.2f}x; {t['flops'] / 1e9:.1f} GFLOP (vrwkv counts "
              f"{r['flops_per_image'] / 1e9:.1f}); vrwkv peak RSS {r.get('peak_rss_mib', 0):.0f} MiB")
    if a.json:
        json.dump([r], open(a.json, "w"), indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vrwkv", default="build/vrwkv", help="the vrwkv program")
    p.add_argument("--task", choices=("cls", "seg", "det"), default="cls",
                   help="cls: classification models; seg: the segmentor, whole-mode inference of one image; "
                   "det: the detector on one image")
    p.add_argument("--model", help="comma-separated presets (vrwkv_t/s/b/l, vrwkv6_t/s/b, vit_t/s; with --task seg "
                   "upernet_vrwkv_t/s/b/l); default vrwkv_t, upernet_vrwkv_t with --task seg")
    p.add_argument("--batch", default="1,8", help="batch sizes (--task seg: always 1)")
    p.add_argument("--res", help="comma-separated resolutions (default 224; 512 with --task seg)")
    p.add_argument("--threads", type=int, default=2, help="threads of vrwkv and of PyTorch")
    p.add_argument("--blas-threads", type=int, help="OpenBLAS threads (default: --threads)")
    p.add_argument("--openblas-coretype", help="OpenBLAS kernels (OPENBLAS_CORETYPE), or 'auto' for its own "
                   f"choice (here: {_coretype or 'auto'})")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", help="write vrwkv's and PyTorch's records here")
    p.add_argument("--train", action="store_true", help="time a training step (vrwkv bench --train)")
    p.add_argument("--golden", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/golden"),
                   help="golden vectors to check the PyTorch model against")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.task == "det":
        if a.train:
            p.error("--train: not with --task det")
        a.model, a.res = a.model or "mask_rcnn_vrwkv_t", a.res or "800x1344"
        return main_det(a)
    if a.task == "seg":
        if a.train:
            p.error("--train: not with --task seg")
        a.model, a.res = a.model or "upernet_vrwkv_t", a.res or "512"
        return main_seg(a)
    a.model, a.res = a.model or "vrwkv_t", a.res or "224"
    blas, is_openblas = blas_info()
    sgemm_err = check_sgemm()
    golden = check_golden(a.golden)
    if any(m.startswith("vrwkv6") for m in a.model.split(",")):
        import v6_pytorch
        if not v6_pytorch.self_check():
            sys.exit("compare_pytorch: the PyTorch VRWKV6 does not match the goldens (tools/v6_pytorch.py --check)")
        golden += "; VRWKV6 matches ../shared/golden/v6 (tools/v6_pytorch.py --check)"
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([a.vrwkv, "bench", "--model", a.model, "--batch", a.batch, "--res", a.res, "--threads",
                        str(a.threads), "--warmup", str(a.warmup), "--reps", str(a.reps), "--json", f.name] +
                       (["--train"] if a.train else []),
                       check=True, stdout=sys.stderr)
        records = json.load(open(f.name))
    env, before = settings_text()
    print(f"{'training step' if a.train else 'inference'}: PyTorch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, float32\n"
          f"BLAS: {blas}{'' if is_openblas else ' (not OpenBLAS: run VRWKV_PYTORCH=1 tools/setup.sh)'}; "
          f"sgemm error {sgemm_err:.1e}\n"
          f"settings: {env}{f' (the environment had {before})' if before else ''}\n"
          f"PyTorch model: {golden}\n")
    print(f"{'model':10} {'batch':>5} {'resolution':>11} {'vrwkv img/s':>12} {'PyTorch img/s':>14} {'ratio':>7}")
    for r in records:
        if a.train and r["model"].startswith("vrwkv6"):
            sys.exit("compare_pytorch: --train is not available for VRWKV6 here")
        timer = time_pytorch_train if a.train else time_pytorch
        ips, ms, *form = timer(r["model"], r["batch"], r["height"], r["width"], a.warmup, a.reps)
        r["pytorch_images_per_second"], r["pytorch_latency_ms_median"] = ips, ms
        if form and form[0]:
            r["pytorch_wkv6_form"] = form[0]
        r["ratio"] = r["images_per_second"] / ips
        r["pytorch_settings"] = {"blas": blas, "env": env, "threads": a.threads}
        print(f"{r['model']:10} {r['batch']:5} {r['height']:>5}x{r['width']:<5} {r['images_per_second']:12.2f} "
              f"{ips:14.2f} {r['ratio']:6.2f}x", flush=True)
    if a.json:
        json.dump(records, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
