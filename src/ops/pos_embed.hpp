// Position-embedding resize (VRWKV.md 1.3): mmcls resize_pos_embed with
// F.interpolate(mode='bicubic', align_corners=False): Keys cubic convolution
// with A = −0.75, source coordinate (dst + 0.5)·(in/out) − 0.5, 4×4 taps with
// indices clamped to the border, no anti-aliasing.
// src: [H0·W0, C] (row-major grid of tokens); dst: [H·W, C].
#pragma once

#include <cstdint>

#include "ops/qshift.hpp"

namespace vrwkv::ops {

void resize_pos_embed_ref(const float* src, Grid from, float* dst, Grid to, std::int64_t C);
void resize_pos_embed(const float* src, Grid from, float* dst, Grid to, std::int64_t C);

// Backward of the resize (a fixed linear map): dsrc += Mᵀ·ddst, float64 sums.
void resize_pos_embed_backward(const float* ddst, Grid to, float* dsrc, Grid from, std::int64_t C);

}  // namespace vrwkv::ops
