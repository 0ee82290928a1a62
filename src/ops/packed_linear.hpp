// The linear layers of the fast forward (VRWKV blocks, the ViT baseline):
// y[M,N] = epilogue(x[M,K]·Wᵀ + b) through oneDNN matmul primitives, with the
// element-wise work that follows a GEMM done while its tile is still in
// registers (activation, gate, residual) where oneDNN can fuse it, and in one
// pass after the GEMM where fusing would leave only its reference matmul.
// Weights are converted to float32 or bfloat16 and packed into the library's
// layout once; a primitive is made once per (M, epilogue, dtypes), on first use.
// bf16 weights: x and W rounded to bf16, products accumulated in float32.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "vrwkv/tensor.hpp"

namespace dnnl {
struct memory;
}

namespace vrwkv::ops {

// Gelu: the exact (erf) form; Silu: z·σ(z).
enum class Activation : std::uint8_t { None, Sigmoid, ReluSquare, Gelu, Tanh, Silu };

// Applied in this order to each z = (x·Wᵀ + b)[m,n]: z ← act(z); z ← z·mul[m,n];
// y ← y + z (accumulate) or y ← z.
struct Epilogue {
  Activation act = Activation::None;
  const float* mul = nullptr;  // [M,N] float32, or none
  bool accumulate = false;
};

// A [M,cols] row-major activation buffer in float32 or bfloat16.
struct Activations {
  void* data;
  DType dtype;  // F32 or BF16
};

class PackedLinear {
 public:
  // W: [N,K] float32 (PyTorch layout); bias: [N] or null. row_scale ([N] or
  // null) multiplies row n of W (and bias n) by row_scale[n] before packing:
  // a layer scale folded in.
  PackedLinear(const float* W, std::int64_t N, std::int64_t K, DType weights, const float* row_scale = nullptr,
               const float* bias = nullptr);
  ~PackedLinear();
  PackedLinear(const PackedLinear&) = delete;
  PackedLinear& operator=(const PackedLinear&) = delete;

  // x: [M,K]; y: [M,N]. With bf16 weights an F32 x is rounded to bf16 first;
  // with F32 weights x must be F32. Safe to call from several threads at once
  // (inside an OpenMP parallel region the GEMM runs on the calling thread).
  void operator()(Activations x, Activations y, std::int64_t M, const Epilogue& epilogue = {});

  // The oneDNN implementation a call with these settings runs (e.g.
  // "gemm:jit", "brg:avx512_core"), with "+unfused" where part of the
  // epilogue follows the GEMM; never "ref..." for float32 where oneDNN has a
  // fast matmul for some prefix of the epilogue.
  std::string implementation(std::int64_t M, DType x, DType y, const Epilogue& epilogue = {});

 private:
  struct Plan;
  const Plan& plan(std::int64_t M, DType x, DType y, const Epilogue& epilogue);
  using Key = std::tuple<std::int64_t, DType, DType, Activation, bool, bool>;
  const float* W_;           // float32 [N,K]: the model's, or scaled_
  std::vector<float> scaled_;
  std::vector<float> bias_;  // [N] (scaled), empty without a bias
  std::int64_t N_, K_;
  DType weights_;
  std::mutex mutex_;  // guards packed_ and plans_
  std::vector<std::unique_ptr<dnnl::memory>> packed_;  // one per weight layout the primitives asked for
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace vrwkv::ops
