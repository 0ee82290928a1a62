// The VRWKV-Adapter backbone (DENSE.md (a), (b), (f)), shared by the
// segmentor and the detector: its forward on NHWC maps, its configuration
// (what the tensors tell, the official defaults by model size, the user's
// overrides, the settings stored in a converted file) and its FLOPs.
#pragma once

#include <array>
#include <string>

#include "adapter/convs.hpp"
#include "vrwkv/adapter.hpp"
#include "vrwkv/context.hpp"
#include "vrwkv/model.hpp"

namespace vrwkv::adapter {

struct RunOptions {
  AdapterFusion fusion = AdapterFusion::PerInteraction;
  bool reference = false;
  bool bf16 = false;
};

// F32 [B,3,h,w] (h, w multiples of 32: the official backbone's constraint;
// `what` names the caller in the error) → the four maps at strides 4, 8, 16,
// 32 after norm1..4, NHWC. With `trace`, the intermediates are stored under
// the goldens' names (deform.ref1/2, backbone.spm.c1..c4,
// backbone.interactions.N.x/c, backbone.up, backbone.normJ.in).
std::array<Map, 4> forward(const Model& backbone, const AdapterConfig& config, const AdapterW& w, ConvCache& cache,
                           const Tensor& input, const RunOptions& options, const Context& ctx, TensorMap* trace);

// Whether a key belongs to the VRWKV part (patch and position embedding, blocks).
bool is_backbone_model_key(const std::string& key);
// The VRWKV part of a state dict (backbone.pos_embed, backbone.patch_embed.*, backbone.layers.*).
TensorMap backbone_model_tensors(const TensorMap& state_dict);

// What the tensors tell (widths, depth, SPM width, value and ConvFFN widths)
// and the official config of the model size for the rest. Error(Input) when
// the state dict holds no VRWKV-Adapter.
void infer_config(const TensorMap& state_dict, const std::string& source, Config& backbone, AdapterConfig& adapter);
void apply_overrides(Config& backbone, AdapterConfig& adapter, const AdapterOverrides& overrides,
                     const std::string& source);
void check_config(const Config& backbone, const AdapterConfig& adapter, const std::string& source);
// The official adapter of a backbone preset (vrwkv_t/s/b/l).
void preset_config(const std::string& backbone_preset, Config& backbone, AdapterConfig& adapter);

// The settings the tensors do not tell, as JSON (a converted file's metadata).
std::string settings_to_json(const Config& backbone, const AdapterConfig& adapter);
AdapterOverrides settings_from_json(const std::string& json, const std::string& source, const std::string& key);

// 2 × multiply-adds of every convolution and linear of the backbone on h×w.
double flops(const Config& backbone, const AdapterConfig& adapter, const AdapterW& w, std::int64_t h, std::int64_t w_);

}  // namespace vrwkv::adapter
