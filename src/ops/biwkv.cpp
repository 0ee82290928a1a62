#include "ops/biwkv.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

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

// Channels processed together: one AVX-512 register of doubles.
constexpr int kBlock = 8;

// One (batch, channel block) problem. All sums are kept relative to
// e^{kmax_c}, the largest key of the channel, so no term exceeds e^{|decay|}:
// |w|·|t−j| ≤ |spatial_decay| for every pair.
struct Scan {
  std::int64_t T, C, nc;  // nc ≤ kBlock channels starting at c0
  const float *k, *v;     // offset to (b, t=0, c0)
  float* y;
  double w[kBlock], u[kBlock];
  std::vector<double>* scratch;

  double K(std::int64_t t, int c) const { return k[t * C + c]; }
  double V(std::int64_t t, int c) const { return v[t * C + c]; }

  void run(Wkv wkv) {
    double kmax[kBlock], eu[kBlock], decay[kBlock];
    for (int c = 0; c < nc; ++c) {
      kmax[c] = kNegInf;
      for (std::int64_t t = 0; t < T; ++t) kmax[c] = std::max(kmax[c], K(t, c));
      eu[c] = std::exp(u[c]);
      decay[c] = std::exp(-w[c]);
    }
    // E = e^{k−kmax}, E·v, and the future sums (backward pass) per token.
    scratch->resize(static_cast<std::size_t>(T) * kBlock * 5);
    double* E = scratch->data();
    double* EV = E + T * kBlock;
    double* Fn = EV + T * kBlock;
    double* Fd = Fn + T * kBlock;
    double* Fm = Fd + T * kBlock;
    for (std::int64_t t = 0; t < T; ++t)
      for (int c = 0; c < nc; ++c) {
        E[t * kBlock + c] = std::exp(K(t, c) - kmax[c]);
        EV[t * kBlock + c] = E[t * kBlock + c] * V(t, c);
      }
    const bool paper = wkv.semantics == WkvSemantics::Paper;
    // Future: paper F_t = Σ_{j>t} e^{−(j−t−1)w}E_j v_j; official uses e^{−(j−t)w}.
    // Fm_t: the largest future exponent, relative to kmax.
    for (int c = 0; c < nc; ++c) {
      Fn[(T - 1) * kBlock + c] = Fd[(T - 1) * kBlock + c] = 0;
      Fm[(T - 1) * kBlock + c] = kNegInf;
    }
    for (std::int64_t t = T - 2; t >= 0; --t)
      for (int c = 0; c < nc; ++c) {
        const std::int64_t i = t * kBlock + c, n = i + kBlock;
        if (paper) {
          Fn[i] = decay[c] * Fn[n] + EV[n];
          Fd[i] = decay[c] * Fd[n] + E[n];
          Fm[i] = std::max(Fm[n] - w[c], K(t + 1, c) - kmax[c]);
        } else {
          Fn[i] = decay[c] * (Fn[n] + EV[n]);
          Fd[i] = decay[c] * (Fd[n] + E[n]);
          Fm[i] = std::max(Fm[n], K(t + 1, c) - kmax[c]) - w[c];
        }
      }
    if (paper) forward_paper(E, EV, Fn, Fd, Fm, eu, decay, kmax);
    else forward_official(E, EV, Fn, Fd, Fm, eu, decay, kmax, wkv.chunks);
  }

  // Past P_t = Σ_{j<t} e^{−(t−j−1)w}E_j v_j, by P_t = e^{−w}P_{t−1} + E_{t−1}v_{t−1}.
  void forward_paper(const double* E, const double* EV, const double* Fn, const double* Fd, const double* Fm,
                     const double* eu, const double* decay, const double* kmax) {
    double Pn[kBlock], Pd[kBlock], Pm[kBlock];
    for (int c = 0; c < nc; ++c) Pn[c] = Pd[c] = 0, Pm[c] = kNegInf;
    for (std::int64_t t = 0; t < T; ++t)
      for (int c = 0; c < nc; ++c) {
        const std::int64_t i = t * kBlock + c;
        const double self = u[c] + K(t, c) - kmax[c];
        const double m = std::max({Pm[c], Fm[i], self});
        const double num = Pn[c] + Fn[i] + eu[c] * EV[i];
        const double den = Pd[c] + Fd[i] + eu[c] * E[i] + kWkvEps * std::exp(m);
        y[t * C + c] = static_cast<float>(num / den);
        Pn[c] = decay[c] * Pn[c] + EV[i];
        Pd[c] = decay[c] * Pd[c] + E[i];
        Pm[c] = std::max(Pm[c] - w[c], K(t, c) - kmax[c]);
      }
  }

  // Official (VRWKV.md 2.3), with s the start of t's chunk:
  //   num_t = e^{−(t−s)w}·Q_s + P_t + (1−e^{w})·R_t + e^{u}E_t v_t + F_t
  // Q_t = Σ_{j<t} e^{−(t−j)w}E_j v_j           (all earlier tokens, |t−j| weights)
  // P_t = Σ_{s≤j<t} e^{−(t−j−1)w}E_j v_j        (in-chunk past, restarted at s)
  // R_t = Σ_{s<j≤t} e^{(t−j)w}E_j v_j           (the kernel's in-chunk correction)
  // F_t = Σ_{j>t} e^{−(j−t)w}E_j v_j            (all later tokens)
  void forward_official(const double* E, const double* EV, const double* Fn, const double* Fd, const double* Fm,
                        const double* eu, const double* decay, const double* kmax, int chunks) {
    const std::int64_t L = chunk_length(T, chunks);
    double Qn[kBlock], Qd[kBlock], Gn[kBlock], Gd[kBlock], Pn[kBlock], Pd[kBlock], Rn[kBlock], Rd[kBlock];
    double Qm[kBlock], growth[kBlock], corr[kBlock];
    for (int c = 0; c < nc; ++c) {
      Qn[c] = Qd[c] = 0, Qm[c] = kNegInf;
      growth[c] = std::exp(w[c]);
      corr[c] = -std::expm1(w[c]);
    }
    for (std::int64_t t = 0; t < T; ++t) {
      const bool chunk_start = t % L == 0;
      for (int c = 0; c < nc; ++c) {
        const std::int64_t i = t * kBlock + c;
        if (chunk_start) {
          Gn[c] = Qn[c], Gd[c] = Qd[c];
          Pn[c] = Pd[c] = Rn[c] = Rd[c] = 0;
        } else {
          Gn[c] *= decay[c], Gd[c] *= decay[c];
          Rn[c] = growth[c] * Rn[c] + EV[i];
          Rd[c] = growth[c] * Rd[c] + E[i];
        }
        const double self = u[c] + K(t, c) - kmax[c];
        const double m = std::max({Qm[c], Fm[i], self});
        const double num = Gn[c] + Pn[c] + corr[c] * Rn[c] + eu[c] * EV[i] + Fn[i];
        const double den = Gd[c] + Pd[c] + corr[c] * Rd[c] + eu[c] * E[i] + Fd[i] + kWkvEps * std::exp(m);
        y[t * C + c] = static_cast<float>(num / den);
        Pn[c] = decay[c] * Pn[c] + EV[i];
        Pd[c] = decay[c] * Pd[c] + E[i];
        Qn[c] = decay[c] * (Qn[c] + EV[i]);
        Qd[c] = decay[c] * (Qd[c] + E[i]);
        Qm[c] = std::max(Qm[c], K(t, c) - kmax[c]) - w[c];
      }
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
    std::vector<double> scratch;
#pragma omp for schedule(static)
    for (std::int64_t job = 0; job < B * blocks; ++job) {
      const std::int64_t b = job / blocks, c0 = (job % blocks) * kBlock;
      Scan scan;
      scan.T = T, scan.C = C, scan.nc = static_cast<int>(std::min<std::int64_t>(kBlock, C - c0));
      scan.k = k + b * T * C + c0, scan.v = v + b * T * C + c0, scan.y = y + b * T * C + c0;
      for (int c = 0; c < scan.nc; ++c) scan.w[c] = w[c0 + c], scan.u[c] = u[c0 + c];
      scan.scratch = &scratch;
      scan.run(wkv);
    }
  }
}

}  // namespace vrwkv::ops
