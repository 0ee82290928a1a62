// Patch embedding (VRWKV.md 1.2): zero padding at the bottom/right up to a
// multiple of the patch size p ("corner" AdaptivePadding), then a p×p stride-p
// convolution with bias, flattened row-major to tokens.
// x: [B,Cin,H,W]; weight: [C,Cin,p,p]; bias: [C]; y: [B,T,C] with
// T = ceil(H/p)·ceil(W/p). `scratch` holds B·T·Cin·p² floats (the fast
// version's im2col patches; the reference ignores it).
#pragma once

#include <cstdint>

#include "ops/qshift.hpp"

namespace vrwkv::ops {

Grid patch_grid(std::int64_t H, std::int64_t W, std::int64_t p);

void patch_embed_ref(const float* x, const float* weight, const float* bias, float* y, std::int64_t B,
                     std::int64_t Cin, std::int64_t H, std::int64_t W, std::int64_t C, std::int64_t p,
                     float* scratch = nullptr);
void patch_embed(const float* x, const float* weight, const float* bias, float* y, std::int64_t B, std::int64_t Cin,
                 std::int64_t H, std::int64_t W, std::int64_t C, std::int64_t p, float* scratch);

// Backward (the input needs no gradient): dweight += Σ dy ⊗ patches,
// dbias += Σ dy. dy: [B,T,C]; `scratch` as for patch_embed.
void patch_embed_backward_ref(const float* x, const float* dy, float* dweight, float* dbias, std::int64_t B,
                              std::int64_t Cin, std::int64_t H, std::int64_t W, std::int64_t C, std::int64_t p,
                              float* scratch = nullptr);
void patch_embed_backward(const float* x, const float* dy, float* dweight, float* dbias, std::int64_t B,
                          std::int64_t Cin, std::int64_t H, std::int64_t W, std::int64_t C, std::int64_t p,
                          float* scratch);

// dx += dL/dx for input x [B,Cin,H,W] from dy [B,T,C] (float64 accumulation).
void patch_embed_backward_input(const float* weight, const float* dy, float* dx, std::int64_t B, std::int64_t Cin,
                                std::int64_t H, std::int64_t W, std::int64_t C, std::int64_t p);

}  // namespace vrwkv::ops
