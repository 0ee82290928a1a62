// vrwkv: a dense, row-major tensor (64-byte aligned when the library allocates it).
//
// Copies are shallow (they share the buffer, like torch.Tensor); clone() copies
// the data. Shapes are int64 like PyTorch's. A Tensor knows nothing of files or
// layers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace vrwkv {

enum class DType : std::uint8_t { F32, F64, F16, BF16, I64, I32, I16, I8, U8, Bool };

std::size_t dtype_size(DType dtype);
// The safetensors spelling: "F32", "I64", "U8", "BOOL", ...
const char* dtype_name(DType dtype);
// Inverse of dtype_name; returns false for an unknown name.
bool dtype_from_name(const std::string& name, DType* out);

using Shape = std::vector<std::int64_t>;
std::string shape_str(const Shape& shape);  // "[2,3,224,224]"
// Number of elements, or -1 if a dimension is negative or the product overflows.
std::int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  // Zero-filled tensor. Throws Error(Input) for a negative or overflowing shape.
  Tensor(DType dtype, Shape shape);
  // A tensor over memory that someone else owns (a NumPy array, say): no copy.
  // `buffer` must hold the shape's elements and stays alive as long as any
  // tensor sharing it; it need not be 64-byte aligned (no op assumes so).
  static Tensor borrow(DType dtype, Shape shape, std::shared_ptr<std::byte[]> buffer);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  std::int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  std::int64_t numel() const { return numel_; }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel_) * dtype_size(dtype_); }

  std::byte* raw() { return buffer_.get(); }
  const std::byte* raw() const { return buffer_.get(); }
  float* f32();
  const float* f32() const;
  template <class T>
  T* data() { return reinterpret_cast<T*>(buffer_.get()); }
  template <class T>
  const T* data() const { return reinterpret_cast<const T*>(buffer_.get()); }

  Tensor clone() const;
  // A tensor sharing this one's buffer, starting `offset` elements in.
  Tensor view(std::int64_t offset, Shape shape) const;
  // Same data, new shape with the same number of elements.
  Tensor reshape(Shape shape) const;
  // Converts any floating dtype (F16, BF16, F64) to F32; F32 returns *this.
  // Throws Error(Input) for integer dtypes.
  Tensor to_f32() const;

 private:
  DType dtype_ = DType::F32;
  Shape shape_;
  std::int64_t numel_ = 0;
  std::shared_ptr<std::byte[]> buffer_;
};

using TensorMap = std::map<std::string, Tensor>;

}  // namespace vrwkv
