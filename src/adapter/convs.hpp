// What the dense models' forwards share: NHWC maps, the fast path's
// convolution primitives (made once per layer from its weights, with a
// BatchNorm folded in), and a Runner that runs each op on the reference or
// the fast path.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "adapter/weights.hpp"
#include "ops/conv.hpp"
#include "ops/packed_linear.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv::adapter {

// An allocator that leaves floats uninitialised: the maps are tens of MiB
// and every op writes its output in full, so zeroing them first would only
// touch every page twice.
template <class T>
struct NoInit : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = NoInit<U>;
  };
  NoInit() = default;
  template <class U>
  NoInit(const NoInit<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
};
using Floats = std::vector<float, NoInit<float>>;

// An NHWC map of B images; a token sequence [B,H·W,C] is one already. Its
// values start unset.
struct Map {
  Floats v;
  std::int64_t B = 0, H = 0, W = 0, C = 0;
  Map() = default;
  Map(std::int64_t b, std::int64_t h, std::int64_t w, std::int64_t c) : v(b * h * w * c), B(b), H(h), W(w), C(c) {}
  float* data() { return v.data(); }
  const float* data() const { return v.data(); }
};

// NHWC [B,H,W,C] → an NCHW tensor [B,C,H,W], and back.
Tensor to_nchw(const float* x, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C);
inline Tensor to_nchw(const Map& m) { return to_nchw(m.data(), m.B, m.H, m.W, m.C); }
Map from_nchw(const Tensor& t);

// The fast convolutions and linears of a model's layers, keyed by their
// weights (made on first use; linears with their weights packed once, in
// float32 or bfloat16).
class ConvCache {
 public:
  ops::Conv2d& conv(const ConvW& c);
  ops::ConvTranspose2d& conv_transpose(const ConvW& c);
  ops::PackedLinear& linear(const LinearW& l, DType weights, const float* weight = nullptr);

 private:
  std::mutex mutex_;
  std::map<const ConvW*, std::unique_ptr<ops::Conv2d>> convs_;
  std::map<const ConvW*, std::unique_ptr<ops::ConvTranspose2d>> transposed_;
  std::map<std::pair<const LinearW*, DType>, std::unique_ptr<ops::PackedLinear>> linears_;
};

// The ops of one path: the reference (plain loops, float64 accumulation,
// separate BatchNorms) or the fast one (oneDNN, BatchNorms folded, optional bf16).
class Runner {
 public:
  Runner(ConvCache& cache, bool reference, bool bf16)
      : cache_(cache), reference_(reference), compute_(bf16 ? DType::BF16 : DType::F32) {}
  bool reference() const { return reference_; }
  bool bf16() const { return compute_ == DType::BF16; }

  // y = ConvModule / conv of x; y's pixels y_stride floats apart (0: Co).
  void conv(const ConvW& cw, const float* x, float* y, std::int64_t B, std::int64_t H, std::int64_t W,
            std::int64_t y_stride = 0);
  Map conv(const ConvW& cw, const Map& x);
  // ConvTranspose2d with kernel = stride, plus bias (and ReLU when cw.relu).
  Map conv_transpose(const ConvW& cw, const Map& x);
  // y [M,out] = x [M,in]·Wᵀ + b, float32. `weight` replaces l.weight (same
  // shape) on the fast path; it is read when the packed linear is first made.
  void linear(const LinearW& l, const float* x, float* y, std::int64_t M, const float* weight = nullptr);
  void layernorm(const NormW& n, const float* x, float* y, std::int64_t N, std::int64_t C, float eps);

 private:
  ConvCache& cache_;
  bool reference_;
  DType compute_;
};

}  // namespace vrwkv::adapter
