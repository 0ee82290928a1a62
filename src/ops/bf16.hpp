// bfloat16 storage for activations that feed bf16 GEMMs: the upper 16 bits of
// a float32, rounded to nearest even, as oneDNN and AVX-512 BF16 round.
#pragma once

#include <cstdint>
#include <cstring>

namespace vrwkv::ops {

struct Bf16 {
  std::uint16_t bits;
};

inline Bf16 to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  const std::uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<std::uint16_t>(nan ? (u >> 16) | 0x40u : rounded >> 16)};  // NaN stays a (quiet) NaN
}

inline float to_float(Bf16 b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Writes a float to float or bf16 storage.
inline void store(float* p, float v) { *p = v; }
inline void store(Bf16* p, float v) { *p = to_bf16(v); }

}  // namespace vrwkv::ops
