// What the extension's files share: NumPy arrays as engine tensors and back
// (module.cpp defines them), and where each part of the module is declared.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "vrwkv/tensor.hpp"

namespace vrwkv::python {

namespace py = pybind11;

// The float32 data of any array-like as a tensor of `ndim` dimensions: the
// array's own memory when it is a C-contiguous, aligned float32 ndarray,
// otherwise one converted copy; Error(Input) naming `what` for anything else.
Tensor as_tensor(const py::handle& obj, int ndim, const char* what);

// An F32, I64 or U8 tensor as an array sharing its memory (None when empty);
// read-only unless writable.
py::object to_array(const Tensor& t, bool writable = true);

// Keyword arguments: an int (never a bool) in int64's range; threads in
// 0..4096; dtype "fp32" or "bf16" (true for bf16). Error(Input) naming them.
std::int64_t integer_arg(const py::handle& value, const char* key);
int checked_threads(int threads);
bool checked_dtype(const std::string& dtype);

// The segmentors and detectors (dense.cpp): classes Segmentor and Detector, checkpoint_kind.
void add_dense(py::module_& m);

}  // namespace vrwkv::python
