// The sigmoid gate out = σ(r) ⊙ y of Spatial Mix and Channel Mix (VRWKV.md
// 1.6, 1.7), reference (float64 σ) and fast (ops::sigmoid_fast); out may be y. VRWKV6's SiLU gate and
// tanh likewise.
// Its backward is inlined where it is used (two products).
#pragma once

#include <cstdint>

namespace vrwkv::ops {

void sigmoid_gate_ref(const float* r, const float* y, float* out, std::int64_t n);
void sigmoid_gate(const float* r, const float* y, float* out, std::int64_t n);

// VRWKV6 (VRWKV6.md A.4): out = y ⊙ SiLU(g) = y·g·σ(g), and y = tanh(x) in place (the LoRAs).
void silu_gate_ref(const float* g, const float* y, float* out, std::int64_t n);
void silu_gate(const float* g, const float* y, float* out, std::int64_t n);
void tanh_ref(float* x, std::int64_t n);
void tanh(float* x, std::int64_t n);

}  // namespace vrwkv::ops
