// Convolutions of the dense heads and the adapter (DENSE.md (a), (c)), on
// NHWC maps: x [B,H,W,Ci], y [B,Ho,Wo,Co], channels innermost (the layout of
// the backbone's tokens, so a token sequence [B,H·W,C] is already a map).
// Weights keep PyTorch's layouts: Conv2d [Co, Ci/groups, k, k],
// ConvTranspose2d [Ci, Co, k, k].
//
// The references are plain loops with float64 accumulation; Conv2d and
// ConvTranspose2d are oneDNN primitives, made once per input size.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "vrwkv/tensor.hpp"

namespace dnnl {
struct memory;
}

namespace vrwkv::ops {

struct ConvShape {
  std::int64_t Co, Ci, k, stride = 1, pad = 0, groups = 1;
  std::int64_t out(std::int64_t in) const { return (in + 2 * pad - k) / stride + 1; }
};

// y = conv(x) + bias (bias may be null).
void conv2d_ref(const float* x, const float* weight, const float* bias, float* y, std::int64_t B, std::int64_t H,
                std::int64_t W, const ConvShape& s);
// y = conv_transpose(x) + bias, kernel k = stride (no overlap, no padding):
// y [B, H·k, W·k, Co].
void conv_transpose2d_ref(const float* x, const float* weight, const float* bias, float* y, std::int64_t B,
                          std::int64_t H, std::int64_t W, const ConvShape& s);

// A convolution with an optional per-channel affine after it folded into
// its weights and bias (an eval-mode BatchNorm: scale = γ/√(var+ε),
// shift = β − mean·scale) and an optional ReLU as a post-op.
// Float32 3×3 stride-1 convolutions with at least this many input and output
// channels run as Winograd when allowed (oneDNN's F(4×4, 3×3), or F(2×2,
// 3×3) for 64 channels): fewer multiplies for the UPerHead's 512-channel
// convolutions (a whole 512² segmentor call went from 3.5–3.7 s to 1.4 s),
// the FPN's and mask head's 256, the spatial prior module's 64 (at 64 about
// even with the direct convolution once the layout copies are counted), and an
// error below the direct sum's (tests/test_seg_ops.cpp measures it). oneDNN
// has Winograd on AVX-512 machines only; elsewhere these run as direct
// convolutions.
constexpr std::int64_t kWinogradMinChannels = 64;
// Whether this machine's oneDNN has a Winograd convolution (asked once).
bool winograd_supported();

enum class ConvCompute : std::uint8_t { Direct, Winograd, BF16 };

class Conv2d {
 public:
  Conv2d(const float* weight, const float* bias, const ConvShape& shape, const float* scale = nullptr,
         const float* shift = nullptr, bool relu = false);
  // Whether float32 calls may use Winograd (when the shape and the machine allow it; default yes).
  void allow_winograd(bool allow) { winograd_ = allow; }
  // Whether the shape suits Winograd and the machine has it.
  bool winograd_applies() const;
  ~Conv2d();
  Conv2d(const Conv2d&) = delete;
  Conv2d& operator=(const Conv2d&) = delete;
  const ConvShape& shape() const { return shape_; }
  // x [B,H,W,Ci] → y [B,Ho,Wo,Co]. compute BF16: x and the weights rounded
  // to bfloat16, products accumulated in float32 (AVX-512 BF16 or AMX).
  void operator()(const float* x, float* y, std::int64_t B, std::int64_t H, std::int64_t W,
                  DType compute = DType::F32);

 private:
  struct Plan;
  const Plan& plan(std::int64_t B, std::int64_t H, std::int64_t W, ConvCompute compute);
  ConvShape shape_;
  bool relu_;
  bool winograd_ = true;
  std::vector<float> weight_, bias_;  // folded, PyTorch layout
  std::mutex mutex_;
  std::vector<std::unique_ptr<dnnl::memory>> packed_;
  std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t, ConvCompute>, std::unique_ptr<Plan>> plans_;
};

class PackedLinear;

// ConvTranspose2d with kernel = stride, with bias (the adapter's `up`, the
// mask head's `upsample`): one packed GEMM and a scatter into the k×k blocks.
class ConvTranspose2d {
 public:
  ConvTranspose2d(const float* weight, const float* bias, const ConvShape& shape);
  ~ConvTranspose2d();
  ConvTranspose2d(const ConvTranspose2d&) = delete;
  ConvTranspose2d& operator=(const ConvTranspose2d&) = delete;
  void operator()(const float* x, float* y, std::int64_t B, std::int64_t H, std::int64_t W);

 private:
  ConvShape shape_;
  std::vector<float> weight_;  // [k·k·Co, Ci], rows (di, dj, co)
  std::unique_ptr<PackedLinear> gemm_;
};

}  // namespace vrwkv::ops
