// LayerNorm over the last dimension (VRWKV.md 1.1): biased variance, eps 1e-5
// in the backbone. x, y: [N,C] (y may alias x); weight, bias: [C].
#pragma once

#include <cstdint>

namespace vrwkv::ops {

constexpr float kLayerNormEps = 1e-5f;

void layernorm_ref(const float* x, const float* weight, const float* bias, float* y, std::int64_t N, std::int64_t C,
                   float eps = kLayerNormEps);
void layernorm(const float* x, const float* weight, const float* bias, float* y, std::int64_t N, std::int64_t C,
               float eps = kLayerNormEps);

// GroupNorm of each row (VRWKV6's ln_x, VRWKV6.md A.4 step 8): the row's C
// channels in `groups` equal groups, each normalised on its own, then the
// per-channel affine. group_norm_rows: rows [row_begin, row_end) only (one
// thread's part).
void group_norm_ref(const float* x, const float* weight, const float* bias, float* y, std::int64_t N, std::int64_t C,
                    std::int64_t groups, float eps = kLayerNormEps);
void group_norm(const float* x, const float* weight, const float* bias, float* y, std::int64_t N, std::int64_t C,
                std::int64_t groups, float eps = kLayerNormEps);
void group_norm_rows(const float* x, const float* weight, const float* bias, float* y, std::int64_t row_begin,
                     std::int64_t row_end, std::int64_t C, std::int64_t groups, float eps = kLayerNormEps);

// Backward, adding to the gradients: with x̂ = (x − mean)·rstd,
//   dx += rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·weight;
//   dweight += Σ_n dy·x̂, dbias += Σ_n dy.
// dx may not alias x or dy.
void layernorm_backward_ref(const float* x, const float* weight, const float* dy, float* dx, float* dweight,
                            float* dbias, std::int64_t N, std::int64_t C, float eps = kLayerNormEps);
void layernorm_backward(const float* x, const float* weight, const float* dy, float* dx, float* dweight, float* dbias,
                        std::int64_t N, std::int64_t C, float eps = kLayerNormEps);
// The same per group (layernorm_backward is the one-group case).
void group_norm_backward(const float* x, const float* weight, const float* dy, float* dx, float* dweight,
                         float* dbias, std::int64_t N, std::int64_t C, std::int64_t groups, float eps = kLayerNormEps);

}  // namespace vrwkv::ops
