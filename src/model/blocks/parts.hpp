// What the block kinds share (blocks/vrwkv.cpp, blocks/vrwkv6.cpp): the team
// regions of the fast paths, the residual connection of the training path,
// and the block's second half, Channel Mix (VRWKV.md 1.7; VRWKV6 uses it with
// the per-head shift) with its norm and residual, of the training path with
// its backward.
#pragma once

#include <cstdint>
#include <exception>
#include <vector>

#include <omp.h>

#include "model/block.hpp"
#include "ops/layernorm.hpp"

namespace vrwkv::model::parts {

// Token rows [begin, end) of a group's B·T rows.
struct Rows {
  std::int64_t begin, end;
  std::int64_t count() const { return end - begin; }
};

// f(share, shares) on each thread of a team of `team_size`, in one OpenMP
// region (ops called inside run on the calling thread); the first exception
// is rethrown after the region.
template <class F>
void run_team(int team_size, F&& f) {
  if (team_size == 1) return f(0, 1);
  std::vector<std::exception_ptr> errors(team_size);
#pragma omp parallel num_threads(team_size)
  {
    const int share = omp_get_thread_num();
    try {
      f(share, omp_get_num_threads());
    } catch (...) {
      errors[share] = std::current_exception();
    }
  }
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

// f(rows) with each thread's share of N rows (none for a thread whose share is empty).
template <class F>
void run_team_rows(int team_size, std::int64_t N, F&& f) {
  run_team(team_size, [&](int share, int shares) {
    const Rows r{N * share / shares, N * (share + 1) / shares};
    if (r.count() > 0) f(r);
  });
}

// One block of a fast path as team regions. Pre-norm: h holds LN1(x) on
// entry (made here for the first block of a run, else by the previous
// block's last region, which makes the next block's when fuse_next); LN2
// goes to h2, so no thread overwrites rows another thread's shift reads.
// Post-norm: h holds each branch output, and x changes only in regions where
// no thread reads x around its rows. The kind's Block k provides the steps:
//   k.spatial_in(i, in, rows)                 Spatial Mix up to the WKV's operands;
//   k.wkv(i)                                  the WKV, all tokens (a region of its own);
//   k.spatial_out(i, in, out, add, rows)      the rest of Spatial Mix: out = or += the branch;
//   k.channel_mix(i, in, out, add, rows)      Channel Mix, likewise;
// `weights` the blocks' weights with ln0/ln1/ln2 and gamma1/gamma2 members.
template <class K, class W>
void run_block(K& k, const std::vector<W>& weights, std::int64_t i, bool first, bool fuse_next, bool post_norm,
               float* x, float* h, float* h2, std::int64_t N, std::int64_t C, int team) {
  const W& w = weights[i];
  const auto rows = [&](auto&& f) { run_team_rows(team, N, f); };
  const auto norm = [&](const float* weight, const float* bias, const float* in, float* out, Rows r) {
    ops::layernorm(in + r.begin * C, weight, bias, out + r.begin * C, r.count(), C, ops::kLayerNormEps);
  };
  const auto residual = [&](const float* gamma, Rows r) {  // x += γ ⊙ h (γ absent without layer scale)
    for (std::int64_t t = r.begin; t < r.end; ++t)
      for (std::int64_t c = 0; c < C; ++c) x[t * C + c] += (gamma ? gamma[c] : 1.0f) * h[t * C + c];
  };
  if (post_norm) {
    if (i == 0) rows([&](Rows r) { norm(w.ln0_weight, w.ln0_bias, x, x, r); });
    rows([&](Rows r) { k.spatial_in(i, x, r); });
    k.wkv(i);
    rows([&](Rows r) {
      k.spatial_out(i, x, h, false, r);
      norm(w.ln1_weight, w.ln1_bias, h, h, r);
      residual(w.gamma1, r);
    });
    rows([&](Rows r) {
      k.channel_mix(i, x, h, false, r);
      norm(w.ln2_weight, w.ln2_bias, h, h, r);
    });
    rows([&](Rows r) { residual(w.gamma2, r); });
    return;
  }
  if (first) rows([&](Rows r) {
      if (i == 0) norm(w.ln0_weight, w.ln0_bias, x, x, r);
      norm(w.ln1_weight, w.ln1_bias, x, h, r);
    });
  rows([&](Rows r) { k.spatial_in(i, h, r); });
  k.wkv(i);
  rows([&](Rows r) {
    k.spatial_out(i, h, x, true, r);
    norm(w.ln2_weight, w.ln2_bias, x, h2, r);
  });
  rows([&](Rows r) {
    k.channel_mix(i, h2, x, true, r);
    if (fuse_next) norm(weights[i + 1].ln1_weight, weights[i + 1].ln1_bias, x, h, r);
  });
}

// Training shapes: B images of T tokens (N = B·T rows) of C channels.
struct Dims {
  std::int64_t B, T, N, C;
};

// x_out = x + keep·γ ⊙ branch (γ null: 1; keep: one DropPath scale per image).
void residual(const Dims& d, const float* x, const float* branch, const float* keep, const float* gamma, float* x_out);
// Its backward from dx = dL/dx_out: dbranch = keep·γ⊙dx, dγ += Σ keep·dx⊙branch.
void residual_backward(const Dims& d, const float* branch, const float* keep, const float* gamma, float* dgamma,
                       const float* dx, float* dbranch);

// A token shift as the ops/qshift.hpp functions take it: the grid it runs
// on, the distance (0: none), γ and the head width (0: one head of C channels).
struct Shift {
  ops::Grid grid;
  int pixels;
  double gamma;
  std::int64_t head = 0;
};
// The VRWKV block's shift on an image grid (ABLATION.md B.3): Q-Shift there;
// the 1-D shift as the Q-Shift of a 1×T grid whose first group holds every
// channel; none.
Shift vrwkv_shift(const Architecture& a, ops::Grid image);

// The second half's weights (ffn.*, ln2, gamma2) and, rebased, their gradients.
struct ChannelMixWeights {
  float *mix_k, *mix_r, *key, *receptance, *value, *key_norm_weight, *key_norm_bias;
  float *ln2_weight, *ln2_bias, *gamma2;
};
template <class W>
ChannelMixWeights channel_mix_of(const W& w) {
  return {w.ffn_mix_k,           w.ffn_mix_r,         w.ffn_key,    w.ffn_receptance, w.ffn_value,
          w.ffn_key_norm_weight, w.ffn_key_norm_bias, w.ln2_weight, w.ln2_bias,       w.gamma2};
}

// The block's second half: y = x_mid + keep·γ2 ⊙ (pre-norm: f(ln2(x_mid));
// post-norm: ln2(f(x_mid))), with f(x) = σ(xr·Wrᵀ) ⊙ ([LN](relu(xk·Wkᵀ)²)·Wvᵀ)
// and xk, xr the shifted mixes of x (a null μ, the VRWKV model without
// shift, passes x through).
class ChannelMix {
 public:
  // What its backward needs: b = ln2(x_mid) (pre-norm), f = the branch, fn = ln2(f) (post-norm).
  struct Tape {
    std::vector<float> b, fk, fr, hk, sq, sqn, kv, r2, f, fn;
    std::int64_t bytes() const;
  };

  ChannelMix(Dims dims, std::int64_t hidden, Shift shift, bool key_norm, bool post_norm);
  void allocate(Tape& t) const;
  // y = the half on x_mid, keep: the branch's DropPath scale per image.
  void forward(const BlockOps& ops, const ChannelMixWeights& w, const float* x_mid, const float* keep, float* y,
               Tape& t) const;
  // ds = dL/dy on entry, dL/dx_mid on return; adds the parameter gradients into g.
  void backward(const ChannelMixWeights& w, const ChannelMixWeights& g, const float* x_mid, const Tape& t,
                const float* keep, float* ds);

 private:
  // From gf = dL/df: adds dL/din into din and f's parameter gradients into g.
  void branch_backward(const ChannelMixWeights& w, const ChannelMixWeights& g, const float* in, const Tape& t,
                       const float* gf, float* din);

  Dims d_;
  std::int64_t Hd_;
  Shift shift_;
  bool key_norm_, post_norm_;
  std::vector<float> g_branch_, g_f_, g_in_;                 // scratch of the backward: [N, C]
  std::vector<float> g_kv_, g_r2_, g_k_, g_r_, g_h_, g_hn_;  // and of f's
};

}  // namespace vrwkv::model::parts
