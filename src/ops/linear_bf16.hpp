// Linear layers in bfloat16 (issue: `--dtype bf16`): y[M,N] = x[M,K]·Wᵀ with x
// and W rounded to bf16, products accumulated and written in float32, through
// oneDNN matmul primitives on AVX-512 BF16 hardware. The weights are converted
// and packed once per row count M; primitives are created once per M.
#pragma once

#include <cstdint>
#include <map>
#include <memory>

namespace vrwkv::ops {

class LinearBf16 {
 public:
  LinearBf16(const float* W, std::int64_t N, std::int64_t K);  // W: [N,K] float32, kept by reference
  ~LinearBf16();
  void operator()(const float* x, float* y, std::int64_t M);

 private:
  struct Plan;
  const float* W_;
  std::int64_t N_, K_;
  std::map<std::int64_t, std::unique_ptr<Plan>> plans_;
};

}  // namespace vrwkv::ops
