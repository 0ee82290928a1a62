#include "ops/gate.hpp"

#include <cmath>

#include "ops/fast_math.hpp"

namespace vrwkv::ops {

void sigmoid_gate_ref(const float* r, const float* y, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(y[i] / (1.0 + std::exp(-double(r[i]))));
}

void sigmoid_gate(const float* r, const float* y, float* out, std::int64_t n) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) out[i] = sigmoid_fast(r[i]) * y[i];
}

void silu_gate_ref(const float* g, const float* y, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(y[i] * (g[i] / (1.0 + std::exp(-double(g[i])))));
}

void silu_gate(const float* g, const float* y, float* out, std::int64_t n) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) out[i] = y[i] * (g[i] * sigmoid_fast(g[i]));
}

void tanh_ref(float* x, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(std::tanh(double(x[i])));
}

void tanh(float* x, std::int64_t n) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) x[i] = tanh_fast(x[i]);
}

}  // namespace vrwkv::ops
