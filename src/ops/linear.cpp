#include "ops/linear.hpp"

#include <dnnl.h>

#include "vrwkv/error.hpp"

namespace vrwkv::ops {

void linear_ref(const float* x, const float* W, const float* b, float* y, std::int64_t M, std::int64_t N,
                std::int64_t K) {
  for (std::int64_t m = 0; m < M; ++m)
    for (std::int64_t n = 0; n < N; ++n) {
      double acc = b ? b[n] : 0.0;
      for (std::int64_t k = 0; k < K; ++k) acc += static_cast<double>(x[m * K + k]) * W[n * K + k];
      y[m * N + n] = static_cast<float>(acc);
    }
}

void linear(const float* x, const float* W, const float* b, float* y, std::int64_t M, std::int64_t N, std::int64_t K) {
  if (M == 0 || N == 0) return;
  // Row-major y = x·Wᵀ is oneDNN's sgemm with B transposed.
  const dnnl_status_t status = dnnl_sgemm('N', 'T', M, N, K, 1.0f, x, K, W, K, 0.0f, y, N);
  if (status != dnnl_success) runtime_error("GEMM ", M, "x", N, "x", K, " failed (oneDNN status ", int(status), ")");
  if (b) {
#pragma omp parallel for schedule(static)
    for (std::int64_t m = 0; m < M; ++m)
      for (std::int64_t n = 0; n < N; ++n) y[m * N + n] += b[n];
  }
}

}  // namespace vrwkv::ops
