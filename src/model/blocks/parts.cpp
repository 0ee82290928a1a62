#include "model/blocks/parts.hpp"

#include <algorithm>

#include "ops/fast_math.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/qshift.hpp"

namespace vrwkv::model::parts {

void residual(const Dims& d, const float* x, const float* branch, const float* keep, const float* gamma,
              float* x_out) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < d.N; ++n) {
    const float s = keep[n / d.T];
    for (std::int64_t ch = 0; ch < d.C; ++ch)
      x_out[n * d.C + ch] = x[n * d.C + ch] + s * (gamma ? gamma[ch] : 1.0f) * branch[n * d.C + ch];
  }
}

void residual_backward(const Dims& d, const float* branch, const float* keep, const float* gamma, float* dgamma,
                       const float* dx, float* dbranch) {
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < d.N; ++n) {
    const float s = keep[n / d.T];
    for (std::int64_t ch = 0; ch < d.C; ++ch) dbranch[n * d.C + ch] = s * (gamma ? gamma[ch] : 1.0f) * dx[n * d.C + ch];
  }
  if (!gamma) return;
  for (std::int64_t ch = 0; ch < d.C; ++ch) {
    float acc = 0;
    for (std::int64_t n = 0; n < d.N; ++n) acc += keep[n / d.T] * dx[n * d.C + ch] * branch[n * d.C + ch];
    dgamma[ch] += acc;
  }
}

Shift vrwkv_shift(const Architecture& a, ops::Grid image) {
  if (a.shift == TokenShift::OneD) return {ops::one_d_shift_grid(image), a.shift_pixel, ops::kOneDShiftGamma};
  return {image, a.shift_pixel, a.channel_gamma};
}

std::int64_t ChannelMix::Tape::bytes() const {
  std::int64_t n = 0;
  for (const std::vector<float>* p : {&b, &fk, &fr, &hk, &sq, &sqn, &kv, &r2, &f, &fn})
    n += static_cast<std::int64_t>(p->size());
  return n * static_cast<std::int64_t>(sizeof(float));
}

ChannelMix::ChannelMix(Dims dims, std::int64_t hidden, Shift shift, bool key_norm, bool post_norm)
    : d_(dims), Hd_(hidden), shift_(shift), key_norm_(key_norm), post_norm_(post_norm) {
  const std::int64_t NC = d_.N * d_.C, NH = d_.N * Hd_;
  for (std::vector<float>* p : {&g_branch_, &g_f_, &g_in_, &g_kv_, &g_r2_, &g_k_, &g_r_}) p->resize(NC);
  g_h_.resize(NH);
  if (key_norm_) g_hn_.resize(NH);
}

void ChannelMix::allocate(Tape& t) const {
  const std::int64_t NC = d_.N * d_.C, NH = d_.N * Hd_;
  for (std::vector<float>* p : {&t.fk, &t.fr, &t.kv, &t.r2, &t.f}) p->resize(NC);
  for (std::vector<float>* p : {&t.hk, &t.sq}) p->resize(NH);
  if (key_norm_) t.sqn.resize(NH);
  (post_norm_ ? t.fn : t.b).resize(NC);
}

void ChannelMix::forward(const BlockOps& ops, const ChannelMixWeights& w, const float* x_mid, const float* keep,
                         float* y, Tape& t) const {
  const std::int64_t N = d_.N, C = d_.C, Hd = Hd_;
  if (!post_norm_) ops.layernorm(x_mid, w.ln2_weight, w.ln2_bias, t.b.data(), N, C, ops::kLayerNormEps);
  const float* in = post_norm_ ? x_mid : t.b.data();
  const float* mu[2] = {w.mix_k, w.mix_r};
  float* outs[2] = {t.fk.data(), t.fr.data()};
  ops.q_shift_mix(in, d_.B, shift_.grid, C, shift_.pixels, shift_.gamma, 2, mu, outs, shift_.head);
  ops.linear(t.fr.data(), w.receptance, nullptr, t.r2.data(), N, C, C);
  ops.linear(t.fk.data(), w.key, nullptr, t.hk.data(), N, Hd, C);
#pragma omp parallel for schedule(static)
  for (std::int64_t j = 0; j < N * Hd; ++j) {
    const float v = std::max(t.hk[j], 0.0f);
    t.sq[j] = v * v;
  }
  const float* sqn = t.sq.data();
  if (key_norm_) {
    ops.layernorm(t.sq.data(), w.key_norm_weight, w.key_norm_bias, t.sqn.data(), N, Hd, ops::kLayerNormEps);
    sqn = t.sqn.data();
  }
  ops.linear(sqn, w.value, nullptr, t.kv.data(), N, C, Hd);
  ops.sigmoid_gate(t.r2.data(), t.kv.data(), t.f.data(), N * C);
  if (post_norm_) ops.layernorm(t.f.data(), w.ln2_weight, w.ln2_bias, t.fn.data(), N, C, ops::kLayerNormEps);
  residual(d_, x_mid, post_norm_ ? t.fn.data() : t.f.data(), keep, w.gamma2, y);
}

void ChannelMix::backward(const ChannelMixWeights& w, const ChannelMixWeights& g, const float* x_mid, const Tape& t,
                          const float* keep, float* ds) {
  const std::int64_t N = d_.N, C = d_.C;
  residual_backward(d_, post_norm_ ? t.fn.data() : t.f.data(), keep, w.gamma2, g.gamma2, ds, g_branch_.data());
  if (post_norm_) {  // the branch's input is x_mid itself: its gradient adds to ds
    std::fill(g_f_.begin(), g_f_.end(), 0.0f);
    ops::layernorm_backward(t.f.data(), w.ln2_weight, g_branch_.data(), g_f_.data(), g.ln2_weight, g.ln2_bias, N, C,
                            ops::kLayerNormEps);
    branch_backward(w, g, x_mid, t, g_f_.data(), ds);
  } else {
    std::fill(g_in_.begin(), g_in_.end(), 0.0f);
    branch_backward(w, g, t.b.data(), t, g_branch_.data(), g_in_.data());
    ops::layernorm_backward(x_mid, w.ln2_weight, g_in_.data(), ds, g.ln2_weight, g.ln2_bias, N, C,
                            ops::kLayerNormEps);
  }
}

void ChannelMix::branch_backward(const ChannelMixWeights& w, const ChannelMixWeights& g, const float* in,
                                 const Tape& t, const float* gf, float* din) {
  const std::int64_t N = d_.N, C = d_.C, Hd = Hd_;
  float *gKv = g_kv_.data(), *gR2 = g_r2_.data();
#pragma omp parallel for schedule(static)
  for (std::int64_t j = 0; j < N * C; ++j) {
    const float s = ops::sigmoid_fast(t.r2[j]);
    gKv[j] = gf[j] * s;
    gR2[j] = gf[j] * t.kv[j] * s * (1.0f - s);
  }
  std::fill(g_h_.begin(), g_h_.end(), 0.0f);
  ops::linear_backward(key_norm_ ? t.sqn.data() : t.sq.data(), w.value, gKv, g_h_.data(), g.value, nullptr, N, C,
                       Hd);
  float* gSq = g_h_.data();
  if (key_norm_) {
    std::fill(g_hn_.begin(), g_hn_.end(), 0.0f);
    ops::layernorm_backward(t.sq.data(), w.key_norm_weight, g_h_.data(), g_hn_.data(), g.key_norm_weight,
                            g.key_norm_bias, N, Hd, ops::kLayerNormEps);
    gSq = g_hn_.data();
  }
  // d relu(h)² / dh = 2·relu(h) (0 at the kink).
#pragma omp parallel for schedule(static)
  for (std::int64_t j = 0; j < N * Hd; ++j) gSq[j] *= 2.0f * std::max(t.hk[j], 0.0f);
  std::fill(g_k_.begin(), g_k_.end(), 0.0f);
  std::fill(g_r_.begin(), g_r_.end(), 0.0f);
  ops::linear_backward(t.fk.data(), w.key, gSq, g_k_.data(), g.key, nullptr, N, Hd, C);
  ops::linear_backward(t.fr.data(), w.receptance, gR2, g_r_.data(), g.receptance, nullptr, N, C, C);
  const float* mu[2] = {w.mix_k, w.mix_r};
  const float* dout[2] = {g_k_.data(), g_r_.data()};
  float* dmu[2] = {g.mix_k, g.mix_r};
  ops::q_shift_mix_backward(in, d_.B, shift_.grid, C, shift_.pixels, shift_.gamma, 2, mu, dout, din, dmu, shift_.head);
}

}  // namespace vrwkv::model::parts
