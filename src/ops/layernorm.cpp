#include "ops/layernorm.hpp"

#include <cmath>

namespace vrwkv::ops {

void layernorm_ref(const float* x, const float* weight, const float* bias, float* y, std::int64_t N, std::int64_t C,
                   float eps) {
  for (std::int64_t n = 0; n < N; ++n) {
    const float* row = x + n * C;
    double mean = 0, var = 0;
    for (std::int64_t c = 0; c < C; ++c) mean += row[c];
    mean /= C;
    for (std::int64_t c = 0; c < C; ++c) var += (row[c] - mean) * (row[c] - mean);
    var /= C;
    const double inv = 1.0 / std::sqrt(var + eps);
    for (std::int64_t c = 0; c < C; ++c) y[n * C + c] = static_cast<float>((row[c] - mean) * inv * weight[c] + bias[c]);
  }
}

void layernorm(const float* x, const float* weight, const float* bias, float* y, std::int64_t N, std::int64_t C,
               float eps) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const float* row = x + n * C;
    float* out = y + n * C;
    float sum = 0;
    for (std::int64_t c = 0; c < C; ++c) sum += row[c];
    const float mean = sum / C;
    float sq = 0;
    for (std::int64_t c = 0; c < C; ++c) sq += (row[c] - mean) * (row[c] - mean);
    const float inv = 1.0f / std::sqrt(sq / C + eps);
    for (std::int64_t c = 0; c < C; ++c) out[c] = (row[c] - mean) * inv * weight[c] + bias[c];
  }
}

}  // namespace vrwkv::ops
