// Resampling, pooling and per-channel ops on NHWC maps [B,H,W,C] (DENSE.md
// (a), (c)), each as PyTorch computes it. Resampling and pooling are cheap
// next to the convolutions: one implementation serves both paths
// (accumulating in float64).
#pragma once

#include <cstdint>

namespace vrwkv::ops {

// F.interpolate(mode='bilinear', align_corners=False) to Ho×Wo. The source
// coordinate of output pixel i is max(0, scale·(i + 0.5) − 0.5) with
// scale = in/out when a size is asked for, and 1/factor when a scale factor
// is (PyTorch passes the factor through); bilinear_scale gives the former.
// y may not alias x. Channels of y are y_stride floats apart (0: C).
void resize_bilinear(const float* x, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C, float* y,
                     std::int64_t Ho, std::int64_t Wo, double scale_h, double scale_w, std::int64_t y_stride = 0);
inline double bilinear_scale(std::int64_t in, std::int64_t out) { return static_cast<double>(in) / out; }

// The same on an NCHW map [B,C,H,W] (the segmentation logits), y NCHW.
void resize_bilinear_nchw(const float* x, std::int64_t B, std::int64_t C, std::int64_t H, std::int64_t W, float* y,
                          std::int64_t Ho, std::int64_t Wo);

// MaxPool2d(k, stride, pad) (padding never wins); y [B,Ho,Wo,C].
void max_pool(const float* x, float* y, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C,
              std::int64_t k, std::int64_t stride, std::int64_t pad);

// AdaptiveAvgPool2d(s): cell i spans [floor(i·H/s), ceil((i+1)·H/s)); y [B,s,s,C].
void adaptive_avg_pool(const float* x, float* y, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C,
                       std::int64_t s);

// Eval-mode BatchNorm2d: y = (x − mean)/√(var + eps)·weight + bias, in place
// allowed; `relu` then clamps at 0. n pixels of C channels.
constexpr double kBatchNormEps = 1e-5;
void batch_norm_ref(const float* x, float* y, std::int64_t n, std::int64_t C, const float* weight, const float* bias,
                    const float* mean, const float* var, bool relu = false);
// The same in float32 as one per-channel affine (the fast path).
void batch_norm(const float* x, float* y, std::int64_t n, std::int64_t C, const float* weight, const float* bias,
                const float* mean, const float* var, bool relu = false);
// The per-channel scale and shift of that BatchNorm (for folding into a convolution).
void batch_norm_affine(std::int64_t C, const float* weight, const float* bias, const float* mean, const float* var,
                       float* scale, float* shift);

void relu(float* x, std::int64_t n);
void gelu(float* x, std::int64_t n);  // exact: x·Φ(x) = 0.5·x·(1 + erf(x/√2))

}  // namespace vrwkv::ops
