// A loaded segmentor's bound weights and the fast path's primitives made
// from them (BatchNorms folded into the convolutions before them), shared by
// the copies of a Segmentor; and the forward of one backbone call.
#pragma once

#include <map>
#include <memory>
#include <mutex>

#include "ops/conv.hpp"
#include "seg/params.hpp"
#include "vrwkv/segmentor.hpp"

namespace vrwkv::seg {

struct State {
  SegWeights w;
  std::mutex mutex;  // guards the maps below
  std::map<const ConvW*, std::unique_ptr<ops::Conv2d>> convs;
  std::unique_ptr<ops::ConvTranspose2d> up;

  // The fast convolution of c (made on first use).
  ops::Conv2d& conv(const ConvW& c);
  ops::ConvTranspose2d& up_conv();
};

// One backbone call and the heads (Segmentor::forward). With `trace`, the
// intermediates are also stored under the goldens' names (backbone.spm.c1,
// backbone.interactions.N.x, backbone.normJ.in, ...), in the goldens' layouts.
SegOutputs run(const Segmentor& segmentor, State& state, const Tensor& input, const SegmentOptions& options,
               const Context& ctx, TensorMap* trace);

}  // namespace vrwkv::seg
