#include "ops/wkv6.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

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

// The decays of token row w (N keys): δ = exp(−exp(w)).
template <class Real>
inline void decays(const float* w, Real* d, std::int64_t N) {
  for (std::int64_t j = 0; j < N; ++j) d[j] = std::exp(-std::exp(static_cast<Real>(w[j])));
}

// The value channels [i0, i0 + nv) of one head through both scans (kV: nv
// known at compile time, 0: nv at run time). S[j][i] is the state of key j,
// value i. Anti-causal pass (t = T−1 … 0): y_t = rᵀS, then S ← δ_t⊙S + k_t v_tᵀ;
// causal pass (t = 0 … T−1): y_t += rᵀS + (Σ_j r u k)·v_t with the same update.
template <class Real, int kV>
void scan_values(const float* r, const float* k, const float* v, const float* w, const float* u, float* y,
                 const Head& p, std::int64_t i0, std::int64_t nv_runtime) {
  const std::int64_t N = p.N, nv = kV ? kV : nv_runtime;
  const float* uh = u + p.offset % p.C;  // this head's bonus
  std::vector<Real> S(N * nv), d(N), acc(nv);
  for (int causal = 0; causal < 2; ++causal) {
    std::fill(S.begin(), S.end(), Real(0));
    for (std::int64_t step = 0; step < p.T; ++step) {
      const std::int64_t t = causal ? step : p.T - 1 - step, o = p.at(t);
      const float *rt = r + o, *kt = k + o, *vt = v + o + i0;
      decays(w + o, d.data(), N);
      Real* a = acc.data();
      Real bonus = 0;
      if (causal)
        for (std::int64_t j = 0; j < N; ++j) bonus += static_cast<Real>(rt[j]) * uh[j] * kt[j];
#pragma omp simd
      for (std::int64_t i = 0; i < nv; ++i) a[i] = bonus * vt[i];
      for (std::int64_t j = 0; j < N; ++j) {
        Real* s = S.data() + j * nv;
        const Real rj = rt[j], kj = kt[j], dj = d[j];
#pragma omp simd
        for (std::int64_t i = 0; i < nv; ++i) {
          a[i] += rj * s[i];
          s[i] = s[i] * dj + kj * static_cast<Real>(vt[i]);
        }
      }
      float* yt = y + o + i0;
      for (std::int64_t i = 0; i < nv; ++i) yt[i] = static_cast<float>(causal ? yt[i] + a[i] : a[i]);
    }
  }
}

// The fast forward's problems: (image, head, block of kBlock value channels).
constexpr std::int64_t kBlock = 32;

void forward_problems(const float* r, const float* k, const float* v, const float* w, const float* u, float* y,
                      std::int64_t B, std::int64_t T, std::int64_t C, std::int64_t N, std::int64_t begin,
                      std::int64_t end) {
  const std::int64_t H = C / N, blocks = (N + kBlock - 1) / kBlock;
  for (std::int64_t job = begin; job < end; ++job) {
    const std::int64_t b = job / (H * blocks), h = job / blocks % H, i0 = job % blocks * kBlock;
    const Head p{T, C, N, b * T * C + h * N};
    const std::int64_t nv = std::min(kBlock, N - i0);
    if (nv == kBlock) scan_values<float, kBlock>(r, k, v, w, u, y, p, i0, nv);
    else scan_values<float, 0>(r, k, v, w, u, y, p, i0, nv);
  }
}

// The backward of one (image, head) problem in Real arithmetic, adding to the
// gradients; gu_head: this problem's own [N] part of dL/du, a sum over every
// token kept in float64 whatever Real is.
template <class Real>
void backward_head(const float* r, const float* k, const float* v, const float* w, const float* u, const float* gy,
                   float* gr, float* gk, float* gv, float* gw, double* gu_head, const Head& p) {
  const std::int64_t T = p.T, N = p.N, NN = N * N;
  const float* uh = u + p.offset % p.C;
  // Chunks of K tokens; the causal states at each chunk start are kept.
  const auto K = std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(std::sqrt(static_cast<double>(T)))));
  const std::int64_t chunks = (T + K - 1) / K;
  std::vector<Real> checkpoints(chunks * 2 * NN), chunk(K * 2 * NN), A(NN), Ra(NN), Bs(NN), Rc(NN), d(N), gvt(N);
  // S ← δ⊙S + a bᵀ (row j of S scaled by δ_j).
  const auto update = [&](Real* S, const float* a, const float* bvec) {
    for (std::int64_t j = 0; j < N; ++j) {
      Real* s = S + j * N;
      const Real dj = d[j], aj = a[j];
#pragma omp simd
      for (std::int64_t i = 0; i < N; ++i) s[i] = s[i] * dj + aj * static_cast<Real>(bvec[i]);
    }
  };
  // Causal sweep: A, Ra at every chunk start.
  std::fill(A.begin(), A.end(), Real(0));
  std::fill(Ra.begin(), Ra.end(), Real(0));
  for (std::int64_t t = 0; t < T; ++t) {
    if (t % K == 0) {
      std::copy(A.begin(), A.end(), checkpoints.begin() + (t / K) * 2 * NN);
      std::copy(Ra.begin(), Ra.end(), checkpoints.begin() + (t / K) * 2 * NN + NN);
    }
    const std::int64_t o = p.at(t);
    decays(w + o, d.data(), N);
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
      decays(w + o, d.data(), N);
      update(A.data(), k + o, v + o);
      update(Ra.data(), r + o, gy + o);
    }
    for (std::int64_t t = t1 - 1; t >= t0; --t) {
      const std::int64_t o = p.at(t);
      const float *rt = r + o, *kt = k + o, *vt = v + o, *gt = gy + o, *wt = w + o;
      const Real* At = chunk.data() + (t - t0) * 2 * NN;
      const Real* Rat = At + NN;
      decays(wt, d.data(), N);
      Real vg = 0, ruk = 0;
      for (std::int64_t i = 0; i < N; ++i) vg += static_cast<Real>(vt[i]) * gt[i];
      std::fill(gvt.begin(), gvt.end(), Real(0));
      for (std::int64_t j = 0; j < N; ++j) {
        const Real *a = At + j * N, *ra = Rat + j * N, *bs = Bs.data() + j * N, *rc = Rc.data() + j * N;
        Real sr = 0, sk = 0, sw = 0;
        const Real kj = kt[j];
#pragma omp simd reduction(+ : sr, sk, sw)
        for (std::int64_t i = 0; i < N; ++i) {
          const Real g = gt[i], vi = vt[i], rr = ra[i] + rc[i];
          sr += g * (a[i] + bs[i]);
          sk += vi * rr;
          sw += a[i] * rc[i] + ra[i] * bs[i];
          gvt[i] += kj * rr;
        }
        const Real ru = static_cast<Real>(rt[j]) * uh[j];
        gr[o + j] += static_cast<float>(sr + static_cast<Real>(uh[j]) * kj * vg);
        gk[o + j] += static_cast<float>(sk + ru * vg);
        const Real e = std::exp(static_cast<Real>(wt[j]));
        // d δ/dw = −e^w·δ; where δ underflows to 0 the product's limit is 0.
        if (d[j] != 0) gw[o + j] += static_cast<float>(-e * d[j] * sw);
        gu_head[j] += static_cast<double>(static_cast<Real>(rt[j]) * kj * vg);
        ruk += ru * kj;
      }
      for (std::int64_t i = 0; i < N; ++i) gv[o + i] += static_cast<float>(gvt[i] + ruk * static_cast<Real>(gt[i]));
      update(Bs.data(), kt, vt);
      update(Rc.data(), rt, gt);
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
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t job = 0; job < B * H; ++job) {
    const std::int64_t b = job / H, h = job % H;
    backward_head<Real>(r, k, v, w, u, gy, gr, gk, gv, gw, gu_parts.data() + b * C + h * N,
                        Head{T, C, N, b * T * C + h * N});
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
      scan_values<double, 0>(r, k, v, w, u, y, Head{T, C, N, b * T * C + h * N}, 0, N);
}

void wkv6_share(const float* r, const float* k, const float* v, const float* w, const float* u, float* y,
                std::int64_t B, std::int64_t T, std::int64_t C, std::int64_t N, int share, int shares) {
  check_heads(C, N);
  const std::int64_t jobs = B * (C / N) * ((N + kBlock - 1) / kBlock);
  forward_problems(r, k, v, w, u, y, B, T, C, N, jobs * share / shares, jobs * (share + 1) / shares);
}

void wkv6(const float* r, const float* k, const float* v, const float* w, const float* u, float* y, std::int64_t B,
          std::int64_t T, std::int64_t C, std::int64_t N) {
  check_heads(C, N);
  const std::int64_t jobs = B * (C / N) * ((N + kBlock - 1) / kBlock);
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t job = 0; job < jobs; ++job) forward_problems(r, k, v, w, u, y, B, T, C, N, job, job + 1);
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
