// A loaded segmentor's bound weights and the fast path's primitives made
// from them, shared by the copies of a Segmentor; and the forward of one
// backbone call with the heads.
#pragma once

#include "adapter/convs.hpp"
#include "seg/params.hpp"
#include "vrwkv/segmentor.hpp"

namespace vrwkv::seg {

struct State {
  SegWeights w;
  adapter::ConvCache convs;
};

// One backbone call and the heads (Segmentor::forward). With `trace`, the
// intermediates are also stored under the goldens' names (backbone.spm.c1,
// backbone.interactions.N.x, backbone.normJ.in, ...), in the goldens' layouts.
SegOutputs run(const Segmentor& segmentor, State& state, const Tensor& input, const SegmentOptions& options,
               const Context& ctx, TensorMap* trace);

}  // namespace vrwkv::seg
