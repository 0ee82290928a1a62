// A loaded detector's bound weights and the fast path's primitives made from
// them, shared by the copies of a Detector; and the forward of the neck and
// heads.
#pragma once

#include <array>
#include <mutex>
#include <vector>

#include "adapter/convs.hpp"
#include "det/params.hpp"
#include "vrwkv/detector.hpp"

namespace vrwkv::det {

struct State {
  DetWeights w;
  adapter::ConvCache convs;
  // shared_fcs.0 with its inputs reordered from channel-major (c·49 + y·7 + x)
  // to the RoI features' NHWC order ((y·7 + x)·C + c), for the fast path.
  std::once_flag fc0_once;
  std::vector<float> fc0_nhwc;
  const float* fc0_weight_nhwc(std::int64_t channels);
};

// FPN, RPN, RoI heads and masks on the backbone's four NHWC maps (one image).
Detections run_heads(const DetectorConfig& config, State& state, const std::array<adapter::Map, 4>& features,
                     const ImageMeta& meta, const DetectOptions& options, const Context& ctx, TensorMap* trace,
                     DetStageTimes* times);

}  // namespace vrwkv::det
