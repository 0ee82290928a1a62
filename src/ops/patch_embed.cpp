#include "ops/patch_embed.hpp"

#include <algorithm>

#include "ops/linear.hpp"

namespace vrwkv::ops {

Grid patch_grid(std::int64_t H, std::int64_t W, std::int64_t p) { return {(H + p - 1) / p, (W + p - 1) / p}; }

void patch_embed_ref(const float* x, const float* weight, const float* bias, float* y, std::int64_t B,
                     std::int64_t Cin, std::int64_t H, std::int64_t W, std::int64_t C, std::int64_t p, float*) {
  const Grid g = patch_grid(H, W, p);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t gh = 0; gh < g.H; ++gh)
      for (std::int64_t gw = 0; gw < g.W; ++gw)
        for (std::int64_t co = 0; co < C; ++co) {
          double acc = bias[co];
          for (std::int64_t ci = 0; ci < Cin; ++ci)
            for (std::int64_t kh = 0; kh < p; ++kh)
              for (std::int64_t kw = 0; kw < p; ++kw) {
                const std::int64_t ih = gh * p + kh, iw = gw * p + kw;
                if (ih >= H || iw >= W) continue;  // the zero padding
                acc += static_cast<double>(x[((b * Cin + ci) * H + ih) * W + iw]) *
                       weight[((co * Cin + ci) * p + kh) * p + kw];
              }
          y[((b * g.H + gh) * g.W + gw) * C + co] = static_cast<float>(acc);
        }
}

void patch_embed(const float* x, const float* weight, const float* bias, float* y, std::int64_t B, std::int64_t Cin,
                 std::int64_t H, std::int64_t W, std::int64_t C, std::int64_t p, float* scratch) {
  // im2col into [B·T, Cin·p·p] (zeros where the padding is), then one GEMM.
  const Grid g = patch_grid(H, W, p);
  const std::int64_t rows = B * g.tokens(), cols = Cin * p * p;
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t b = r / g.tokens(), gh = (r % g.tokens()) / g.W, gw = r % g.W;
    float* dst = scratch + r * cols;
    std::fill(dst, dst + cols, 0.0f);
    for (std::int64_t ci = 0; ci < Cin; ++ci)
      for (std::int64_t kh = 0; kh < p; ++kh) {
        const std::int64_t ih = gh * p + kh;
        if (ih >= H) continue;
        const float* src = x + ((b * Cin + ci) * H + ih) * W + gw * p;
        const std::int64_t n = std::min(p, W - gw * p);
        for (std::int64_t kw = 0; kw < n; ++kw) dst[(ci * p + kh) * p + kw] = src[kw];
      }
  }
  linear(scratch, weight, bias, y, rows, C, cols);
}

}  // namespace vrwkv::ops
