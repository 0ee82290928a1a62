#include "ops/layernorm.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

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

namespace {
// Σ f(row[c]) over a row in 16 independent partial sums, which the compiler
// keeps in one vector register (a single running sum would be a serial chain).
template <class F>
inline float row_sum(const float* row, std::int64_t C, F f) {
  constexpr int kLanes = 16;
  float part[kLanes] = {};
  std::int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes)
    for (int j = 0; j < kLanes; ++j) part[j] += f(row[c + j]);
  for (; c < C; ++c) part[0] += f(row[c]);
  float sum = 0;
  for (int j = 0; j < kLanes; ++j) sum += part[j];
  return sum;
}
}  // namespace

// One row of C values normalised, then the affine.
inline void norm_row(const float* row, const float* weight, const float* bias, float* out, std::int64_t C, float eps) {
  const float mean = row_sum(row, C, [](float v) { return v; }) / C;
  const float var = row_sum(row, C, [mean](float v) { return (v - mean) * (v - mean); }) / C;
  const float inv = 1.0f / std::sqrt(var + eps);
  for (std::int64_t c = 0; c < C; ++c) out[c] = (row[c] - mean) * inv * weight[c] + bias[c];
}

void layernorm(const float* x, const float* weight, const float* bias, float* y, std::int64_t N, std::int64_t C,
               float eps) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) norm_row(x + n * C, weight, bias, y + n * C, C, eps);
}

void group_norm_ref(const float* x, const float* weight, const float* bias, float* y, std::int64_t N, std::int64_t C,
                    std::int64_t groups, float eps) {
  const std::int64_t S = C / groups;
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t g = 0; g < groups; ++g)
      layernorm_ref(x + n * C + g * S, weight + g * S, bias + g * S, y + n * C + g * S, 1, S, eps);
}

void group_norm_rows(const float* x, const float* weight, const float* bias, float* y, std::int64_t row_begin,
                     std::int64_t row_end, std::int64_t C, std::int64_t groups, float eps) {
  const std::int64_t S = C / groups;
  for (std::int64_t n = row_begin; n < row_end; ++n)
    for (std::int64_t g = 0; g < groups; ++g)
      norm_row(x + n * C + g * S, weight + g * S, bias + g * S, y + n * C + g * S, S, eps);
}

void group_norm(const float* x, const float* weight, const float* bias, float* y, std::int64_t N, std::int64_t C,
                std::int64_t groups, float eps) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) group_norm_rows(x, weight, bias, y, n, n + 1, C, groups, eps);
}

void layernorm_backward_ref(const float* x, const float* weight, const float* dy, float* dx, float* dweight,
                            float* dbias, std::int64_t N, std::int64_t C, float eps) {
  std::vector<double> xhat(C), g(C);
  for (std::int64_t n = 0; n < N; ++n) {
    const float *row = x + n * C, *d = dy + n * C;
    double mean = 0, var = 0;
    for (std::int64_t c = 0; c < C; ++c) mean += row[c];
    mean /= C;
    for (std::int64_t c = 0; c < C; ++c) var += (row[c] - mean) * (row[c] - mean);
    const double rstd = 1.0 / std::sqrt(var / C + eps);
    double mg = 0, mgx = 0;
    for (std::int64_t c = 0; c < C; ++c) {
      xhat[c] = (row[c] - mean) * rstd, g[c] = static_cast<double>(d[c]) * weight[c];
      mg += g[c], mgx += g[c] * xhat[c];
    }
    mg /= C, mgx /= C;
    for (std::int64_t c = 0; c < C; ++c) {
      dx[n * C + c] += static_cast<float>(rstd * (g[c] - mg - xhat[c] * mgx));
      dweight[c] += static_cast<float>(d[c] * xhat[c]);
      dbias[c] += d[c];
    }
  }
}

void layernorm_backward(const float* x, const float* weight, const float* dy, float* dx, float* dweight, float* dbias,
                        std::int64_t N, std::int64_t C, float eps) {
  group_norm_backward(x, weight, dy, dx, dweight, dbias, N, C, 1, eps);
}

void group_norm_backward(const float* x, const float* weight, const float* dy, float* dx, float* dweight,
                         float* dbias, std::int64_t N, std::int64_t C, std::int64_t groups, float eps) {
  const std::int64_t S = C / groups;
  std::vector<float> mean(N * groups), rstd(N * groups);
#pragma omp parallel for schedule(static)
  for (std::int64_t ng = 0; ng < N * groups; ++ng) {
    const std::int64_t off = ng * S;  // row n, group g: channels [g·S, (g+1)·S) of row n
    const float *row = x + off, *d = dy + off, *w = weight + (ng % groups) * S;
    float sum = 0;
    for (std::int64_t c = 0; c < S; ++c) sum += row[c];
    const float mu = sum / S;
    float sq = 0;
    for (std::int64_t c = 0; c < S; ++c) sq += (row[c] - mu) * (row[c] - mu);
    const float r = 1.0f / std::sqrt(sq / S + eps);
    float mg = 0, mgx = 0;
    for (std::int64_t c = 0; c < S; ++c) {
      const float g = d[c] * w[c];
      mg += g, mgx += g * (row[c] - mu) * r;
    }
    mg /= S, mgx /= S;
    for (std::int64_t c = 0; c < S; ++c) dx[off + c] += r * (d[c] * w[c] - mg - (row[c] - mu) * r * mgx);
    mean[ng] = mu, rstd[ng] = r;
  }
  // Parameter gradients by channel ranges: every sum runs over the rows in
  // order, so the result does not depend on the thread count.
  constexpr std::int64_t kRange = 64;
#pragma omp parallel for schedule(static)
  for (std::int64_t c0 = 0; c0 < C; c0 += kRange) {
    const std::int64_t c1 = std::min(C, c0 + kRange);
    float gw[kRange] = {}, gb[kRange] = {};
    for (std::int64_t n = 0; n < N; ++n) {
      const float *row = x + n * C, *d = dy + n * C;
      for (std::int64_t c = c0; c < c1; ++c) {
        const std::int64_t stat = n * groups + c / S;
        gw[c - c0] += d[c] * (row[c] - mean[stat]) * rstd[stat];
        gb[c - c0] += d[c];
      }
    }
    for (std::int64_t c = c0; c < c1; ++c) dweight[c] += gw[c - c0], dbias[c] += gb[c - c0];
  }
}

}  // namespace vrwkv::ops
