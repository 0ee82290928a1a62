// Branch-free elementary functions the compiler can vectorise (libm's exp is
// a call per element). Accuracy is stated per function.
#pragma once

#include <cstdint>
#include <cstring>

namespace vrwkv::ops {

// e^x for float, relative error < 2e-7 (about 2 ulp) for x in [−87, 88];
// inputs below −87 give 0-ish tiny values, above 88 are clamped. Cody–Waite
// reduction x = n·ln2 + r, |r| ≤ ln2/2, then a degree-7 Taylor polynomial.
inline float exp_fast(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // Round to nearest by adding and removing 1.5·2^23 (vectorises, unlike round()).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// e^x for double, relative error < 1e-15 for x in [−708, 709] (clamped
// outside). Same reduction, degree-13 Taylor polynomial.
inline double exp_fast(double x) {
  x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  const double n = (x * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;  // 1.5·2^52
  const double r = (x - n * 0.6931471803691238) - n * 1.9082149292705877e-10;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const std::int64_t bits = (static_cast<std::int64_t>(n) + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid_fast(float x) { return 1.0f / (1.0f + exp_fast(-x)); }

// tanh x = 1 − 2/(e^{2x} + 1): absolute error ≲ 2e-7 (relative, where |tanh x| is tiny, ≲ 1e-6 for |x| > 1e-3;
// below that the odd Taylor term x − x³/3 is used).
inline float tanh_fast(float x) {
  const float big = 1.0f - 2.0f / (exp_fast(2.0f * x) + 1.0f);
  return (x > -1e-3f && x < 1e-3f) ? x - x * x * x * (1.0f / 3.0f) : big;
}

}  // namespace vrwkv::ops
