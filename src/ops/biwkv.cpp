#include "ops/biwkv.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/fast_math.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::ops {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

std::int64_t chunk_length(std::int64_t T, int chunks) { return (T + chunks - 1) / chunks; }

// α(t,j) of VRWKV.md 2.3 (official) or 2.2 (paper), as a multiplier of e^{k_j}.
double alpha(std::int64_t t, std::int64_t j, double w, double u, std::int64_t L, WkvSemantics sem) {
  if (sem == WkvSemantics::Paper) return j == t ? std::exp(u) : std::exp(-(std::abs(t - j) - 1) * w);
  const std::int64_t s = L * (t / L);
  if (j > t) return std::exp(-(j - t) * w);
  if (j == t) return std::exp(u) + (t > s ? -std::expm1(w) : 0.0);
  if (j < s) return std::exp(-(t - j) * w);
  if (j == s) return std::exp(-(t - j - 1) * w);
  return std::exp(-(t - j - 1) * w) - std::expm1(w) * std::exp((t - j) * w);
}

}  // namespace

void biwkv_ref(const float* w, const float* u, const float* k, const float* v, float* y, std::int64_t B,
               std::int64_t T, std::int64_t C, Wkv wkv, std::int64_t t_begin, std::int64_t t_end) {
  const std::int64_t L = chunk_length(T, wkv.chunks);
  if (t_end < 0) t_end = T;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t c = 0; c < C; ++c) {
      const auto K = [&](std::int64_t t) -> double { return k[(b * T + t) * C + c]; };
      const auto V = [&](std::int64_t t) -> double { return v[(b * T + t) * C + c]; };
      const double wc = w[c], uc = u[c];
      for (std::int64_t t = t_begin; t < t_end; ++t) {
        double m = uc + K(t);
        for (std::int64_t j = 0; j < T; ++j) {
          if (j == t) continue;
          const double dist = std::abs(t - j) - (wkv.semantics == WkvSemantics::Paper ? 1 : 0);
          m = std::max(m, K(j) - dist * wc);
        }
        double num = 0, den = 0;
        for (std::int64_t j = 0; j < T; ++j) {
          const double a = alpha(t, j, wc, uc, L, wkv.semantics) * std::exp(K(j) - m);
          num += a * V(j);
          den += a;
        }
        y[(b * T + t) * C + c] = static_cast<float>(num / (den + kWkvEps));
      }
    }
}

void biwkv_ref_all(const float* w, const float* u, const float* k, const float* v, float* y, std::int64_t B,
                   std::int64_t T, std::int64_t C, Wkv wkv) {
  biwkv_ref(w, u, k, v, y, B, T, C, wkv);
}

namespace {

// Channels processed together: the inner loops run over a block of channels
// with contiguous state arrays, which the compiler vectorises.
constexpr int kBlock = 32;

// One (batch, channel block) problem. All sums are kept relative to
// e^{kmax_c}, the largest key of the channel, so no term exceeds e^{|decay|}:
// |w|·|t−j| ≤ |spatial_decay| for every pair. Terms are summed in float64.
struct Scan {
  std::int64_t T, C;
  int nc;              // channels in this block (≤ kBlock), starting at c0
  const float *k, *v;  // offset to (b, t=0, c0); row stride C
  float* y;
  double w[kBlock], u[kBlock];
  double kmax[kBlock], eu[kBlock], decay[kBlock];
  // Future sums per token: numerator, denominator, largest exponent.
  double *Fn, *Fd, *Fm;

  // E_t = e^{k_t − kmax}, to double precision: the official semantics can
  // cancel terms, which would magnify a float exp's error.
  void load(std::int64_t t, double* E, double* EV, double* K) const {
    const float* kt = k + t * C;
    const float* vt = v + t * C;
    for (int c = 0; c < nc; ++c) {
      K[c] = kt[c] - kmax[c];
      E[c] = exp_fast(K[c]);
      EV[c] = E[c] * vt[c];
    }
  }

  void run(Wkv wkv) {
    for (int c = 0; c < nc; ++c) kmax[c] = -std::numeric_limits<double>::infinity();
    for (std::int64_t t = 0; t < T; ++t)
      for (int c = 0; c < nc; ++c) kmax[c] = std::max<double>(kmax[c], k[t * C + c]);
    for (int c = 0; c < nc; ++c) eu[c] = std::exp(u[c]), decay[c] = std::exp(-w[c]);
    const bool paper = wkv.semantics == WkvSemantics::Paper;
    // Backward pass. paper: F_t = Σ_{j>t} e^{−(j−t−1)w}E_j v_j, F_t = e^{−w}F_{t+1} + E_{t+1}v_{t+1};
    // official: F_t = Σ_{j>t} e^{−(j−t)w}E_j v_j, F_t = e^{−w}(F_{t+1} + E_{t+1}v_{t+1}).
    double E[kBlock], EV[kBlock], K[kBlock];
    double* last = Fn + (T - 1) * kBlock;
    for (int c = 0; c < nc; ++c) last[c] = Fd[(T - 1) * kBlock + c] = 0, Fm[(T - 1) * kBlock + c] = kNegInf;
    for (std::int64_t t = T - 2; t >= 0; --t) {
      load(t + 1, E, EV, K);
      double *fn = Fn + t * kBlock, *fd = Fd + t * kBlock, *fm = Fm + t * kBlock;
      const double *fn1 = fn + kBlock, *fd1 = fd + kBlock, *fm1 = fm + kBlock;
      if (paper)
        for (int c = 0; c < nc; ++c) {
          fn[c] = decay[c] * fn1[c] + EV[c];
          fd[c] = decay[c] * fd1[c] + E[c];
          fm[c] = std::max(fm1[c] - w[c], K[c]);
        }
      else
        for (int c = 0; c < nc; ++c) {
          fn[c] = decay[c] * (fn1[c] + EV[c]);
          fd[c] = decay[c] * (fd1[c] + E[c]);
          fm[c] = std::max(fm1[c], K[c]) - w[c];
        }
    }
    if (paper) forward_paper();
    else forward_official(wkv.chunks);
  }

  void write(std::int64_t t, const double* num, const double* den, const double* m) const {
    float* yt = y + t * C;
    for (int c = 0; c < nc; ++c)
      yt[c] = static_cast<float>(num[c] / (den[c] + kWkvEps * exp_fast(static_cast<float>(m[c]))));
  }

  // Past P_t = Σ_{j<t} e^{−(t−j−1)w}E_j v_j, by P_t = e^{−w}P_{t−1} + E_{t−1}v_{t−1}.
  void forward_paper() {
    double Pn[kBlock] = {}, Pd[kBlock] = {}, Pm[kBlock], E[kBlock], EV[kBlock], K[kBlock];
    double num[kBlock], den[kBlock], m[kBlock];
    for (int c = 0; c < nc; ++c) Pm[c] = kNegInf;
    for (std::int64_t t = 0; t < T; ++t) {
      load(t, E, EV, K);
      const double *fn = Fn + t * kBlock, *fd = Fd + t * kBlock, *fm = Fm + t * kBlock;
      for (int c = 0; c < nc; ++c) {
        m[c] = std::max(std::max(Pm[c], fm[c]), u[c] + K[c]);
        num[c] = Pn[c] + fn[c] + eu[c] * EV[c];
        den[c] = Pd[c] + fd[c] + eu[c] * E[c];
        Pn[c] = decay[c] * Pn[c] + EV[c];
        Pd[c] = decay[c] * Pd[c] + E[c];
        Pm[c] = std::max(Pm[c] - w[c], K[c]);
      }
      write(t, num, den, m);
    }
  }

  // Official (VRWKV.md 2.3), with s the start of t's chunk:
  //   num_t = e^{−(t−s)w}·Q_s + P_t + (1−e^{w})·R_t + e^{u}E_t v_t + F_t
  // Q_t = Σ_{j<t} e^{−(t−j)w}E_j v_j           (all earlier tokens, |t−j| weights)
  // P_t = Σ_{s≤j<t} e^{−(t−j−1)w}E_j v_j        (in-chunk past, restarted at s)
  // R_t = Σ_{s<j≤t} e^{(t−j)w}E_j v_j           (the kernel's in-chunk correction)
  // F_t = Σ_{j>t} e^{−(j−t)w}E_j v_j            (all later tokens)
  void forward_official(int chunks) {
    const std::int64_t L = chunk_length(T, chunks);
    double Qn[kBlock] = {}, Qd[kBlock] = {}, Gn[kBlock] = {}, Gd[kBlock] = {}, Pn[kBlock] = {}, Pd[kBlock] = {};
    double Rn[kBlock] = {}, Rd[kBlock] = {}, Qm[kBlock], growth[kBlock], corr[kBlock];
    double E[kBlock], EV[kBlock], K[kBlock], num[kBlock], den[kBlock], m[kBlock];
    for (int c = 0; c < nc; ++c) Qm[c] = kNegInf, growth[c] = std::exp(w[c]), corr[c] = -std::expm1(w[c]);
    for (std::int64_t t = 0; t < T; ++t) {
      load(t, E, EV, K);
      if (t % L == 0)
        for (int c = 0; c < nc; ++c) Gn[c] = Qn[c], Gd[c] = Qd[c], Pn[c] = Pd[c] = Rn[c] = Rd[c] = 0;
      else
        for (int c = 0; c < nc; ++c) {
          Gn[c] *= decay[c], Gd[c] *= decay[c];
          Rn[c] = growth[c] * Rn[c] + EV[c];
          Rd[c] = growth[c] * Rd[c] + E[c];
        }
      const double *fn = Fn + t * kBlock, *fd = Fd + t * kBlock, *fm = Fm + t * kBlock;
      for (int c = 0; c < nc; ++c) {
        m[c] = std::max(std::max(Qm[c], fm[c]), u[c] + K[c]);
        num[c] = Gn[c] + Pn[c] + corr[c] * Rn[c] + eu[c] * EV[c] + fn[c];
        den[c] = Gd[c] + Pd[c] + corr[c] * Rd[c] + eu[c] * E[c] + fd[c];
        Pn[c] = decay[c] * Pn[c] + EV[c];
        Pd[c] = decay[c] * Pd[c] + E[c];
        Qn[c] = decay[c] * (Qn[c] + EV[c]);
        Qd[c] = decay[c] * (Qd[c] + E[c]);
        Qm[c] = std::max(Qm[c], K[c]) - w[c];
      }
      write(t, num, den, m);
    }
  }
};

}  // namespace

void biwkv(const float* w, const float* u, const float* k, const float* v, float* y, std::int64_t B, std::int64_t T,
           std::int64_t C, Wkv wkv) {
  if (wkv.semantics == WkvSemantics::Official && wkv.chunks < 1)
    input_error("Bi-WKV chunk count must be at least 1, got ", wkv.chunks);
  if (T == 0) return;
  const std::int64_t blocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel
  {
    // The future sums of one block: 3·T·kBlock doubles, reused across calls.
    thread_local std::vector<double> scratch;
    scratch.resize(static_cast<std::size_t>(3 * T * kBlock));
#pragma omp for schedule(static)
    for (std::int64_t job = 0; job < B * blocks; ++job) {
      const std::int64_t b = job / blocks, c0 = (job % blocks) * kBlock;
      Scan scan;
      scan.T = T, scan.C = C, scan.nc = static_cast<int>(std::min<std::int64_t>(kBlock, C - c0));
      scan.k = k + b * T * C + c0, scan.v = v + b * T * C + c0, scan.y = y + b * T * C + c0;
      for (int c = 0; c < scan.nc; ++c) scan.w[c] = w[c0 + c], scan.u[c] = u[c0 + c];
      scan.Fn = scratch.data(), scan.Fd = scan.Fn + T * kBlock, scan.Fm = scan.Fd + T * kBlock;
      scan.run(wkv);
    }
  }
}

}  // namespace vrwkv::ops
