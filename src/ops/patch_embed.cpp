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

namespace {
// im2col into [B·T, Cin·p·p], zeros where the padding is.
void im2col(const float* x, float* cols_out, std::int64_t B, std::int64_t Cin, std::int64_t H, std::int64_t W,
            std::int64_t p) {
  const Grid g = patch_grid(H, W, p);
  const std::int64_t rows = B * g.tokens(), cols = Cin * p * p;
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t b = r / g.tokens(), gh = (r % g.tokens()) / g.W, gw = r % g.W;
    float* dst = cols_out + r * cols;
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
}
}  // namespace

void patch_embed(const float* x, const float* weight, const float* bias, float* y, std::int64_t B, std::int64_t Cin,
                 std::int64_t H, std::int64_t W, std::int64_t C, std::int64_t p, float* scratch) {
  im2col(x, scratch, B, Cin, H, W, p);
  linear(scratch, weight, bias, y, B * patch_grid(H, W, p).tokens(), C, Cin * p * p);
}

void patch_embed_backward_ref(const float* x, const float* dy, float* dweight, float* dbias, std::int64_t B,
                              std::int64_t Cin, std::int64_t H, std::int64_t W, std::int64_t C, std::int64_t p,
                              float*) {
  const Grid g = patch_grid(H, W, p);
  for (std::int64_t co = 0; co < C; ++co) {
    double db = 0;
    for (std::int64_t r = 0; r < B * g.tokens(); ++r) db += dy[r * C + co];
    dbias[co] += static_cast<float>(db);
    for (std::int64_t ci = 0; ci < Cin; ++ci)
      for (std::int64_t kh = 0; kh < p; ++kh)
        for (std::int64_t kw = 0; kw < p; ++kw) {
          double acc = 0;
          for (std::int64_t b = 0; b < B; ++b)
            for (std::int64_t gh = 0; gh < g.H; ++gh)
              for (std::int64_t gw = 0; gw < g.W; ++gw) {
                const std::int64_t ih = gh * p + kh, iw = gw * p + kw;
                if (ih >= H || iw >= W) continue;
                acc += static_cast<double>(dy[((b * g.H + gh) * g.W + gw) * C + co]) *
                       x[((b * Cin + ci) * H + ih) * W + iw];
              }
          dweight[((co * Cin + ci) * p + kh) * p + kw] += static_cast<float>(acc);
        }
  }
}

void patch_embed_backward(const float* x, const float* dy, float* dweight, float* dbias, std::int64_t B,
                          std::int64_t Cin, std::int64_t H, std::int64_t W, std::int64_t C, std::int64_t p,
                          float* scratch) {
  im2col(x, scratch, B, Cin, H, W, p);
  linear_backward(scratch, nullptr, dy, nullptr, dweight, dbias, B * patch_grid(H, W, p).tokens(), C, Cin * p * p);
}

void patch_embed_backward_input(const float* weight, const float* dy, float* dx, std::int64_t B, std::int64_t Cin,
                                std::int64_t H, std::int64_t W, std::int64_t C, std::int64_t p) {
  const Grid g = patch_grid(H, W, p);
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t ci = 0; ci < Cin; ++ci)
      for (std::int64_t ih = 0; ih < H; ++ih)
        for (std::int64_t iw = 0; iw < W; ++iw) {
          const std::int64_t kh = ih % p, kw = iw % p;
          const float* d = dy + ((b * g.H + ih / p) * g.W + iw / p) * C;
          double acc = 0;
          for (std::int64_t co = 0; co < C; ++co)
            acc += static_cast<double>(d[co]) * weight[((co * Cin + ci) * p + kh) * p + kw];
          dx[((b * Cin + ci) * H + ih) * W + iw] += static_cast<float>(acc);
        }
}

}  // namespace vrwkv::ops
