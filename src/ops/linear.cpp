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

void linear_backward_ref(const float* x, const float* W, const float* dy, float* dx, float* dW, float* db,
                         std::int64_t M, std::int64_t N, std::int64_t K) {
  if (dx)
    for (std::int64_t m = 0; m < M; ++m)
      for (std::int64_t k = 0; k < K; ++k) {
        double acc = 0;
        for (std::int64_t n = 0; n < N; ++n) acc += static_cast<double>(dy[m * N + n]) * W[n * K + k];
        dx[m * K + k] += static_cast<float>(acc);
      }
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t k = 0; k < K; ++k) {
      double acc = 0;
      for (std::int64_t m = 0; m < M; ++m) acc += static_cast<double>(dy[m * N + n]) * x[m * K + k];
      dW[n * K + k] += static_cast<float>(acc);
    }
    if (db) {
      double acc = 0;
      for (std::int64_t m = 0; m < M; ++m) acc += dy[m * N + n];
      db[n] += static_cast<float>(acc);
    }
  }
}

namespace {
void sgemm(char ta, char tb, std::int64_t M, std::int64_t N, std::int64_t K, const float* A, std::int64_t lda,
           const float* B, std::int64_t ldb, float* C, std::int64_t ldc) {
  const dnnl_status_t status = dnnl_sgemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 1.0f, C, ldc);
  if (status != dnnl_success) runtime_error("GEMM ", M, "x", N, "x", K, " failed (oneDNN status ", int(status), ")");
}
}  // namespace

void linear_backward(const float* x, const float* W, const float* dy, float* dx, float* dW, float* db, std::int64_t M,
                     std::int64_t N, std::int64_t K) {
  if (M == 0 || N == 0 || K == 0) return;
  if (dx) sgemm('N', 'N', M, K, N, dy, N, W, K, dx, K);  // dx[M,K] += dy[M,N]·W[N,K]
  sgemm('T', 'N', N, K, M, dy, N, x, K, dW, K);          // dW[N,K] += dyᵀ[N,M]·x[M,K]
  if (db) {
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n) {
      float acc = 0;
      for (std::int64_t m = 0; m < M; ++m) acc += dy[m * N + n];
      db[n] += acc;
    }
  }
}

}  // namespace vrwkv::ops
