// Bi-WKV, the bidirectional linear attention of Vision-RWKV (VRWKV.md 2),
// and its uni-directional restriction (the ablation's causal WKV).
//
// Per batch b and channel c an independent problem over t = 0..T−1 with
// w = spatial_decay/T and u = spatial_first/T (no exponential on w):
//   paper    (2.2): y_t = Σ_j α(t,j)·e^{k_j}·v_j / (Σ_j α(t,j)·e^{k_j} + ε_t),
//                   α = e^{−(|t−j|−1)·w} for j ≠ t, e^{u} for j = t;
//   official (2.3): the chunked computation of the official CUDA kernel with S
//                   chunks of L = ceil(T/S) tokens; α is the table of 2.3.
// ε_t = 1e-6·e^{m_t} (the kernel's EPS added after rescaling by the largest
// exponent m_t). paper: m_t is the largest exponent of the sum; official:
// m_t = max(u + k_t, max_{j≠t} k_j − |t−j|·w).
//
// Direction Uni (ABLATION.md B.3): the paper formula restricted to j ≤ t,
//   y_t = (Σ_{j<t} e^{−(t−j−1)w+k_j}v_j + e^{u+k_t}v_t) / (Σ_{j<t} e^{−(t−j−1)w+k_j} + e^{u+k_t} + ε_t),
// m_t the largest exponent of row t; the semantics do not apply. Its scans
// keep RWKV-4's running maximum (state = e^{p}·(a, b)), so no operand range
// can overflow them (w = exp(spatial_decay) is unbounded).
//
// k, v, y: [B,T,C]; w, u: [C].
#pragma once

#include <cstdint>

#include "vrwkv/wkv.hpp"

namespace vrwkv::ops {

struct Wkv {
  WkvSemantics semantics = WkvSemantics::Official;
  int chunks = 32;  // S, official semantics only
  WkvDirection direction = WkvDirection::Bi;
};

constexpr double kWkvEps = 1e-6;

// O(T²) float64 definitions, for tests only; computes y for tokens
// [t_begin, t_end) (all by default) and leaves the rest of y untouched.
void biwkv_ref(const float* w, const float* u, const float* k, const float* v, float* y, std::int64_t B,
               std::int64_t T, std::int64_t C, Wkv wkv, std::int64_t t_begin = 0, std::int64_t t_end = -1);
// biwkv_ref over all tokens, with the signature of biwkv.
void biwkv_ref_all(const float* w, const float* u, const float* k, const float* v, float* y, std::int64_t B,
                   std::int64_t T, std::int64_t C, Wkv wkv);
// O(T·C) scans, float64 accumulation.
void biwkv(const float* w, const float* u, const float* k, const float* v, float* y, std::int64_t B, std::int64_t T,
           std::int64_t C, Wkv wkv);
// The same for share `share` of `shares` equal parts of the (image, 32-channel
// block) problems: what one thread of a team computes (all of y for `shares` calls).
void biwkv_share(const float* w, const float* u, const float* k, const float* v, float* y, std::int64_t B,
                 std::int64_t T, std::int64_t C, Wkv wkv, int share, int shares);


// Backward: given gy = dL/dy, adds dL/dw, dL/du ([C], summed over the batch)
// and dL/dk, dL/dv ([B,T,C]) to gw, gu, gk, gv: the exact gradient of the
// forward of either semantics (not the official kernel's own backward, whose
// gk and gv use the paper weights; VRWKV.md 2.6). With D_t the denominator
// and G_t = gy_t/D_t:
//   gv_j = e^{k_j}·Σ_t α(t,j)·G_t,   gk_j = e^{k_j}·Σ_t α(t,j)·G_t·(v_j − y_t),
//   gu   = Σ_t G_t·e^{u+k_t}·(v_t − y_t),
//   gw   = Σ_t G_t·Σ_j ∂α(t,j)/∂w·e^{k_j}·(v_j − y_t).
// ε_t is held constant (its derivative is below 1e-6 of D_t's). Uni: the
// same with α(t,j) = 0 for j > t.
// The reference is the O(T²) float64 definition; the fast version is O(T·C)
// scans in float64.
void biwkv_backward_ref(const float* w, const float* u, const float* k, const float* v, const float* gy, float* gw,
                        float* gu, float* gk, float* gv, std::int64_t B, std::int64_t T, std::int64_t C, Wkv wkv);
void biwkv_backward(const float* w, const float* u, const float* k, const float* v, const float* gy, float* gw,
                    float* gu, float* gk, float* gv, std::int64_t B, std::int64_t T, std::int64_t C, Wkv wkv);

}  // namespace vrwkv::ops
