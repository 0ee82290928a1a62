#include "ops/biwkv.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/fast_math.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::ops {

namespace {


std::int64_t chunk_length(std::int64_t T, int chunks) { return (T + chunks - 1) / chunks; }

// Uni is the paper formula without the later tokens: the semantics its α uses.
Wkv effective(Wkv wkv) {
  if (wkv.direction == WkvDirection::Uni) wkv.semantics = WkvSemantics::Paper;
  return wkv;
}

// Whether token t attends to token j.
bool attends(std::int64_t t, std::int64_t j, WkvDirection d) { return d == WkvDirection::Bi || j <= t; }

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
  wkv = effective(wkv);
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
          if (j == t || !attends(t, j, wkv.direction)) continue;
          const double dist = std::abs(t - j) - (wkv.semantics == WkvSemantics::Paper ? 1 : 0);
          m = std::max(m, K(j) - dist * wc);
        }
        double num = 0, den = 0;
        for (std::int64_t j = 0; j < T; ++j) {
          if (!attends(t, j, wkv.direction)) continue;
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

// E[t·kBlock + c] = e^{k_t − kmax_c} in float64 for the nc channels of a block
// (k: row stride C), with kmax_c the channel's largest key: every scan keeps
// its sums relative to e^{kmax_c}. Double precision: the official semantics
// can cancel terms, which would magnify a float exp's error.
void scaled_exp(const float* k, std::int64_t T, std::int64_t C, int nc, double* kmax, double* E) {
  for (int c = 0; c < nc; ++c) kmax[c] = -std::numeric_limits<double>::infinity();
  for (std::int64_t t = 0; t < T; ++t)
    for (int c = 0; c < nc; ++c) kmax[c] = std::max<double>(kmax[c], k[t * C + c]);
  for (std::int64_t t = 0; t < T; ++t)
    for (int c = 0; c < nc; ++c) E[t * kBlock + c] = exp_fast(static_cast<double>(k[t * C + c]) - kmax[c]);
}

// One (batch, channel block) problem. All sums are kept relative to
// e^{kmax_c}, the largest key of the channel, so no term exceeds e^{|decay|}:
// |w|·|t−j| ≤ |spatial_decay| for every pair. Terms are summed in float64.
// The EPS term needs e^{m_t} for the largest exponent m_t; since
// e^{max(a,b)} = max(e^a, e^b), it is tracked multiplicatively (X = e^{m}),
// with no exponential per token.
// Width: the block's channel count when known at compile time (a full block,
// whose loops the compiler unrolls), 0 when given at run time in nc.
template <int Width>
struct Scan {
  std::int64_t T, C;
  int nc;              // channels in this block (≤ kBlock), starting at c0
  const float *k, *v;  // offset to (b, t=0, c0); row stride C
  float* y;
  double w[kBlock], u[kBlock];
  double kmax[kBlock], eu[kBlock], decay[kBlock];
  // Per token: E = e^{k−kmax}, and the future sums: numerator, denominator, e^{largest exponent}.
  double *E, *Fn, *Fd, *Fx;

  int n() const { return Width ? Width : nc; }

  void run(Wkv wkv) {
    scaled_exp(k, T, C, n(), kmax, E);
    for (int c = 0; c < n(); ++c) eu[c] = std::exp(u[c]), decay[c] = std::exp(-w[c]);
    const bool paper = wkv.semantics == WkvSemantics::Paper;
    // Backward pass. paper: F_t = Σ_{j>t} e^{−(j−t−1)w}E_j v_j, F_t = e^{−w}F_{t+1} + E_{t+1}v_{t+1};
    // official: F_t = Σ_{j>t} e^{−(j−t)w}E_j v_j, F_t = e^{−w}(F_{t+1} + E_{t+1}v_{t+1}).
    for (int c = 0; c < n(); ++c) {
      const std::int64_t i = (T - 1) * kBlock + c;
      Fn[i] = Fd[i] = Fx[i] = 0;
    }
    for (std::int64_t t = T - 2; t >= 0; --t) {
      const float* vt = v + (t + 1) * C;
      const double* e = E + (t + 1) * kBlock;
      double *fn = Fn + t * kBlock, *fd = Fd + t * kBlock, *fx = Fx + t * kBlock;
      const double *fn1 = fn + kBlock, *fd1 = fd + kBlock, *fx1 = fx + kBlock;
      if (paper)
        for (int c = 0; c < n(); ++c) {
          fn[c] = decay[c] * fn1[c] + e[c] * vt[c];
          fd[c] = decay[c] * fd1[c] + e[c];
          fx[c] = std::max(fx1[c] * decay[c], e[c]);
        }
      else
        for (int c = 0; c < n(); ++c) {
          fn[c] = decay[c] * (fn1[c] + e[c] * vt[c]);
          fd[c] = decay[c] * (fd1[c] + e[c]);
          fx[c] = std::max(fx1[c], e[c]) * decay[c];
        }
    }
    if (paper) forward_paper();
    else forward_official(wkv.chunks);
  }

  // Past P_t = Σ_{j<t} e^{−(t−j−1)w}E_j v_j, by P_t = e^{−w}P_{t−1} + E_{t−1}v_{t−1}.
  void forward_paper() {
    double Pn[kBlock] = {}, Pd[kBlock] = {}, Px[kBlock] = {};
    for (std::int64_t t = 0; t < T; ++t) {
      const float* vt = v + t * C;
      float* yt = y + t * C;
      const double* e = E + t * kBlock;
      const double *fn = Fn + t * kBlock, *fd = Fd + t * kBlock, *fx = Fx + t * kBlock;
      for (int c = 0; c < n(); ++c) {
        const double ev = e[c] * vt[c], self = eu[c] * e[c];
        const double x = std::max(std::max(Px[c], fx[c]), self);
        yt[c] = static_cast<float>((Pn[c] + fn[c] + eu[c] * ev) / (Pd[c] + fd[c] + self + kWkvEps * x));
        Pn[c] = decay[c] * Pn[c] + ev;
        Pd[c] = decay[c] * Pd[c] + e[c];
        Px[c] = std::max(Px[c] * decay[c], e[c]);
      }
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
    double Rn[kBlock] = {}, Rd[kBlock] = {}, Qx[kBlock] = {}, growth[kBlock], corr[kBlock];
    for (int c = 0; c < n(); ++c) growth[c] = std::exp(w[c]), corr[c] = -std::expm1(w[c]);
    for (std::int64_t t = 0; t < T; ++t) {
      const float* vt = v + t * C;
      float* yt = y + t * C;
      const double* e = E + t * kBlock;
      if (t % L == 0)
        for (int c = 0; c < n(); ++c) Gn[c] = Qn[c], Gd[c] = Qd[c], Pn[c] = Pd[c] = Rn[c] = Rd[c] = 0;
      else
        for (int c = 0; c < n(); ++c) {
          Gn[c] *= decay[c], Gd[c] *= decay[c];
          Rn[c] = growth[c] * Rn[c] + e[c] * vt[c];
          Rd[c] = growth[c] * Rd[c] + e[c];
        }
      const double *fn = Fn + t * kBlock, *fd = Fd + t * kBlock, *fx = Fx + t * kBlock;
      for (int c = 0; c < n(); ++c) {
        const double ev = e[c] * vt[c], self = eu[c] * e[c];
        const double x = std::max(std::max(Qx[c], fx[c]), self);
        const double num = Gn[c] + Pn[c] + corr[c] * Rn[c] + eu[c] * ev + fn[c];
        const double den = Gd[c] + Pd[c] + corr[c] * Rd[c] + self + fd[c];
        yt[c] = static_cast<float>(num / (den + kWkvEps * x));
        Pn[c] = decay[c] * Pn[c] + ev;
        Pd[c] = decay[c] * Pd[c] + e[c];
        Qn[c] = decay[c] * (Qn[c] + ev);
        Qd[c] = decay[c] * (Qd[c] + e[c]);
        Qx[c] = std::max(Qx[c], e[c]) * decay[c];
      }
    }
  }
};

// One (batch, channel block) problem of the uni direction: RWKV-4's scan
// over the state S_t = Σ_{j<t} e^{k_j−(t−1−j)w}·(v_j, 1), kept as e^{p}·(a, b)
// with p = max_{j<t} (k_j − (t−1−j)w), the largest exponent of the state's
// terms (max(p − w, k_t) tracks it exactly). Row t's largest exponent is
// m_t = max(p, u + k_t), so ε_t = 1e-6·e^{m_t} as in the bidirectional scans.
template <int Width>
struct UniScan {
  std::int64_t T, C;
  int nc;
  const float *k, *v;  // offset to (b, t=0, c0); row stride C
  float* y;
  double w[kBlock], u[kBlock];

  int n() const { return Width ? Width : nc; }

  void run(Wkv) {
    double a[kBlock], b[kBlock], p[kBlock];
    for (int c = 0; c < n(); ++c) a[c] = b[c] = 0, p[c] = -std::numeric_limits<double>::infinity();
    for (std::int64_t t = 0; t < T; ++t) {
      const float *kt = k + t * C, *vt = v + t * C;
      for (int c = 0; c < n(); ++c) {
        const double kc = kt[c], vc = vt[c], self = u[c] + kc;
        const double m = std::max(p[c], self);
        const double e1 = exp_fast(p[c] - m), e2 = exp_fast(self - m);
        y[t * C + c] = static_cast<float>((e1 * a[c] + e2 * vc) / (e1 * b[c] + e2 + kWkvEps));
        const double q = std::max(p[c] - w[c], kc);
        const double f1 = exp_fast(p[c] - w[c] - q), f2 = exp_fast(kc - q);
        a[c] = f1 * a[c] + f2 * vc;
        b[c] = f1 * b[c] + f2;
        p[c] = q;
      }
    }
  }
};

}  // namespace

void biwkv(const float* w, const float* u, const float* k, const float* v, float* y, std::int64_t B, std::int64_t T,
           std::int64_t C, Wkv wkv) {
  biwkv_share(w, u, k, v, y, B, T, C, wkv, 0, 1);
}

void biwkv_share(const float* w, const float* u, const float* k, const float* v, float* y, std::int64_t B,
                 std::int64_t T, std::int64_t C, Wkv wkv, int share, int shares) {
  wkv = effective(wkv);
  if (wkv.semantics == WkvSemantics::Official && wkv.chunks < 1)
    input_error("Bi-WKV chunk count must be at least 1, got ", wkv.chunks);
  if (T == 0) return;
  const bool uni = wkv.direction == WkvDirection::Uni;
  const std::int64_t blocks = (C + kBlock - 1) / kBlock, jobs = B * blocks;
  const std::int64_t first = jobs * share / shares, last = jobs * (share + 1) / shares;
#pragma omp parallel
  {
    // E and the future sums of one block: 4·T·kBlock doubles, reused across calls.
    thread_local std::vector<double> scratch;
    if (!uni) scratch.resize(static_cast<std::size_t>(4 * T * kBlock));
#pragma omp for schedule(static)
    for (std::int64_t job = first; job < last; ++job) {
      const std::int64_t b = job / blocks, c0 = (job % blocks) * kBlock;
      // The bidirectional scans use the scratch; the uni scan keeps its state in registers.
      const auto run = [&](auto&& scan) {
        scan.T = T, scan.C = C, scan.nc = static_cast<int>(std::min<std::int64_t>(kBlock, C - c0));
        scan.k = k + b * T * C + c0, scan.v = v + b * T * C + c0, scan.y = y + b * T * C + c0;
        for (int c = 0; c < scan.nc; ++c) scan.w[c] = w[c0 + c], scan.u[c] = u[c0 + c];
        if constexpr (requires { scan.E; }) {
          scan.E = scratch.data(), scan.Fn = scan.E + T * kBlock, scan.Fd = scan.Fn + T * kBlock;
          scan.Fx = scan.Fd + T * kBlock;
        }
        scan.run(wkv);
      };
      const bool full = C - c0 >= kBlock;
      if (uni && full) run(UniScan<kBlock>{});
      else if (uni) run(UniScan<0>{});
      else if (full) run(Scan<kBlock>{});
      else run(Scan<0>{});
    }
  }
}

// ---------------------------------------------------------------------------
// Backward

namespace {

// ∂α(t,j)/∂w for the α of alpha() (∂α/∂u is e^{u} at j = t, 0 elsewhere).
double alpha_dw(std::int64_t t, std::int64_t j, double w, std::int64_t L, WkvSemantics sem) {
  if (sem == WkvSemantics::Paper) return j == t ? 0.0 : -(std::abs(t - j) - 1) * std::exp(-(std::abs(t - j) - 1) * w);
  const std::int64_t s = L * (t / L);
  if (j > t) return -(j - t) * std::exp(-(j - t) * w);
  if (j == t) return t > s ? -std::exp(w) : 0.0;
  if (j < s) return -(t - j) * std::exp(-(t - j) * w);
  if (j == s) return -(t - j - 1) * std::exp(-(t - j - 1) * w);
  // e^{−(t−j−1)w} − (e^{w} − 1)·e^{(t−j)w}
  return -(t - j - 1) * std::exp(-(t - j - 1) * w) - std::exp(w) * std::exp((t - j) * w) -
         std::expm1(w) * (t - j) * std::exp((t - j) * w);
}

}  // namespace

void biwkv_backward_ref(const float* w, const float* u, const float* k, const float* v, const float* gy, float* gw,
                        float* gu, float* gk, float* gv, std::int64_t B, std::int64_t T, std::int64_t C, Wkv wkv) {
  wkv = effective(wkv);
  const std::int64_t L = chunk_length(T, wkv.chunks);
  std::vector<double> dk(T), dv(T);
  for (std::int64_t c = 0; c < C; ++c) {
    double dw = 0, du = 0;
    for (std::int64_t b = 0; b < B; ++b) {
      const auto K = [&](std::int64_t t) -> double { return k[(b * T + t) * C + c]; };
      const auto V = [&](std::int64_t t) -> double { return v[(b * T + t) * C + c]; };
      const double wc = w[c], uc = u[c];
      std::fill(dk.begin(), dk.end(), 0.0);
      std::fill(dv.begin(), dv.end(), 0.0);
      for (std::int64_t t = 0; t < T; ++t) {
        // The forward of biwkv_ref, in units of e^{m_t}.
        double m = uc + K(t);
        for (std::int64_t j = 0; j < T; ++j)
          if (j != t && attends(t, j, wkv.direction))
            m = std::max(m, K(j) - (std::abs(t - j) - (wkv.semantics == WkvSemantics::Paper ? 1 : 0)) * wc);
        double num = 0, den = 0;
        for (std::int64_t j = 0; j < T; ++j) {
          if (!attends(t, j, wkv.direction)) continue;
          const double a = alpha(t, j, wc, uc, L, wkv.semantics) * std::exp(K(j) - m);
          num += a * V(j);
          den += a;
        }
        den += kWkvEps;
        const double y = num / den, G = gy[(b * T + t) * C + c] / den;
        for (std::int64_t j = 0; j < T; ++j) {
          if (!attends(t, j, wkv.direction)) continue;
          const double e = std::exp(K(j) - m);
          const double a = alpha(t, j, wc, uc, L, wkv.semantics) * e;
          dv[j] += G * a;
          dk[j] += G * a * (V(j) - y);
          dw += G * alpha_dw(t, j, wc, L, wkv.semantics) * e * (V(j) - y);
        }
        du += G * std::exp(uc + K(t) - m) * (V(t) - y);
      }
      for (std::int64_t t = 0; t < T; ++t) {
        gk[(b * T + t) * C + c] += static_cast<float>(dk[t]);
        gv[(b * T + t) * C + c] += static_cast<float>(dv[t]);
      }
    }
    gw[c] += static_cast<float>(dw);
    gu[c] += static_cast<float>(du);
  }
}

namespace {

// One (batch, channel block) problem of the paper-semantics backward, in
// float64 and relative to e^{kmax_c} like Scan. With d = e^{−w}:
//   a_t  = Σ_{j<t} d^{t−j−1}·E_j          (and a·v: the same with E_j v_j)
//   s_t  = Σ_{j<t} (t−j−1)·d^{t−j−1}·E_j  = d·(s_{t−1} + a_{t−1})
// and the mirrored future sums f, fs. Then D_t = a_t + f_t + e^{u}E_t + ε_t,
// y_t = (av_t + fv_t + e^{u}E_t v_t)/D_t, G_t = gy_t/D_t, and
//   ∂L/∂w = −Σ_t G_t·[(sv_t + fsv_t) − y_t·(s_t + fs_t)].
// P_j = Σ_t α(t,j)·G_t and Q_j = Σ_t α(t,j)·G_t·y_t are the same kind of
// two-sided sums over G and G·y.
struct BackScan {
  std::int64_t T, C;
  int nc;
  const float *k, *v, *gy;  // offset to (b, t=0, c0); row stride C
  float *gk, *gv;
  double w[kBlock], u[kBlock];
  double kmax[kBlock], eu[kBlock], decay[kBlock];
  double *E, *F, *Fv, *Fs, *Fsv, *Fx;  // T·kBlock each
  double dw[kBlock], du[kBlock];

  void run() {
    scaled_exp(k, T, C, nc, kmax, E);
    for (int c = 0; c < nc; ++c) eu[c] = std::exp(u[c]), decay[c] = std::exp(-w[c]), dw[c] = du[c] = 0;

    // Future sums, t descending.
    for (int c = 0; c < nc; ++c) {
      const std::int64_t i = (T - 1) * kBlock + c;
      F[i] = Fv[i] = Fs[i] = Fsv[i] = Fx[i] = 0;
    }
    for (std::int64_t t = T - 2; t >= 0; --t) {
      const std::int64_t i = t * kBlock, n = i + kBlock;
      const float* v1 = v + (t + 1) * C;
      for (int c = 0; c < nc; ++c) {
        const double e = E[n + c];
        Fs[i + c] = decay[c] * (Fs[n + c] + F[n + c]);
        Fsv[i + c] = decay[c] * (Fsv[n + c] + Fv[n + c]);
        F[i + c] = decay[c] * F[n + c] + e;
        Fv[i + c] = decay[c] * Fv[n + c] + e * v1[c];
        Fx[i + c] = std::max(Fx[n + c] * decay[c], e);
      }
    }

    // t ascending: D_t, y_t, G_t, the w and u gradients, and the past halves
    // of P and Q. The future arrays, once read, hold G, G·y, P and Q.
    double a[kBlock] = {}, av[kBlock] = {}, s[kBlock] = {}, sv[kBlock] = {}, ax[kBlock] = {};
    double pg[kBlock] = {}, pgy[kBlock] = {};
    double *G = F, *Gy = Fv, *P = Fs, *Q = Fsv;
    for (std::int64_t t = 0; t < T; ++t) {
      const std::int64_t i = t * kBlock;
      const float *vt = v + t * C, *gt = gy + t * C;
      for (int c = 0; c < nc; ++c) {
        const double e = E[i + c], self = eu[c] * e;
        const double x = std::max(std::max(ax[c], Fx[i + c]), self);
        const double D = a[c] + F[i + c] + self + kWkvEps * x;
        const double y = (av[c] + Fv[i + c] + self * vt[c]) / D;
        const double g = gt[c] / D;
        du[c] += g * self * (vt[c] - y);
        dw[c] -= g * ((sv[c] + Fsv[i + c]) - y * (s[c] + Fs[i + c]));
        G[i + c] = g, Gy[i + c] = g * y;
        P[i + c] = pg[c] + eu[c] * g;
        Q[i + c] = pgy[c] + eu[c] * g * y;
        s[c] = decay[c] * (s[c] + a[c]);
        sv[c] = decay[c] * (sv[c] + av[c]);
        a[c] = decay[c] * a[c] + e;
        av[c] = decay[c] * av[c] + e * vt[c];
        ax[c] = std::max(ax[c] * decay[c], e);
        pg[c] = decay[c] * pg[c] + g;
        pgy[c] = decay[c] * pgy[c] + g * y;
      }
    }

    // t descending: the future halves of P and Q, then gk and gv.
    double fg[kBlock] = {}, fgy[kBlock] = {};
    for (std::int64_t t = T - 1; t >= 0; --t) {
      const std::int64_t i = t * kBlock;
      const float* vt = v + t * C;
      float *gkt = gk + t * C, *gvt = gv + t * C;
      for (int c = 0; c < nc; ++c) {
        const double p = P[i + c] + fg[c], q = Q[i + c] + fgy[c], e = E[i + c];
        gvt[c] += static_cast<float>(e * p);
        gkt[c] += static_cast<float>(e * (vt[c] * p - q));
        fg[c] = decay[c] * fg[c] + G[i + c];
        fgy[c] = decay[c] * fgy[c] + Gy[i + c];
      }
    }
  }
};


// The official semantics (VRWKV.md 2.3) backward. Its α splits into kernels
// of plain distance powers (d = e^{−w}, g = e^{w}, s = start of t's chunk):
//   α(t,j) = d^{|t−j|}                                   (j ≠ t)
//          + (1 − d)·d^{t−j−1}   for s ≤ j < t          (the kernel's |t−j|−1 in-chunk weights)
//          + (1 − g)·g^{t−j}     for s < j ≤ t          (its in-chunk "future" correction)
//          + e^{u}               for j = t,
// which reproduces every case of the table in 2.3. Each kernel is a scan: the
// plain one over the whole sequence, the two in-chunk ones restarted at each
// chunk start. ∂α/∂w is a sum of the same kernels weighted by distances,
// tracked by the companion "s" sums as in BackScan; P and Q are the same
// kernels transposed (summed over t for each j).
struct OfficialBackScan {
  std::int64_t T, C, L;
  int nc;
  const float *k, *v, *gy;
  float *gk, *gv;
  double w[kBlock], u[kBlock];
  double kmax[kBlock], eu[kBlock], d[kBlock], g[kBlock];
  double *E, *F, *Fv, *Fs, *Fsv, *Fx;  // T·kBlock each
  double dw[kBlock], du[kBlock];

  void run() {
    scaled_exp(k, T, C, nc, kmax, E);
    for (int c = 0; c < nc; ++c)
      eu[c] = std::exp(u[c]), d[c] = std::exp(-w[c]), g[c] = std::exp(w[c]), dw[c] = du[c] = 0;

    // Plain future sums, t descending: F_t = Σ_{j>t} d^{j−t}X_j = d·(F_{t+1} + X_{t+1}),
    // Fs_t = Σ_{j>t} (j−t)·d^{j−t}X_j = d·Fs_{t+1} + F_t; Fx: e^{largest future exponent}.
    for (int c = 0; c < nc; ++c) {
      const std::int64_t i = (T - 1) * kBlock + c;
      F[i] = Fv[i] = Fs[i] = Fsv[i] = Fx[i] = 0;
    }
    for (std::int64_t t = T - 2; t >= 0; --t) {
      const std::int64_t i = t * kBlock, n = i + kBlock;
      const float* v1 = v + (t + 1) * C;
      for (int c = 0; c < nc; ++c) {
        const double e = E[n + c];
        F[i + c] = d[c] * (F[n + c] + e);
        Fv[i + c] = d[c] * (Fv[n + c] + e * v1[c]);
        Fs[i + c] = d[c] * Fs[n + c] + F[i + c];
        Fsv[i + c] = d[c] * Fsv[n + c] + Fv[i + c];
        Fx[i + c] = std::max(Fx[n + c], e) * d[c];
      }
    }

    // t ascending. Plain past sums a, s (as F, Fs) and the in-chunk sums:
    //   b_t = Σ_{s≤j<t} d^{t−j−1}X_j,       bs_t = Σ_{s≤j<t} (t−j−1)·d^{t−j−1}X_j,
    //   r_t = Σ_{s<j≤t} g^{t−j}X_j,          rs_t = Σ_{s<j≤t} (t−j)·g^{t−j}X_j.
    // D_t = a + F + (1−d)·b + (1−g)·r + e^{u}E_t + ε_t (and N_t with X = E·v);
    // ∂D_t/∂w = −(s + Fs) + d·b − (1−d)·bs − g·r + (1−g)·rs.
    double a[kBlock] = {}, av[kBlock] = {}, sp[kBlock] = {}, spv[kBlock] = {}, ax[kBlock] = {};
    double b[kBlock] = {}, bv[kBlock] = {}, bs[kBlock] = {}, bsv[kBlock] = {};
    double r[kBlock] = {}, rv[kBlock] = {}, rs[kBlock] = {}, rsv[kBlock] = {};
    double pg[kBlock] = {}, pgy[kBlock] = {};
    double *G = F, *Gy = Fv, *P = Fs, *Q = Fsv;
    for (std::int64_t t = 0; t < T; ++t) {
      const std::int64_t i = t * kBlock;
      const float *vt = v + t * C, *gt = gy + t * C;
      const bool start = t % L == 0;
      for (int c = 0; c < nc; ++c) {
        const double e = E[i + c], ev = e * vt[c], self = eu[c] * e;
        if (start) {
          b[c] = bv[c] = bs[c] = bsv[c] = r[c] = rv[c] = rs[c] = rsv[c] = 0;
        } else {
          rs[c] = g[c] * (rs[c] + r[c]);
          rsv[c] = g[c] * (rsv[c] + rv[c]);
          r[c] = g[c] * r[c] + e;
          rv[c] = g[c] * rv[c] + ev;
        }
        const double c1 = 1.0 - d[c], c2 = 1.0 - g[c];
        const double x = std::max(std::max(ax[c], Fx[i + c]), self);
        const double D = a[c] + F[i + c] + c1 * b[c] + c2 * r[c] + self + kWkvEps * x;
        const double y = (av[c] + Fv[i + c] + c1 * bv[c] + c2 * rv[c] + self * vt[c]) / D;
        const double dD = -(sp[c] + Fs[i + c]) + d[c] * b[c] - c1 * bs[c] - g[c] * r[c] + c2 * rs[c];
        const double dN = -(spv[c] + Fsv[i + c]) + d[c] * bv[c] - c1 * bsv[c] - g[c] * rv[c] + c2 * rsv[c];
        const double gr = gt[c] / D;
        du[c] += gr * self * (vt[c] - y);
        dw[c] += gr * (dN - y * dD);
        G[i + c] = gr, Gy[i + c] = gr * y;
        P[i + c] = pg[c] + eu[c] * gr;
        Q[i + c] = pgy[c] + eu[c] * gr * y;
        sp[c] = d[c] * sp[c] + d[c] * (a[c] + e);  // Σ_{j<t+1} (t+1−j)·d^{t+1−j}X_j
        spv[c] = d[c] * spv[c] + d[c] * (av[c] + ev);
        a[c] = d[c] * (a[c] + e);
        av[c] = d[c] * (av[c] + ev);
        ax[c] = std::max(ax[c], e) * d[c];
        bs[c] = d[c] * (bs[c] + b[c]);
        bsv[c] = d[c] * (bsv[c] + bv[c]);
        b[c] = d[c] * b[c] + e;
        bv[c] = d[c] * bv[c] + ev;
        pg[c] = d[c] * (pg[c] + gr);
        pgy[c] = d[c] * (pgy[c] + gr * y);
      }
    }

    // t descending: P_j = Σ_t α(t,j)·G_t is the transposed kernels:
    //   Σ_{t>j} d^{t−j}G_t + (1−d)·Σ_{j<t<chunk end} d^{t−j−1}G_t + [j ≠ s]·(1−g)·Σ_{j≤t<chunk end} g^{t−j}G_t.
    double fg[kBlock] = {}, fgy[kBlock] = {}, cb[kBlock] = {}, cby[kBlock] = {}, cr[kBlock] = {}, cry[kBlock] = {};
    for (std::int64_t t = T - 1; t >= 0; --t) {
      const std::int64_t i = t * kBlock;
      const bool last_of_chunk = t == T - 1 || (t + 1) % L == 0, start = t % L == 0;
      const float* vt = v + t * C;
      float *gkt = gk + t * C, *gvt = gv + t * C;
      for (int c = 0; c < nc; ++c) {
        if (last_of_chunk) {
          cb[c] = cby[c] = cr[c] = cry[c] = 0;
        } else {  // cb_t = Σ_{t<t'<end} d^{t'−t−1}G_{t'} = G_{t+1} + d·cb_{t+1}
          cb[c] = G[i + kBlock + c] + d[c] * cb[c];
          cby[c] = Gy[i + kBlock + c] + d[c] * cby[c];
        }
        cr[c] = G[i + c] + g[c] * cr[c];  // Σ_{t≤t'<end} g^{t'−t}G_{t'}
        cry[c] = Gy[i + c] + g[c] * cry[c];
        const double c1 = 1.0 - d[c], c2 = start ? 0.0 : 1.0 - g[c];
        const double p = P[i + c] + fg[c] + c1 * cb[c] + c2 * cr[c];
        const double q = Q[i + c] + fgy[c] + c1 * cby[c] + c2 * cry[c];
        const double e = E[i + c];
        gvt[c] += static_cast<float>(e * p);
        gkt[c] += static_cast<float>(e * (vt[c] * p - q));
        fg[c] = d[c] * (fg[c] + G[i + c]);
        fgy[c] = d[c] * (fgy[c] + Gy[i + c]);
      }
    }
  }
};

// The uni direction's backward for one (batch, channel block) problem, in
// float64 with running maxima like UniScan. t ascending, UniScan's state and
// its distance-weighted companion s_t = Σ_{j<t} (t−1−j)·e^{k_j−(t−1−j)w}·(v_j, 1)
// (s_{t+1} = e^{−w}·(s_t + S_t)) give y_t, G_t = gy_t/D_t and
//   ∂L/∂u = Σ_t G_t·e^{u+k_t}·(v_t − y_t),   ∂L/∂w = −Σ_t G_t·(s_t·(v, 1))·(1, −y_t);
// t descending, R_j = Σ_{t>j} e^{−(t−j−1)w}·G_t·(1, y_t) (kept as e^{r}·(ra, rb),
// every G_t carrying its e^{−m_t}) gives
//   gv_j = e^{u+k_j}G_j + e^{k_j}R_j[0],   gk_j = e^{u+k_j}G_j(v_j − y_j) + e^{k_j}(v_j·R_j[0] − R_j[1]).
// Every exponential is of a non-positive number.
struct UniBackScan {
  std::int64_t T, C;
  int nc;
  const float *k, *v, *gy;  // offset to (b, t=0, c0); row stride C
  float *gk, *gv;
  double w[kBlock], u[kBlock];
  double *M, *Y, *G;  // T·kBlock each: m_t, y_t, G_t·e^{m_t}
  double dw[kBlock], du[kBlock];

  void run() {
    constexpr double kNone = -std::numeric_limits<double>::infinity();
    double a[kBlock], b[kBlock], sa[kBlock], sb[kBlock], p[kBlock];
    for (int c = 0; c < nc; ++c) a[c] = b[c] = sa[c] = sb[c] = dw[c] = du[c] = 0, p[c] = kNone;
    for (std::int64_t t = 0; t < T; ++t) {
      const float *kt = k + t * C, *vt = v + t * C, *gt = gy + t * C;
      const std::int64_t i = t * kBlock;
      for (int c = 0; c < nc; ++c) {
        const double kc = kt[c], vc = vt[c], self = u[c] + kc;
        const double m = std::max(p[c], self);
        const double e1 = exp_fast(p[c] - m), e2 = exp_fast(self - m);
        const double den = e1 * b[c] + e2 + kWkvEps, y = (e1 * a[c] + e2 * vc) / den, g = gt[c] / den;
        du[c] += g * e2 * (vc - y);
        dw[c] -= g * e1 * (sa[c] - y * sb[c]);
        M[i + c] = m, Y[i + c] = y, G[i + c] = g;
        const double q = std::max(p[c] - w[c], kc);
        const double f1 = exp_fast(p[c] - w[c] - q), f2 = exp_fast(kc - q);
        sa[c] = f1 * (sa[c] + a[c]);
        sb[c] = f1 * (sb[c] + b[c]);
        a[c] = f1 * a[c] + f2 * vc;
        b[c] = f1 * b[c] + f2;
        p[c] = q;
      }
    }
    double ra[kBlock], rb[kBlock], r[kBlock];
    for (int c = 0; c < nc; ++c) ra[c] = rb[c] = 0, r[c] = kNone;
    for (std::int64_t j = T - 1; j >= 0; --j) {
      const float *kj = k + j * C, *vj = v + j * C;
      float *gkj = gk + j * C, *gvj = gv + j * C;
      const std::int64_t i = j * kBlock;
      for (int c = 0; c < nc; ++c) {
        const double kc = kj[c], vc = vj[c], m = M[i + c], y = Y[i + c], g = G[i + c];
        const double e = exp_fast(u[c] + kc - m) * g, ek = exp_fast(kc + r[c]);
        gvj[c] += static_cast<float>(e + ek * ra[c]);
        gkj[c] += static_cast<float>(e * (vc - y) + ek * (vc * ra[c] - rb[c]));
        const double q = std::max(r[c] - w[c], -m);
        const double f1 = exp_fast(r[c] - w[c] - q), f2 = exp_fast(-m - q);
        ra[c] = f1 * ra[c] + f2 * g;
        rb[c] = f1 * rb[c] + f2 * g * y;
        r[c] = q;
      }
    }
  }
};

}  // namespace

void biwkv_backward(const float* w, const float* u, const float* k, const float* v, const float* gy, float* gw,
                    float* gu, float* gk, float* gv, std::int64_t B, std::int64_t T, std::int64_t C, Wkv wkv) {
  wkv = effective(wkv);
  if (wkv.semantics == WkvSemantics::Official && wkv.chunks < 1)
    input_error("Bi-WKV chunk count must be at least 1, got ", wkv.chunks);
  if (T == 0) return;
  const std::int64_t blocks = (C + kBlock - 1) / kBlock;
  // Per-image w and u gradients, summed over the batch in a fixed order
  // afterwards so the result does not depend on the thread count.
  std::vector<double> dw(B * C), du(B * C);
#pragma omp parallel
  {
    thread_local std::vector<double> scratch;
    scratch.resize(static_cast<std::size_t>(6 * T * kBlock));
#pragma omp for schedule(static)
    for (std::int64_t job = 0; job < B * blocks; ++job) {
      const std::int64_t b = job / blocks, c0 = (job % blocks) * kBlock;
      const int nc = static_cast<int>(std::min<std::int64_t>(kBlock, C - c0));
      const std::int64_t off = b * T * C + c0;
      double* p = scratch.data();
      const auto setup = [&](auto& scan) {
        scan.T = T, scan.C = C, scan.nc = nc;
        scan.k = k + off, scan.v = v + off, scan.gy = gy + off, scan.gk = gk + off, scan.gv = gv + off;
        for (int c = 0; c < nc; ++c) scan.w[c] = w[c0 + c], scan.u[c] = u[c0 + c];
        if constexpr (requires { scan.M; })  // the uni scan's per-token m, y, G
          scan.M = p, scan.Y = p + T * kBlock, scan.G = p + 2 * T * kBlock;
        else
          for (double** a : {&scan.E, &scan.F, &scan.Fv, &scan.Fs, &scan.Fsv, &scan.Fx}) *a = p, p += T * kBlock;
        scan.run();
        for (int c = 0; c < nc; ++c) dw[b * C + c0 + c] = scan.dw[c], du[b * C + c0 + c] = scan.du[c];
      };
      if (wkv.direction == WkvDirection::Uni) {
        UniBackScan scan;
        setup(scan);
      } else if (wkv.semantics == WkvSemantics::Paper) {
        BackScan scan;
        setup(scan);
      } else {
        OfficialBackScan scan;
        scan.L = chunk_length(T, wkv.chunks);
        setup(scan);
      }
    }
  }
  for (std::int64_t c = 0; c < C; ++c) {
    double sw = 0, su = 0;
    for (std::int64_t b = 0; b < B; ++b) sw += dw[b * C + c], su += du[b * C + c];
    gw[c] += static_cast<float>(sw);
    gu[c] += static_cast<float>(su);
  }
}

}  // namespace vrwkv::ops
