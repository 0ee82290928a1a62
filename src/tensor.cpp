#include "vrwkv/tensor.hpp"

#include <cstdlib>
#include <cstring>
#include <limits>

#include "vrwkv/error.hpp"

namespace vrwkv {

namespace {
struct Spec {
  DType dtype;
  const char* name;
  std::size_t size;
};
constexpr Spec kSpecs[] = {
    {DType::F32, "F32", 4}, {DType::F64, "F64", 8}, {DType::F16, "F16", 2},  {DType::BF16, "BF16", 2},
    {DType::I64, "I64", 8}, {DType::I32, "I32", 4}, {DType::I16, "I16", 2},  {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},   {DType::Bool, "BOOL", 1},
};

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16;
  std::uint32_t exponent = (h >> 10) & 0x1f;
  std::uint32_t mantissa = h & 0x3ffu;
  std::uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal half: renormalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
}  // namespace

std::size_t dtype_size(DType dtype) {
  for (const Spec& s : kSpecs)
    if (s.dtype == dtype) return s.size;
  return 0;
}

const char* dtype_name(DType dtype) {
  for (const Spec& s : kSpecs)
    if (s.dtype == dtype) return s.name;
  return "?";
}

bool dtype_from_name(const std::string& name, DType* out) {
  for (const Spec& s : kSpecs)
    if (name == s.name) {
      *out = s.dtype;
      return true;
    }
  return false;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d) return -1;
    n *= d;
  }
  return n;
}

Tensor::Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  numel_ = shape_numel(shape_);
  if (numel_ < 0) input_error("invalid tensor shape ", shape_str(shape_));
  const std::size_t bytes = nbytes();
  if (numel_ != 0 && bytes / dtype_size(dtype_) != static_cast<std::size_t>(numel_))
    input_error("tensor shape ", shape_str(shape_), " is too large");
  const std::size_t rounded = (bytes + 63) / 64 * 64;
  void* p = rounded ? std::aligned_alloc(64, rounded) : nullptr;
  if (rounded && !p) runtime_error("out of memory allocating ", bytes, " bytes for a tensor ", shape_str(shape_));
  if (p) std::memset(p, 0, rounded);
  buffer_ = std::shared_ptr<std::byte[]>(static_cast<std::byte*>(p), [](std::byte* q) { std::free(q); });
}

Tensor Tensor::borrow(DType dtype, Shape shape, std::shared_ptr<std::byte[]> buffer) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.numel_ = shape_numel(t.shape_);
  if (t.numel_ < 0) input_error("invalid tensor shape ", shape_str(t.shape_));
  if (t.numel_ > 0 && !buffer) input_error("tensor ", shape_str(t.shape_), " has no data");
  t.buffer_ = std::move(buffer);
  return t;
}

float* Tensor::f32() {
  if (dtype_ != DType::F32) runtime_error("tensor is ", dtype_name(dtype_), ", expected F32");
  return data<float>();
}

const float* Tensor::f32() const {
  if (dtype_ != DType::F32) runtime_error("tensor is ", dtype_name(dtype_), ", expected F32");
  return data<float>();
}

Tensor Tensor::clone() const {
  Tensor t(dtype_, shape_);
  if (nbytes()) std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

Tensor Tensor::view(std::int64_t offset, Shape shape) const {
  const std::int64_t n = shape_numel(shape);
  if (offset < 0 || n < 0 || offset + n > numel_)
    runtime_error("view of ", shape_str(shape), " at ", offset, " exceeds tensor ", shape_str(shape_));
  Tensor t;
  t.dtype_ = dtype_;
  t.shape_ = std::move(shape);
  t.numel_ = n;
  t.buffer_ = std::shared_ptr<std::byte[]>(buffer_, buffer_.get() + offset * dtype_size(dtype_));
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  if (shape_numel(shape) != numel_)
    runtime_error("cannot reshape ", shape_str(shape_), " to ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::to_f32() const {
  if (dtype_ == DType::F32) return *this;
  Tensor t(DType::F32, shape_);
  float* out = t.f32();
  switch (dtype_) {
    case DType::F64:
      for (std::int64_t i = 0; i < numel_; ++i) out[i] = static_cast<float>(data<double>()[i]);
      break;
    case DType::F16:
      for (std::int64_t i = 0; i < numel_; ++i) out[i] = half_to_float(data<std::uint16_t>()[i]);
      break;
    case DType::BF16:
      for (std::int64_t i = 0; i < numel_; ++i) {
        const std::uint32_t bits = static_cast<std::uint32_t>(data<std::uint16_t>()[i]) << 16;
        std::memcpy(&out[i], &bits, 4);
      }
      break;
    default:
      input_error("tensor of dtype ", dtype_name(dtype_), " cannot be used as floating point");
  }
  return t;
}

}  // namespace vrwkv
