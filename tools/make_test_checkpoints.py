#!/usr/bin/env python3
"""Writes the small reference checkpoints in tests/data/ that tests/test_pth.cpp reads.

Run with the reference PyTorch (1.13 here): /usr/bin/python3 tools/make_test_checkpoints.py
Every value is deterministic (arange-based) so the C++ test can recompute what it expects
without Python. The files cover the checkpoint layouts the .pth reader accepts and the tensor
shapes it must reconstruct: views with offsets and strides, shared storages, non-F32 dtypes,
nn.Parameter wrappers, OrderedDict state dicts with _metadata, and pickle protocols 2 and 4.
"""
import collections
import os
import sys

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")


def arange(*shape, dtype=torch.float32, start=0):
    n = 1
    for s in shape:
        n *= s
    return (torch.arange(n, dtype=torch.float64) + start).to(dtype).reshape(*shape)


def small_state_dict(start=0):
    """A little nn.Module state dict (an OrderedDict carrying _metadata, pickled with BUILD)."""
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(arange(2, 3, start=start))
        lin.bias.copy_(arange(2, start=start + 100))
    return lin.state_dict()


def views_state_dict():
    base = arange(3, 4)                     # values 0..11
    flat = arange(10, start=1000)           # values 1000..1009
    sd = collections.OrderedDict()
    sd["transposed"] = base.t()             # [4,3], stride (1,4): a non-contiguous view
    sd["offset_view"] = flat[2:7]           # [5], storage offset 2
    sd["shared_a"] = flat[:4].reshape(2, 2)  # shares flat's storage with offset_view
    sd["shared_b"] = flat                   # the whole storage
    sd["strided_rows"] = base[::2, 1:]      # [2,3], stride (8,1), offset 1
    sd["f16"] = arange(2, 3, dtype=torch.float16, start=-2)
    sd["bf16"] = arange(4, dtype=torch.bfloat16, start=1) * 0.5
    sd["f64"] = arange(3, dtype=torch.float64) / 3.0
    sd["i64"] = torch.tensor([-3, 0, 5, 1 << 40], dtype=torch.int64)
    sd["i32"] = torch.tensor([7, -7], dtype=torch.int32)
    sd["u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["flag"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(2.5)        # 0-d tensor: size () stride ()
    sd["empty"] = torch.zeros(0, 3)
    sd["note"] = "not a tensor"             # skipped by the reader
    sd["nested"] = {"x": arange(2)}         # skipped by the reader
    return sd


def meta():
    m = {
        "text": "hello",
        "int": 42,
        "big_int": 1 << 70,
        "neg": -123456789,
        "float": 0.25,
        "list": [1, "two", 3.0, None, True, False],
        "tuple": (1, 2),
        "none": None,
        "yes": True,
        "no": False,
        "bytes": b"\x00\x01",
        "dtype": torch.float16,
    }
    try:
        import numpy as np
        m["numpy_scalar"] = np.float64(0.5)   # numpy.core.multiarray.scalar + numpy.dtype + _codecs.encode
    except ImportError:
        sys.exit("numpy is needed to write the metadata test case")
    return m


def main():
    os.makedirs(OUT, exist_ok=True)

    def save(obj, name, protocol=2):
        torch.save(obj, os.path.join(OUT, name), pickle_protocol=protocol)

    bare = collections.OrderedDict()
    bare["w"] = torch.nn.Parameter(arange(2, 2))      # pickled through _rebuild_parameter
    bare["b"] = arange(3, start=10)
    save(bare, "bare.pth")

    save({"model": small_state_dict(), "epoch": 3}, "internimage_model.pth")
    save({"model_ema": small_state_dict(500), "model": small_state_dict(), "max_accuracy": 81.5},
         "internimage_ema.pth")
    save({"module": small_state_dict(), "args": [1, 2]}, "module.pth")
    save({"model_ema": small_state_dict(500)}, "ema_only.pth")

    save({"meta": meta(), "state_dict": views_state_dict()}, "mmcls_views_p2.pth", protocol=2)
    save({"meta": meta(), "state_dict": views_state_dict()}, "mmcls_views_p4.pth", protocol=4)

    for name in sorted(os.listdir(OUT)):
        if name.endswith(".pth"):
            print(name, os.path.getsize(os.path.join(OUT, name)))


if __name__ == "__main__":
    main()
