#include "ops/wkv6.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "ops/fast_math.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::ops {

namespace {

// One problem's place in the [B,T,C] tensors: image b, head h.
struct Head {
  std::int64_t T, C, N;
  std::int64_t offset;  // b·T·C + h·N
  std::int64_t at(std::int64_t t) const { return offset + t * C; }
};

void check_heads(std::int64_t C, std::int64_t N) {
  if (N < 1 || C % N != 0) runtime_error("wkv6: ", C, " channels are not whole heads of ", N);
}

// The decays of one token's N keys: δ = exp(−exp(w)) from the raw w, or
// read from `decay` where the caller made them (wkv6_decays).
template <class Real>
inline void decays(const float* w, const float* decay, std::int64_t at, Real* d, std::int64_t N) {
  if (decay)
    for (std::int64_t j = 0; j < N; ++j) d[j] = decay[at + j];
  else
    for (std::int64_t j = 0; j < N; ++j) d[j] = std::exp(-std::exp(static_cast<Real>(w[at + j])));
}

// The value channels [i0, i0 + nv) of one head through both scans (kV: nv
// known at compile time, 0: nv at run time). S[j][i] is the state of key j,
// value i. Anti-causal pass (t = T−1 … 0): y_t = rᵀS, then S ← δ_t⊙S + k_t v_tᵀ;
// causal pass (t = 0 … T−1): y_t += rᵀS + (Σ_j r u k)·v_t with the same update.
template <class Real, int kV>
void scan_values(const float* r, const float* k, const float* v, const float* w, const float* decay, const float* u,
                 float* y, const Head& p, std::int64_t i0, std::int64_t nv_runtime) {
  const std::int64_t N = p.N, nv = kV ? kV : nv_runtime;
  const float* uh = u + p.offset % p.C;  // this head's bonus
  std::vector<Real> S(N * nv), d(N), acc(nv), part(kV ? 0 : nv);
  for (int causal = 0; causal < 2; ++causal) {
    std::fill(S.begin(), S.end(), Real(0));
    for (std::int64_t step = 0; step < p.T; ++step) {
      const std::int64_t t = causal ? step : p.T - 1 - step, o = p.at(t);
      const float *rt = r + o, *kt = k + o, *vt = v + o + i0;
      decays(w, decay, o, d.data(), N);
      Real* a = acc.data();
      Real bonus = 0;
      if (causal)
        for (std::int64_t j = 0; j < N; ++j) bonus += static_cast<Real>(rt[j]) * uh[j] * kt[j];
#pragma omp simd
      for (std::int64_t i = 0; i < nv; ++i) a[i] = bonus * vt[i];
      if constexpr (kV > 0) {
        // A local accumulator row: it cannot alias S, so it stays in registers. (One row is faster than
        // several partial rows with shorter chains: those spill.)
        Real part[kV] = {};
        for (std::int64_t j = 0; j < N; ++j) {
          Real* s = S.data() + j * kV;
          const Real rj = rt[j], kj = kt[j], dj = d[j];
#pragma omp simd
          for (std::int64_t i = 0; i < kV; ++i) {
            part[i] += rj * s[i];
            s[i] = s[i] * dj + kj * static_cast<Real>(vt[i]);
          }
        }
#pragma omp simd
        for (std::int64_t i = 0; i < kV; ++i) a[i] += part[i];
      } else {  // the same arithmetic, sizes at run time
        std::fill(part.begin(), part.end(), Real(0));
        for (std::int64_t j = 0; j < N; ++j) {
          Real* s = S.data() + j * nv;
          const Real rj = rt[j], kj = kt[j], dj = d[j];
          for (std::int64_t i = 0; i < nv; ++i) {
            part[i] += rj * s[i];
            s[i] = s[i] * dj + kj * static_cast<Real>(vt[i]);
          }
        }
        for (std::int64_t i = 0; i < nv; ++i) a[i] += part[i];
      }
      float* yt = y + o + i0;
      for (std::int64_t i = 0; i < nv; ++i) yt[i] = static_cast<float>(causal ? yt[i] + a[i] : a[i]);
    }
  }
}

// The fast forward's problems: (image, head, block of value channels). A
// whole head of 64 is fastest (the r, k, δ of a key serve four vectors);
// halves of 32 when there are too few heads to keep every thread busy.
std::int64_t value_block(std::int64_t B, std::int64_t H, std::int64_t N, int threads) {
  return N <= 32 || B * H >= 2 * threads ? std::min<std::int64_t>(N, 64) : 32;
}

void forward_problems(const float* r, const float* k, const float* v, const float* decay, const float* u, float* y,
                      std::int64_t B, std::int64_t T, std::int64_t C, std::int64_t N, std::int64_t block,
                      std::int64_t begin, std::int64_t end) {
  const std::int64_t H = C / N, blocks = (N + block - 1) / block;
  for (std::int64_t job = begin; job < end; ++job) {
    const std::int64_t b = job / (H * blocks), h = job / blocks % H, i0 = job % blocks * block;
    const Head p{T, C, N, b * T * C + h * N};
    const std::int64_t nv = std::min(block, N - i0);
    if (nv == 64) scan_values<float, 64>(r, k, v, nullptr, decay, u, y, p, i0, nv);
    else if (nv == 32) scan_values<float, 32>(r, k, v, nullptr, decay, u, y, p, i0, nv);
    else scan_values<float, 0>(r, k, v, nullptr, decay, u, y, p, i0, nv);
  }
}

// The backward of one (image, head) problem in Real arithmetic, adding to the
// gradients; gu_head: this problem's own [N] part of dL/du, a sum over every
// token kept in float64 whatever Real is. The states are kept value-major,
// S[i][j] (row i: value channel, along it the N keys j), so that gr, gk and gw
// (sums over i for each key j) accumulate whole rows and only gv (a sum over
// j) needs one horizontal sum per row.
template <class Real, int kN>
void backward_head(const float* r, const float* k, const float* v, const float* w, const float* decay, const float* u,
                   const float* gy, float* gr, float* gk, float* gv, float* gw, double* gu_head, const Head& p) {
  // kN: the head size known at compile time (0: p.N at run time).
  const std::int64_t T = p.T, N = kN ? kN : p.N, NN = N * N;
  const float* uh = u + p.offset % p.C;
  // Chunks of K tokens; the causal states at each chunk start are kept.
  const auto K = std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(std::sqrt(static_cast<double>(T)))));
  const std::int64_t chunks = (T + K - 1) / K;
  std::vector<Real> checkpoints(chunks * 2 * NN), chunk(K * 2 * NN), A(NN), Ra(NN), Bs(NN), Rc(NN), d(N);
  std::vector<Real> sr(N), sk(N), sw(N);
  // S[i][·] ← δ⊙S[i][·] + key-side a · value-side b[i].
  const auto update = [&](Real* S, const float* a, const float* b) {
    for (std::int64_t i = 0; i < N; ++i) {
      Real* s = S + i * N;
      const Real bi = b[i];
#pragma omp simd
      for (std::int64_t j = 0; j < N; ++j) s[j] = s[j] * d[j] + static_cast<Real>(a[j]) * bi;
    }
  };
  // Causal sweep: A (keys k, values v) and Ra (keys r, values gy) at every chunk start.
  std::fill(A.begin(), A.end(), Real(0));
  std::fill(Ra.begin(), Ra.end(), Real(0));
  for (std::int64_t t = 0; t < T; ++t) {
    if (t % K == 0) {
      std::copy(A.begin(), A.end(), checkpoints.begin() + (t / K) * 2 * NN);
      std::copy(Ra.begin(), Ra.end(), checkpoints.begin() + (t / K) * 2 * NN + NN);
    }
    const std::int64_t o = p.at(t);
    decays(w, decay, o, d.data(), N);
    update(A.data(), k + o, v + o);
    update(Ra.data(), r + o, gy + o);
  }
  // Anti-causal sweep, chunk by chunk from the end, the chunk's causal states recomputed.
  std::fill(Bs.begin(), Bs.end(), Real(0));
  std::fill(Rc.begin(), Rc.end(), Real(0));
  for (std::int64_t c = chunks - 1; c >= 0; --c) {
    const std::int64_t t0 = c * K, t1 = std::min(T, t0 + K);
    std::copy(checkpoints.begin() + c * 2 * NN, checkpoints.begin() + c * 2 * NN + NN, A.begin());
    std::copy(checkpoints.begin() + c * 2 * NN + NN, checkpoints.begin() + (c + 1) * 2 * NN, Ra.begin());
    for (std::int64_t t = t0; t < t1; ++t) {
      std::copy(A.begin(), A.end(), chunk.begin() + (t - t0) * 2 * NN);
      std::copy(Ra.begin(), Ra.end(), chunk.begin() + (t - t0) * 2 * NN + NN);
      if (t + 1 == t1) break;  // the last token's update is not needed
      const std::int64_t o = p.at(t);
      decays(w, decay, o, d.data(), N);
      update(A.data(), k + o, v + o);
      update(Ra.data(), r + o, gy + o);
    }
    for (std::int64_t t = t1 - 1; t >= t0; --t) {
      const std::int64_t o = p.at(t);
      const float *rt = r + o, *kt = k + o, *vt = v + o, *gt = gy + o, *wt = w + o;
      const Real* At = chunk.data() + (t - t0) * 2 * NN;
      const Real* Rat = At + NN;
      decays(w, decay, o, d.data(), N);
      Real vg = 0, ruk = 0;
      for (std::int64_t i = 0; i < N; ++i) vg += static_cast<Real>(vt[i]) * gt[i];
      for (std::int64_t j = 0; j < N; ++j) {
        const Real ru = static_cast<Real>(rt[j]) * uh[j];
        sr[j] = static_cast<Real>(uh[j]) * kt[j] * vg, sk[j] = ru * vg, sw[j] = 0;
        ruk += ru * kt[j];
      }
      // Row i of the states: its share of gr, gk, gw, all of gv[i]; then the
      // anti-causal states move past token t (B, Rc ← δ⊙· + k vᵀ, r gyᵀ).
      for (std::int64_t i = 0; i < N; ++i) {
        const Real *a = At + i * N, *ra = Rat + i * N;
        Real *bs = Bs.data() + i * N, *rc = Rc.data() + i * N;
        const Real g = gt[i], vi = vt[i];
        Real gvi = 0;
#pragma omp simd reduction(+ : gvi)
        for (std::int64_t j = 0; j < N; ++j) {
          const Real rr = ra[j] + rc[j];
          sr[j] += g * (a[j] + bs[j]);
          sk[j] += vi * rr;
          sw[j] += a[j] * rc[j] + ra[j] * bs[j];
          gvi += static_cast<Real>(kt[j]) * rr;
          bs[j] = bs[j] * d[j] + static_cast<Real>(kt[j]) * vi;
          rc[j] = rc[j] * d[j] + static_cast<Real>(rt[j]) * g;
        }
        gv[o + i] += static_cast<float>(gvi + ruk * g);
      }
      for (std::int64_t j = 0; j < N; ++j) {
        gr[o + j] += static_cast<float>(sr[j]);
        gk[o + j] += static_cast<float>(sk[j]);
        // d δ/dw = −e^w·δ = −exp(w − e^w): 0, not inf·0, where e^w overflows.
        const Real ew = std::exp(static_cast<Real>(wt[j]));
        gw[o + j] += static_cast<float>(-std::exp(static_cast<Real>(wt[j]) - ew) * sw[j]);
        gu_head[j] += static_cast<double>(static_cast<Real>(rt[j]) * kt[j] * vg);
      }
    }
  }
}

template <class Real>
void backward_all(const float* r, const float* k, const float* v, const float* w, const float* u, const float* gy,
                  float* gr, float* gk, float* gv, float* gw, float* gu, std::int64_t B, std::int64_t T,
                  std::int64_t C, std::int64_t N) {
  check_heads(C, N);
  const std::int64_t H = C / N;
  std::vector<double> gu_parts(B * C, 0.0);  // per (image, channel), summed in order below
  // float32: the decays made once (each is read three times); float64: computed where needed.
  const std::int64_t n = B * T * C;
  std::vector<float> decay(std::is_same_v<Real, float> ? n : 0);
  if (!decay.empty()) {
#pragma omp parallel for schedule(static)
    for (std::int64_t j0 = 0; j0 < n; j0 += 4096)
      wkv6_decays(w + j0, decay.data() + j0, std::min<std::int64_t>(4096, n - j0));
  }
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t job = 0; job < B * H; ++job) {
    const std::int64_t b = job / H, h = job % H;
    const Head p{T, C, N, b * T * C + h * N};
    const float* dec = decay.empty() ? nullptr : decay.data();
    double* gu_head = gu_parts.data() + b * C + h * N;
    if (N == 64) backward_head<Real, 64>(r, k, v, w, dec, u, gy, gr, gk, gv, gw, gu_head, p);
    else if (N == 32) backward_head<Real, 32>(r, k, v, w, dec, u, gy, gr, gk, gv, gw, gu_head, p);
    else backward_head<Real, 0>(r, k, v, w, dec, u, gy, gr, gk, gv, gw, gu_head, p);
  }
  for (std::int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (std::int64_t b = 0; b < B; ++b) s += gu_parts[b * C + c];
    gu[c] += static_cast<float>(s);
  }
}

}  // namespace

void wkv6_ref(const float* r, const float* k, const float* v, const float* w, const float* u, float* y,
              std::int64_t B, std::int64_t T, std::int64_t C, std::int64_t N) {
  check_heads(C, N);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < C / N; ++h)
      scan_values<double, 0>(r, k, v, w, nullptr, u, y, Head{T, C, N, b * T * C + h * N}, 0, N);
}

void wkv6_decays(const float* w, float* decay, std::int64_t n) {
#pragma omp simd
  for (std::int64_t j = 0; j < n; ++j) decay[j] = exp_fast(-exp_fast(w[j]));
}

void wkv6_share(const float* r, const float* k, const float* v, const float* decay, const float* u, float* y,
                std::int64_t B, std::int64_t T, std::int64_t C, std::int64_t N, int share, int shares) {
  check_heads(C, N);
  const std::int64_t block = value_block(B, C / N, N, shares), jobs = B * (C / N) * ((N + block - 1) / block);
  forward_problems(r, k, v, decay, u, y, B, T, C, N, block, jobs * share / shares, jobs * (share + 1) / shares);
}

void wkv6(const float* r, const float* k, const float* v, const float* w, const float* u, float* y, std::int64_t B,
          std::int64_t T, std::int64_t C, std::int64_t N) {
  check_heads(C, N);
  const std::int64_t n = B * T * C, block = value_block(B, C / N, N, omp_get_max_threads());
  const std::int64_t jobs = B * (C / N) * ((N + block - 1) / block);
  std::vector<float> decay(n);
#pragma omp parallel for schedule(static)
  for (std::int64_t j0 = 0; j0 < n; j0 += 4096)
    wkv6_decays(w + j0, decay.data() + j0, std::min<std::int64_t>(4096, n - j0));
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t job = 0; job < jobs; ++job)
    forward_problems(r, k, v, decay.data(), u, y, B, T, C, N, block, job, job + 1);
}

void wkv6_backward_ref(const float* r, const float* k, const float* v, const float* w, const float* u,
                       const float* gy, float* gr, float* gk, float* gv, float* gw, float* gu, std::int64_t B,
                       std::int64_t T, std::int64_t C, std::int64_t N) {
  backward_all<double>(r, k, v, w, u, gy, gr, gk, gv, gw, gu, B, T, C, N);
}

void wkv6_backward(const float* r, const float* k, const float* v, const float* w, const float* u, const float* gy,
                   float* gr, float* gk, float* gv, float* gw, float* gu, std::int64_t B, std::int64_t T,
                   std::int64_t C, std::int64_t N) {
  backward_all<float>(r, k, v, w, u, gy, gr, gk, gv, gw, gu, B, T, C, N);
}

}  // namespace vrwkv::ops
