// Q-Shift and token mixing (VRWKV.md 1.5).
//
// x: [B,T,C] with T = H·W tokens in row-major order. q = int(C·gamma) channels
// per group; groups take their value from the left (w−s), right (w+s), upper
// (h−s) and lower (h+s) neighbour, zero beyond the border; channels [4q, C)
// are copied. Mixing: out = x·μ + xx·(1−μ).
//
// RWKV's original 1-D token shift (ABLATION.md B.3), out[t] = x[t−s] over
// each image's T tokens in raster order (zeros for t < s) for every channel,
// is this Q-Shift on a 1×T grid with the first group ("from the left")
// holding all channels: grid one_d_shift_grid(grid), channel_gamma
// kOneDShiftGamma. channel_gamma may be up to 1; groups past a head's
// channels are then empty.
//
// head: the shift applies inside every head of `head` channels (VRWKV6's
// q_shift_multihead, VRWKV6.md A.4: q = int(head·gamma) per head); 0 means one
// head of all C channels (VRWKV). A null μ_i means μ = 0: out_i = xx, the
// shifted tensor itself (and no dμ_i in the backward).
#pragma once

#include <cstdint>

#include "ops/bf16.hpp"

namespace vrwkv::ops {

struct Grid {
  std::int64_t H = 0, W = 0;
  std::int64_t tokens() const { return H * W; }
};

inline Grid one_d_shift_grid(Grid image) { return {1, image.tokens()}; }
constexpr double kOneDShiftGamma = 1.0;

// The shifted tensor xx alone: [B,T,C].
void q_shift_ref(const float* x, float* xx, std::int64_t B, Grid grid, std::int64_t C, int shift_pixel,
                 double channel_gamma, std::int64_t head = 0);

// Up to three mixes of one shift in one pass: out_i = x·mu_i + xx·(1−mu_i) for
// i < count (mu_i: [C], out_i: [B,T,C]). shift_pixel = 0 copies x.
void q_shift_mix_ref(const float* x, std::int64_t B, Grid grid, std::int64_t C, int shift_pixel, double channel_gamma,
                     int count, const float* const* mu, float* const* out, std::int64_t head = 0);
void q_shift_mix(const float* x, std::int64_t B, Grid grid, std::int64_t C, int shift_pixel, double channel_gamma,
                 int count, const float* const* mu, float* const* out, std::int64_t head = 0);
// Only the token rows [row_begin, row_end) of out's [B·T] rows (x is read
// around them): one thread's part; written in float32 or in bf16 (each value
// rounded once) for bf16 GEMMs.
void q_shift_mix_rows(const float* x, Grid grid, std::int64_t C, int shift_pixel, double channel_gamma, int count,
                      const float* const* mu, float* const* out, std::int64_t row_begin, std::int64_t row_end,
                      std::int64_t head = 0);
void q_shift_mix_rows(const float* x, Grid grid, std::int64_t C, int shift_pixel, double channel_gamma, int count,
                      const float* const* mu, Bf16* const* out, std::int64_t row_begin, std::int64_t row_end,
                      std::int64_t head = 0);

// Backward of q_shift_mix, adding to the gradients: with dxx = Σ_i dout_i·(1−μ_i),
//   dx += Σ_i dout_i·μ_i + shiftᵀ(dxx)   (each group's value goes back to the neighbour it came from),
//   dmu_i += Σ_{b,t} dout_i·(x − xx).
// shift_pixel 0: dx += Σ_i dout_i and dmu is not touched (there is no μ).
void q_shift_mix_backward_ref(const float* x, std::int64_t B, Grid grid, std::int64_t C, int shift_pixel,
                              double channel_gamma, int count, const float* const* mu, const float* const* dout,
                              float* dx, float* const* dmu, std::int64_t head = 0);
void q_shift_mix_backward(const float* x, std::int64_t B, Grid grid, std::int64_t C, int shift_pixel,
                          double channel_gamma, int count, const float* const* mu, const float* const* dout, float* dx,
                          float* const* dmu, std::int64_t head = 0);
// q = int(C·gamma), as Python computes it.
std::int64_t q_shift_group(std::int64_t C, double channel_gamma);

}  // namespace vrwkv::ops
