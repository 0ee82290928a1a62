// Linear layers (VRWKV.md 1.6-1.8): y = x·Wᵀ (+ b), PyTorch weight layout.
// x: [M,K]; W: [N,K]; b: [N] or null; y: [M,N]. Row-major, contiguous.
#pragma once

#include <cstdint>

namespace vrwkv::ops {

void linear_ref(const float* x, const float* W, const float* b, float* y, std::int64_t M, std::int64_t N,
                std::int64_t K);
void linear(const float* x, const float* W, const float* b, float* y, std::int64_t M, std::int64_t N, std::int64_t K);

// Backward, adding to the gradients: dx += dy·W ([M,K]), dW += dyᵀ·x ([N,K]),
// db += Σ_m dy ([N]). dx or db null: not wanted.
void linear_backward_ref(const float* x, const float* W, const float* dy, float* dx, float* dW, float* db,
                         std::int64_t M, std::int64_t N, std::int64_t K);
void linear_backward(const float* x, const float* W, const float* dy, float* dx, float* dW, float* db, std::int64_t M,
                     std::int64_t N, std::int64_t K);

}  // namespace vrwkv::ops
