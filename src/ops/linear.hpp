// Linear layers (VRWKV.md 1.6-1.8): y = x·Wᵀ (+ b), PyTorch weight layout.
// x: [M,K]; W: [N,K]; b: [N] or null; y: [M,N]. Row-major, contiguous.
#pragma once

#include <cstdint>

namespace vrwkv::ops {

void linear_ref(const float* x, const float* W, const float* b, float* y, std::int64_t M, std::int64_t N,
                std::int64_t K);
void linear(const float* x, const float* W, const float* b, float* y, std::int64_t M, std::int64_t N, std::int64_t K);

}  // namespace vrwkv::ops
