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


// Backward, adding to the gradients: with x̂ = (x − mean)·rstd,
//   dx += rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dy·weight;
//   dweight += Σ_n dy·x̂, dbias += Σ_n dy.
// dx may not alias x or dy.
void layernorm_backward_ref(const float* x, const float* weight, const float* dy, float* dx, float* dweight,
                            float* dbias, std::int64_t N, std::int64_t C, float eps = kLayerNormEps);
void layernorm_backward(const float* x, const float* weight, const float* dy, float* dx, float* dweight, float* dbias,
                        std::int64_t N, std::int64_t C, float eps = kLayerNormEps);

}  // namespace vrwkv::ops
