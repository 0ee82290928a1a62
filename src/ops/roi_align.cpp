#include "ops/roi_align.hpp"

#include <algorithm>
#include <cmath>

namespace vrwkv::ops {

namespace {

// One bilinear sample: four taps (pixel indices) and their weights; all weights 0 outside.
template <typename T>
struct Sample {
  std::int64_t p[4];
  T w[4];
};

template <typename T>
Sample<T> bilinear(T y, T x, std::int64_t H, std::int64_t W) {
  Sample<T> s{{0, 0, 0, 0}, {0, 0, 0, 0}};
  if (y < -1.0 || y > static_cast<T>(H) || x < -1.0 || x > static_cast<T>(W)) return s;
  if (y <= 0) y = 0;
  if (x <= 0) x = 0;
  std::int64_t y_lo = static_cast<std::int64_t>(y), x_lo = static_cast<std::int64_t>(x), y_hi, x_hi;
  if (y_lo >= H - 1) {
    y_hi = y_lo = H - 1;
    y = static_cast<T>(y_lo);
  } else {
    y_hi = y_lo + 1;
  }
  if (x_lo >= W - 1) {
    x_hi = x_lo = W - 1;
    x = static_cast<T>(x_lo);
  } else {
    x_hi = x_lo + 1;
  }
  const T ly = y - static_cast<T>(y_lo), lx = x - static_cast<T>(x_lo), hy = T(1) - ly, hx = T(1) - lx;
  s.p[0] = y_lo * W + x_lo;
  s.p[1] = y_lo * W + x_hi;
  s.p[2] = y_hi * W + x_lo;
  s.p[3] = y_hi * W + x_hi;
  s.w[0] = hy * hx;
  s.w[1] = hy * lx;
  s.w[2] = ly * hx;
  s.w[3] = ly * lx;
  return s;
}

// One RoI; T is the type of the coordinates and the accumulation.
template <typename T>
void one_roi(const RoiMap& m, std::int64_t C, const float* roi, std::int64_t S, float* out, std::vector<T>& acc,
             std::vector<Sample<T>>& samples) {
  const T scale = static_cast<T>(m.spatial_scale);
  const T x0 = static_cast<T>(roi[0]) * scale - T(0.5), y0 = static_cast<T>(roi[1]) * scale - T(0.5);
  const T x1 = static_cast<T>(roi[2]) * scale - T(0.5), y1 = static_cast<T>(roi[3]) * scale - T(0.5);
  const T rw = x1 - x0, rh = y1 - y0;
  const T bw = rw / static_cast<T>(S), bh = rh / static_cast<T>(S);
  // ceil in float, as the kernel's ceilf (0 samples for an empty RoI: output 0).
  const std::int64_t gh = std::max<std::int64_t>(static_cast<std::int64_t>(std::ceil(static_cast<float>(rh / S))), 0);
  const std::int64_t gw = std::max<std::int64_t>(static_cast<std::int64_t>(std::ceil(static_cast<float>(rw / S))), 0);
  const T count = static_cast<T>(std::max<std::int64_t>(gh * gw, 1));
  samples.clear();
  for (std::int64_t ph = 0; ph < S; ++ph)
    for (std::int64_t pw = 0; pw < S; ++pw)
      for (std::int64_t iy = 0; iy < gh; ++iy) {
        const T y = y0 + static_cast<T>(ph) * bh + (static_cast<T>(iy) + T(0.5)) * bh / static_cast<T>(gh);
        for (std::int64_t ix = 0; ix < gw; ++ix) {
          const T x = x0 + static_cast<T>(pw) * bw + (static_cast<T>(ix) + T(0.5)) * bw / static_cast<T>(gw);
          samples.push_back(bilinear<T>(y, x, m.H, m.W));
        }
      }
  acc.assign(C, T(0));
  const std::int64_t per_bin = gh * gw;
  for (std::int64_t b = 0; b < S * S; ++b) {
    std::fill(acc.begin(), acc.end(), T(0));
    for (std::int64_t k = 0; k < per_bin; ++k) {
      const Sample<T>& s = samples[b * per_bin + k];
      for (int t = 0; t < 4; ++t) {
        const T w = s.w[t];
        if (w == T(0)) continue;
        const float* px = m.x + s.p[t] * C;
        T* a = acc.data();
#pragma omp simd
        for (std::int64_t c = 0; c < C; ++c) a[c] += w * static_cast<T>(px[c]);
      }
    }
    float* o = out + b * C;
    for (std::int64_t c = 0; c < C; ++c) o[c] = static_cast<float>(acc[c] / count);
  }
}

template <typename T>
void roi_align_impl(const std::vector<RoiMap>& maps, std::int64_t C, const float* rois, const std::int64_t* level,
                    std::int64_t n, std::int64_t S, float* out) {
#pragma omp parallel
  {
    std::vector<T> acc;
    std::vector<Sample<T>> samples;
#pragma omp for schedule(dynamic, 4)
    for (std::int64_t i = 0; i < n; ++i) one_roi<T>(maps[level[i]], C, rois + i * 4, S, out + i * S * S * C, acc, samples);
  }
}

}  // namespace

void roi_align_ref(const std::vector<RoiMap>& maps, std::int64_t C, const float* rois, const std::int64_t* level,
                   std::int64_t n, std::int64_t S, float* out) {
  roi_align_impl<double>(maps, C, rois, level, n, S, out);
}

void roi_align(const std::vector<RoiMap>& maps, std::int64_t C, const float* rois, const std::int64_t* level,
               std::int64_t n, std::int64_t S, float* out) {
  roi_align_impl<float>(maps, C, rois, level, n, S, out);
}

std::vector<std::int64_t> roi_levels(const float* rois, std::int64_t n, std::int64_t levels) {
  std::vector<std::int64_t> out(n);
  for (std::int64_t i = 0; i < n; ++i) {
    const float* r = rois + i * 4;
    const double scale = std::sqrt((static_cast<double>(r[2]) - r[0]) * (static_cast<double>(r[3]) - r[1]));
    const double l = std::floor(std::log2(scale / 56.0 + 1e-6));
    out[i] = static_cast<std::int64_t>(std::clamp(l, 0.0, static_cast<double>(levels - 1)));
  }
  return out;
}

}  // namespace vrwkv::ops
