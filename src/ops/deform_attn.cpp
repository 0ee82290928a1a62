#include "ops/deform_attn.hpp"

#include <algorithm>
#include <cmath>

namespace vrwkv::ops {

namespace {

// out[0..Dh) += a · bilinear sample of the level map at pixel (x, y), zero outside.
template <class Acc>
inline void sample_add(const float* level, std::int64_t H, std::int64_t W, std::int64_t row, double x, double y,
                       Acc a, Acc* out, std::int64_t Dh) {
  if (!(x > -1 && x < W && y > -1 && y < H)) return;
  const double fx = std::floor(x), fy = std::floor(y);
  const std::int64_t x0 = static_cast<std::int64_t>(fx), y0 = static_cast<std::int64_t>(fy);
  const Acc lx = static_cast<Acc>(x - fx), ly = static_cast<Acc>(y - fy);
  const Acc w[4] = {(1 - lx) * (1 - ly), lx * (1 - ly), (1 - lx) * ly, lx * ly};
  const std::int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1}, ys[4] = {y0, y0, y0 + 1, y0 + 1};
  for (int c = 0; c < 4; ++c) {
    if (xs[c] < 0 || xs[c] >= W || ys[c] < 0 || ys[c] >= H) continue;
    const float* v = level + (ys[c] * W + xs[c]) * row;
    const Acc aw = a * w[c];
#pragma omp simd
    for (std::int64_t d = 0; d < Dh; ++d) out[d] += aw * v[d];
  }
}

template <class Acc>
void deform_attn_impl(const float* value, const float* offsets, const float* logits, const float* ref, float* out,
                      const DeformShape& s) {
  const std::int64_t M = s.heads, Dh = s.head_dim, P = s.points, L = static_cast<std::int64_t>(s.levels.size());
  const std::int64_t row = M * Dh;  // floats per value pixel
#pragma omp parallel
  {
    std::vector<Acc> acc(Dh), a(L * P);  // per thread, outside the loop
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t n = 0; n < s.N; ++n)
      for (std::int64_t q = 0; q < s.Lq; ++q)
        for (std::int64_t m = 0; m < M; ++m) {
          const std::int64_t nqm = (n * s.Lq + q) * M + m;
          // Softmax over levels × points.
          const float* lg = logits + nqm * L * P;
          const float top = *std::max_element(lg, lg + L * P);
          Acc sum = 0;
          for (std::int64_t i = 0; i < L * P; ++i) sum += a[i] = static_cast<Acc>(std::exp(static_cast<Acc>(lg[i] - top)));
          for (std::int64_t i = 0; i < L * P; ++i) a[i] /= sum;
          std::fill(acc.begin(), acc.end(), Acc(0));
          const float* off = offsets + nqm * L * P * 2;
          for (std::int64_t l = 0; l < L; ++l) {
            const DeformLevel& lv = s.levels[l];
            const float* r = ref + (q * s.ref_levels + (s.ref_levels == 1 ? 0 : l)) * 2;
            const float* level = value + (n * s.len_in + lv.start) * row + m * Dh;
            for (std::int64_t p = 0; p < P; ++p) {
              const float* o = off + (l * P + p) * 2;
              // loc = ref + off / (W, H), then the pixel loc·size − 0.5 (grid_sample on 2·loc − 1).
              const Acc lx = static_cast<Acc>(r[0]) + static_cast<Acc>(o[0]) / static_cast<Acc>(lv.W);
              const Acc ly = static_cast<Acc>(r[1]) + static_cast<Acc>(o[1]) / static_cast<Acc>(lv.H);
              sample_add<Acc>(level, lv.H, lv.W, row, static_cast<double>(lx * lv.W - Acc(0.5)),
                              static_cast<double>(ly * lv.H - Acc(0.5)), a[l * P + p], acc.data(), Dh);
            }
          }
          float* o = out + ((n * s.Lq + q) * M + m) * Dh;
          for (std::int64_t d = 0; d < Dh; ++d) o[d] = static_cast<float>(acc[d]);
        }
  }
}

}  // namespace

void deform_attn_ref(const float* value, const float* offsets, const float* logits, const float* ref, float* out,
                     const DeformShape& s) {
  deform_attn_impl<double>(value, offsets, logits, ref, out, s);
}

void deform_attn(const float* value, const float* offsets, const float* logits, const float* ref, float* out,
                 const DeformShape& s) {
  deform_attn_impl<float>(value, offsets, logits, ref, out, s);
}

std::vector<float> reference_points(const std::vector<DeformLevel>& levels) {
  std::vector<float> ref;
  for (const DeformLevel& l : levels)
    for (std::int64_t i = 0; i < l.H; ++i)
      for (std::int64_t j = 0; j < l.W; ++j) {
        ref.push_back((static_cast<float>(j) + 0.5f) / static_cast<float>(l.W));
        ref.push_back((static_cast<float>(i) + 0.5f) / static_cast<float>(l.H));
      }
  return ref;
}

}  // namespace vrwkv::ops
