// The core of multi-scale deformable attention (DENSE.md (b),
// ms_deform_attn_core_pytorch): for query q of image n and head m,
//   out[n,q,m·Dh + d] = Σ_{l,p} a[n,q,m,l,p] · bilinear(value_l[n,·,m,d], loc[n,q,m,l,p]),
//   a = softmax over (l,p) of logits[n,q,m,·],
//   loc = ref[q, l or 0] + offsets[n,q,m,l,p] / (W_l, H_l)   (x, y in [0,1]),
// bilinear as grid_sample(align_corners=False, zero padding) at the pixel
// (loc_x·W_l − 0.5, loc_y·H_l − 0.5): each of the four corners inside the
// map contributes its weight, the others nothing.
//
// value: [N, Len_in, M·Dh] (the value projection's output; level l's pixels
// start at row starts[l], row-major H_l×W_l); offsets: [N, Lq, M, L, P, 2];
// logits: [N, Lq, M, L·P]; ref: [Lq, ref_levels, 2] with ref_levels 1 (the
// same point on every level) or L; out: [N, Lq, M·Dh].
// O(N·Lq·M·L·P·Dh); no allocation.
#pragma once

#include <cstdint>
#include <vector>

namespace vrwkv::ops {

struct DeformLevel {
  std::int64_t H, W, start;
};

struct DeformShape {
  std::int64_t N, Lq, len_in, heads, head_dim, points;
  std::vector<DeformLevel> levels;
  std::int64_t ref_levels;
};

void deform_attn_ref(const float* value, const float* offsets, const float* logits, const float* ref, float* out,
                     const DeformShape& s);
void deform_attn(const float* value, const float* offsets, const float* logits, const float* ref, float* out,
                 const DeformShape& s);

// The reference points of `levels` (get_reference_points): pixel centres
// ((j + 0.5)/W, (i + 0.5)/H) in (x, y) order, row-major, levels one after the
// other, computed in float32 as the official code does (linspace float32).
// Returns [Σ H·W, 2].
std::vector<float> reference_points(const std::vector<DeformLevel>& levels);

}  // namespace vrwkv::ops
