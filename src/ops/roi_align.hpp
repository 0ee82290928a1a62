// RoIAlign as mmcv's CPU kernel computes it with aligned=True,
// pool_mode='avg', sampling_ratio=0 (DETECTION.md 3), on NHWC maps of one
// image: for RoI (x1, y1, x2, y2) on a map of stride s, the S×S bins of
// [x1/s − 0.5, x2/s − 0.5] × (same for y) each average ceil(h/S)·ceil(w/S)
// bilinear samples at their sub-cell centres; a sample outside
// [−1, H] × [−1, W] is 0, one inside is clamped to the map.
//
// rois [n,4] in image pixels; level[n] selects the map of each; out
// [n,S,S,C]. The reference accumulates in float64, the fast version in
// float32 with the sample weights computed once per RoI and the channels
// innermost (vectorised), RoIs spread over the threads.
#pragma once

#include <cstdint>
#include <vector>

namespace vrwkv::ops {

struct RoiMap {
  const float* x;  // [H,W,C]
  std::int64_t H, W;
  double spatial_scale;  // 1/stride
};

void roi_align_ref(const std::vector<RoiMap>& maps, std::int64_t C, const float* rois, const std::int64_t* level,
                   std::int64_t n, std::int64_t S, float* out);
void roi_align(const std::vector<RoiMap>& maps, std::int64_t C, const float* rois, const std::int64_t* level,
               std::int64_t n, std::int64_t S, float* out);

// SingleRoIExtractor's level of each RoI: floor(log2(√(w·h)/56 + 1e-6)) clamped to [0, levels−1].
std::vector<std::int64_t> roi_levels(const float* rois, std::int64_t n, std::int64_t levels);

}  // namespace vrwkv::ops
