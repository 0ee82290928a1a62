// The sigmoid gate out = σ(r) ⊙ y of Spatial Mix and Channel Mix (VRWKV.md
// 1.6, 1.7), reference (float64 σ) and fast (ops::sigmoid_fast); out may be y.
// Its backward is inlined where it is used (two products).
#pragma once

#include <cstdint>

namespace vrwkv::ops {

void sigmoid_gate_ref(const float* r, const float* y, float* out, std::int64_t n);
void sigmoid_gate(const float* r, const float* y, float* out, std::int64_t n);

}  // namespace vrwkv::ops
