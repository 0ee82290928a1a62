// Bi-WKV6, the bidirectional attention of VRWKV6 (VRWKV6.md A.5): what the
// official cuda_v6 kernel computes, per head of N channels (N = 64 in every
// official model) with a data-dependent decay δ_t = exp(−exp(w_t)):
//   y_t[i] = Σ_j r_t[j]·( u[j]·k_t[j]·v_t[i] + Σ_{s≠t} P(s,t)[j]·k_s[j]·v_s[i] ),
//   P(s,t) = Π of δ_m over the tokens m strictly between s and t.
// No division by T, no denominator. As two scans over an N×N state per head:
// an anti-causal one without the bonus and a causal one with it.
//
// r, k, v, w (raw decay, before −exp), y: [B,T,C] with C = H·N, head h owning
// channels [h·N, (h+1)·N); u: [C] (time_faaaa [H,N], flattened).
#pragma once

#include <cstdint>

namespace vrwkv::ops {

// Forward. _ref: the two scans in float64 (the definition, O(T·C·N)); fast:
// float32 scans, the (image, head, block of value channels) problems spread
// over the threads.
void wkv6_ref(const float* r, const float* k, const float* v, const float* w, const float* u, float* y,
              std::int64_t B, std::int64_t T, std::int64_t C, std::int64_t N);
void wkv6(const float* r, const float* k, const float* v, const float* w, const float* u, float* y, std::int64_t B,
          std::int64_t T, std::int64_t C, std::int64_t N);
// The fast path's pieces: the decays δ = exp(−exp(w)) of n values (float32,
// relative error ≲ 1e-6 where δ is not negligible), and share `share` of
// `shares` equal parts of the scans' problems on decays made so (what one
// thread of a team computes; all of y for `shares` calls).
void wkv6_decays(const float* w, float* decay, std::int64_t n);
void wkv6_share(const float* r, const float* k, const float* v, const float* decay, const float* u, float* y,
                std::int64_t B, std::int64_t T, std::int64_t C, std::int64_t N, int share, int shares);

// Backward: from gy = dL/dy, adds dL/dr, dL/dk, dL/dv, dL/dw ([B,T,C]; gw with
// respect to the raw w) and dL/du ([C], summed over the batch). The exact
// gradient of the forward (which is also what the official kernels compute).
// With A_t, B_t the causal and anti-causal key-value states at t (Σ over s<t
// resp. s>t of P(s,t)·k_s v_sᵀ) and Ra_t, Rc_t the same sums of r_s gy_sᵀ:
//   gr_t = (A_t + B_t)·gy_t + u⊙k_t·(v_t·gy_t)
//   gk_t = (Ra_t + Rc_t)·v_t + u⊙r_t·(v_t·gy_t)
//   gv_t = (Ra_t + Rc_t)ᵀ·k_t + (Σ_j u r_t k_t)·gy_t
//   gw_t = −e^{w_t}·δ_t ⊙ rowsum(A_t ⊙ Rc_t + Ra_t ⊙ B_t),   gu = Σ_t r_t⊙k_t·(v_t·gy_t).
// gw pairs a causal state with an anti-causal one at the same token: the
// causal states are recomputed chunk by chunk from checkpoints (√T chunks), so
// memory stays O(√T·N²) per problem and nothing cancels. _ref: float64; fast:
// float32, the (image, head) problems over the threads.
void wkv6_backward_ref(const float* r, const float* k, const float* v, const float* w, const float* u,
                       const float* gy, float* gr, float* gk, float* gv, float* gw, float* gu, std::int64_t B,
                       std::int64_t T, std::int64_t C, std::int64_t N);
void wkv6_backward(const float* r, const float* k, const float* v, const float* w, const float* u, const float* gy,
                   float* gr, float* gk, float* gv, float* gw, float* gu, std::int64_t B, std::int64_t T,
                   std::int64_t C, std::int64_t N);

}  // namespace vrwkv::ops
