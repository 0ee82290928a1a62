// A loaded model's weights bound into typed structs once (model/params.hpp),
// with the block kind's implementations made from them, shared by the copies
// of a Model.
#pragma once

#include <memory>
#include <mutex>

#include "model/block.hpp"
#include "model/params.hpp"
#include "vrwkv/config.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv::model {

struct State {
  BackboneWeights backbone{};
  HeadWeights head{};
  const float* base = nullptr;            // the parameter storage
  std::unique_ptr<FastBlocks> fast;       // the fast inference blocks
  std::unique_ptr<TrainBlocks> reference;  // the training blocks, run with the reference ops
  std::mutex mutex;                        // serialises the calls on one model (they share workspaces)
};

std::shared_ptr<State> bind(const Config& config, const TensorMap& params, const float* base);

// A lookup over a model's parameters for binding: every name asked for must be there.
Lookup lookup_in(const TensorMap& params);

}  // namespace vrwkv::model
