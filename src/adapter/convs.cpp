#include "adapter/convs.hpp"

#include <algorithm>

#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/maps.hpp"

namespace vrwkv::adapter {

Tensor to_nchw(const float* x, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C) {
  Tensor t(DType::F32, {B, C, H, W});
  float* o = t.f32();
  // In tiles of 64 pixels × 64 channels, so that reads and writes both stay in cache lines.
  const std::int64_t P = H * W;
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t p0 = 0; p0 < P; p0 += 64)
      for (std::int64_t c0 = 0; c0 < C; c0 += 64)
        for (std::int64_t c = c0; c < std::min(C, c0 + 64); ++c)
          for (std::int64_t p = p0; p < std::min(P, p0 + 64); ++p) o[(b * C + c) * P + p] = x[(b * P + p) * C + c];
  return t;
}

Map from_nchw(const Tensor& t) {
  Map m(t.dim(0), t.dim(2), t.dim(3), t.dim(1));
  const std::int64_t P = m.H * m.W, C = m.C;
  const float* x = t.f32();
  for (std::int64_t b = 0; b < m.B; ++b)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t p = 0; p < P; ++p) m.v[(b * P + p) * C + c] = x[(b * C + c) * P + p];
  return m;
}

ops::Conv2d& ConvCache::conv(const ConvW& c) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<ops::Conv2d>& slot = convs_[&c];
  if (!slot) {
    if (c.bn.weight) {
      std::vector<float> scale(c.shape.Co), shift(c.shape.Co);
      ops::batch_norm_affine(c.shape.Co, c.bn.weight, c.bn.bias, c.bn.mean, c.bn.var, scale.data(), shift.data());
      slot = std::make_unique<ops::Conv2d>(c.weight, c.bias, c.shape, scale.data(), shift.data(), c.relu);
    } else {
      slot = std::make_unique<ops::Conv2d>(c.weight, c.bias, c.shape, nullptr, nullptr, c.relu);
    }
  }
  return *slot;
}

ops::ConvTranspose2d& ConvCache::conv_transpose(const ConvW& c) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<ops::ConvTranspose2d>& slot = transposed_[&c];
  if (!slot) slot = std::make_unique<ops::ConvTranspose2d>(c.weight, c.bias, c.shape);
  return *slot;
}

ops::PackedLinear& ConvCache::linear(const LinearW& l, DType weights, const float* weight) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<ops::PackedLinear>& slot = linears_[{&l, weights}];
  if (!slot) slot = std::make_unique<ops::PackedLinear>(weight ? weight : l.weight, l.out, l.in, weights, nullptr, l.bias);
  return *slot;
}

void Runner::conv(const ConvW& cw, const float* x, float* y, std::int64_t B, std::int64_t H, std::int64_t W,
                  std::int64_t y_stride) {
  const ops::ConvShape& sh = cw.shape;
  const std::int64_t n = B * sh.out(H) * sh.out(W), ys = y_stride ? y_stride : sh.Co;
  if (!reference_ && ys == sh.Co) return cache_.conv(cw)(x, y, B, H, W, compute_);
  // A strided destination: oneDNN would fall back to a slow generic kernel, so copy instead.
  Floats tmp(n * sh.Co);  // written in full below
  if (!reference_) {
    cache_.conv(cw)(x, tmp.data(), B, H, W, compute_);
  } else {
    ops::conv2d_ref(x, cw.weight, cw.bias, tmp.data(), B, H, W, sh);
    if (cw.bn.weight)
      ops::batch_norm_ref(tmp.data(), tmp.data(), n, sh.Co, cw.bn.weight, cw.bn.bias, cw.bn.mean, cw.bn.var, cw.relu);
    else if (cw.relu)
      ops::relu(tmp.data(), static_cast<std::int64_t>(tmp.size()));
  }
  for (std::int64_t i = 0; i < n; ++i) std::copy_n(tmp.data() + i * sh.Co, sh.Co, y + i * ys);
}

Map Runner::conv(const ConvW& cw, const Map& x) {
  Map y(x.B, cw.shape.out(x.H), cw.shape.out(x.W), cw.shape.Co);
  conv(cw, x.data(), y.data(), x.B, x.H, x.W);
  return y;
}

Map Runner::conv_transpose(const ConvW& cw, const Map& x) {
  const std::int64_t k = cw.shape.k;
  Map y(x.B, x.H * k, x.W * k, cw.shape.Co);
  if (reference_)
    ops::conv_transpose2d_ref(x.data(), cw.weight, cw.bias, y.data(), x.B, x.H, x.W, cw.shape);
  else
    cache_.conv_transpose(cw)(x.data(), y.data(), x.B, x.H, x.W);
  if (cw.relu) ops::relu(y.data(), static_cast<std::int64_t>(y.v.size()));
  return y;
}

void Runner::linear(const LinearW& l, const float* x, float* y, std::int64_t M, const float* weight) {
  if (M == 0) return;
  if (reference_) return ops::linear_ref(x, l.weight, l.bias, y, M, l.out, l.in);
  cache_.linear(l, DType::F32, weight)(ops::Activations{const_cast<float*>(x), DType::F32}, ops::Activations{y, DType::F32}, M);
}

void Runner::layernorm(const NormW& n, const float* x, float* y, std::int64_t N, std::int64_t C, float eps) {
  (reference_ ? ops::layernorm_ref : ops::layernorm)(x, n.weight, n.bias, y, N, C, eps);
}

}  // namespace vrwkv::adapter
