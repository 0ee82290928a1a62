"""Shared helpers of the Python package's tests: the golden cases as the C++ tests read them."""
import json
import os
import struct

import numpy as np
import pytest

GOLDEN = os.environ.get("VRWKV_GOLDEN_DIR", os.path.join(os.path.dirname(__file__), "../../../shared/golden"))
SOURCE = os.environ.get("VRWKV_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "../.."))

# ../shared/golden/README.md: forward outputs within 2e-5·max(1, max|golden|), gradients within 5e-5·max(1, ·)
# (a float32 re-run of the official code lands within a few 1e-6 of the float64 goldens); the C++ tests' bounds.
FORWARD_TOL = 2e-5
GRAD_TOL = 5e-5

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[key] = np.frombuffer(data[8 + n + begin:8 + n + end], dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return out


def case_path(name):
    """A case's path without extension: "data/..." in tests/, the others in the goldens."""
    if name.startswith("data/"):
        return os.path.join(SOURCE, "tests", name)
    return os.path.join(GOLDEN, name)


def golden_case(name):
    """(description, tensors, checkpoint path, model options) of a golden case, loaded as it was made."""
    base = case_path(name)
    with open(base + ".json") as f:
        j = json.load(f)
    options = {}
    if "wkv_impl" in j:  # VRWKV6 cases have none
        impl = j["wkv_impl"]
        options["wkv"] = "paper" if impl in ("sum", "uni") else "official"
        options["wkv_chunks"] = 16 if impl == "kernel16" else 32
    if "variant" in j:  # the ablation cases
        for key in ("shift", "wkv_direction", "wkv_decay"):
            options[key] = j["variant"][key]
    bb = j["backbone"]
    if "shift_pixel" in bb:
        options["shift_pixel"] = bb["shift_pixel"]
    if isinstance(bb["out_indices"], list):
        options["out_indices"] = bb["out_indices"]
    folder = os.path.dirname(base)
    checkpoint = os.path.join(folder, j["checkpoint"]) if "checkpoint" in j else base + ".pth"
    return j, read_safetensors(os.path.join(folder, j.get("safetensors", os.path.basename(base) + ".safetensors"))), \
        checkpoint, options


def max_error(got, want):
    """max |got − want| / max(1, max |want|), in float64."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    return float(np.max(np.abs(got - want), initial=0.0)) / max(1.0, float(np.max(np.abs(want), initial=0.0)))


def require_golden():
    if not os.path.isdir(GOLDEN):
        pytest.skip(f"the golden vectors are not at {GOLDEN}")
