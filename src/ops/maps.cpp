#include "ops/maps.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace vrwkv::ops {

namespace {
// The two source taps and the weight of the second for each output index (PyTorch's linear upsampling).
struct Taps {
  std::vector<std::int64_t> i0, i1;
  std::vector<double> l1;
  Taps(std::int64_t in, std::int64_t out, double scale) : i0(out), i1(out), l1(out) {
    for (std::int64_t o = 0; o < out; ++o) {
      const double src = std::max(0.0, scale * (o + 0.5) - 0.5);
      const std::int64_t a = std::min(static_cast<std::int64_t>(src), in - 1);
      i0[o] = a;
      i1[o] = a + (a < in - 1 ? 1 : 0);
      l1[o] = src - a;
    }
  }
};
}  // namespace

void resize_bilinear(const float* x, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C, float* y,
                     std::int64_t Ho, std::int64_t Wo, double scale_h, double scale_w, std::int64_t y_stride) {
  const std::int64_t ys = y_stride ? y_stride : C;
  const Taps th(H, Ho, scale_h), tw(W, Wo, scale_w);
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t oy = 0; oy < Ho; ++oy) {
      const double ly1 = th.l1[oy], ly0 = 1 - ly1;
      const float* r0 = x + (b * H + th.i0[oy]) * W * C;
      const float* r1 = x + (b * H + th.i1[oy]) * W * C;
      for (std::int64_t ox = 0; ox < Wo; ++ox) {
        const double lx1 = tw.l1[ox], lx0 = 1 - lx1;
        const float *a = r0 + tw.i0[ox] * C, *bb = r0 + tw.i1[ox] * C, *c = r1 + tw.i0[ox] * C,
                    *d = r1 + tw.i1[ox] * C;
        float* out = y + ((b * Ho + oy) * Wo + ox) * ys;
        for (std::int64_t ch = 0; ch < C; ++ch)
          out[ch] = static_cast<float>(ly0 * (lx0 * a[ch] + lx1 * bb[ch]) + ly1 * (lx0 * c[ch] + lx1 * d[ch]));
      }
    }
}

void resize_bilinear_nchw(const float* x, std::int64_t B, std::int64_t C, std::int64_t H, std::int64_t W, float* y,
                          std::int64_t Ho, std::int64_t Wo) {
  // Separable, with the arithmetic of the direct form: each source row is interpolated along x once
  // (h = lx0·a + lx1·b, in float64), then every output row blends two of those rows (ly0·h0 + ly1·h1).
  const Taps th(H, Ho, bilinear_scale(H, Ho)), tw(W, Wo, bilinear_scale(W, Wo));
#pragma omp parallel
  {
    std::vector<double> rows(H * Wo);  // one plane's rows, interpolated along x
#pragma omp for schedule(static)
    for (std::int64_t bc = 0; bc < B * C; ++bc) {
      const float* plane = x + bc * H * W;
      for (std::int64_t iy = 0; iy < H; ++iy) {
        const float* r = plane + iy * W;
        double* h = rows.data() + iy * Wo;
        for (std::int64_t ox = 0; ox < Wo; ++ox) {
          const double lx1 = tw.l1[ox], lx0 = 1 - lx1;
          h[ox] = lx0 * r[tw.i0[ox]] + lx1 * r[tw.i1[ox]];
        }
      }
      for (std::int64_t oy = 0; oy < Ho; ++oy) {
        const double ly1 = th.l1[oy], ly0 = 1 - ly1;
        const double *h0 = rows.data() + th.i0[oy] * Wo, *h1 = rows.data() + th.i1[oy] * Wo;
        float* out = y + (bc * Ho + oy) * Wo;
#pragma omp simd
        for (std::int64_t ox = 0; ox < Wo; ++ox) out[ox] = static_cast<float>(ly0 * h0[ox] + ly1 * h1[ox]);
      }
    }
  }
}

void max_pool(const float* x, float* y, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C,
              std::int64_t k, std::int64_t stride, std::int64_t pad) {
  const std::int64_t Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t oy = 0; oy < Ho; ++oy)
      for (std::int64_t ox = 0; ox < Wo; ++ox) {
        float* out = y + ((b * Ho + oy) * Wo + ox) * C;
        std::fill(out, out + C, -INFINITY);
        for (std::int64_t ky = 0; ky < k; ++ky) {
          const std::int64_t iy = oy * stride - pad + ky;
          if (iy < 0 || iy >= H) continue;
          for (std::int64_t kx = 0; kx < k; ++kx) {
            const std::int64_t ix = ox * stride - pad + kx;
            if (ix < 0 || ix >= W) continue;
            const float* in = x + ((b * H + iy) * W + ix) * C;
            for (std::int64_t ch = 0; ch < C; ++ch) out[ch] = std::max(out[ch], in[ch]);
          }
        }
      }
}

void adaptive_avg_pool(const float* x, float* y, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C,
                       std::int64_t s) {
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < s; ++i)
      for (std::int64_t j = 0; j < s; ++j) {
        const std::int64_t y0 = i * H / s, y1 = ((i + 1) * H + s - 1) / s;
        const std::int64_t x0 = j * W / s, x1 = ((j + 1) * W + s - 1) / s;
        std::vector<double> acc(C, 0.0);
        for (std::int64_t iy = y0; iy < y1; ++iy)
          for (std::int64_t ix = x0; ix < x1; ++ix) {
            const float* in = x + ((b * H + iy) * W + ix) * C;
            for (std::int64_t ch = 0; ch < C; ++ch) acc[ch] += in[ch];
          }
        const double n = static_cast<double>((y1 - y0) * (x1 - x0));
        float* out = y + ((b * s + i) * s + j) * C;
        for (std::int64_t ch = 0; ch < C; ++ch) out[ch] = static_cast<float>(acc[ch] / n);
      }
}

void batch_norm_ref(const float* x, float* y, std::int64_t n, std::int64_t C, const float* weight, const float* bias,
                    const float* mean, const float* var, bool relu) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t c = 0; c < C; ++c) {
      double v = (x[i * C + c] - static_cast<double>(mean[c])) / std::sqrt(static_cast<double>(var[c]) + kBatchNormEps) *
                     weight[c] +
                 bias[c];
      if (relu && v < 0) v = 0;
      y[i * C + c] = static_cast<float>(v);
    }
}

void batch_norm(const float* x, float* y, std::int64_t n, std::int64_t C, const float* weight, const float* bias,
                const float* mean, const float* var, bool relu) {
  std::vector<float> scale(C), shift(C);
  batch_norm_affine(C, weight, bias, mean, var, scale.data(), shift.data());
  const float* sc = scale.data();
  const float* sh = shift.data();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
#pragma omp simd
    for (std::int64_t c = 0; c < C; ++c) y[i * C + c] = x[i * C + c] * sc[c] + sh[c];
    if (relu)
      for (std::int64_t c = 0; c < C; ++c) y[i * C + c] = std::max(y[i * C + c], 0.0f);
  }
}

void batch_norm_affine(std::int64_t C, const float* weight, const float* bias, const float* mean, const float* var,
                       float* scale, float* shift) {
  for (std::int64_t c = 0; c < C; ++c) {
    const double sc = weight[c] / std::sqrt(static_cast<double>(var[c]) + kBatchNormEps);
    scale[c] = static_cast<float>(sc);
    shift[c] = static_cast<float>(bias[c] - mean[c] * sc);
  }
}

void relu(float* x, std::int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (std::int64_t i = 0; i < n; ++i) x[i] = x[i] > 0 ? x[i] : 0.0f;
}

void gelu(float* x, std::int64_t n) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(0.5 * x[i] * (1.0 + std::erf(x[i] * M_SQRT1_2)));
}

}  // namespace vrwkv::ops
