// The vrwkv library API: load a Vision-RWKV model and run it.
//
//   vrwkv::Model model = vrwkv::Model::load("vrwkv_t_in1k_224.pth");
//   vrwkv::Outputs out = model.forward(input);   // input: F32 [B,3,H,W], normalised
//   out.logits                                   // F32 [B,num_classes]
//
// The backbone runs in stages, for callers that work between them (dense
// heads, adapters):
//
//   vrwkv::Tokens x = model.embed(input);        // patch + position embedding
//   model.run_blocks(x, 0, 3);                   // blocks [0, 3), in place
//   ...                                          // the caller's work on x.x
//   model.run_blocks(x, 3, 12);
//   vrwkv::Tensor f = model.feature_map(x, true);  // final norm, [B,C,h,w]
//
// Every call that computes takes a Context (threads; vrwkv/context.hpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vrwkv/config.hpp"
#include "vrwkv/context.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv {

namespace model {
struct State;
}

struct ForwardOptions {
  bool keep_blocks = false;  // fill Outputs::embed and Outputs::blocks (for parity checks)
  bool reference = false;    // the plain reference ops (the training forward with the _ref ops)
  bool bf16 = false;         // block linears in bfloat16 with float32 accumulation (AVX-512 BF16)
};

struct Outputs {
  std::vector<Tensor> features;  // one F32 [B,C,h,w] per out index, in RunOptions::out_indices order
  Tensor pooled;                 // F32 [B,C]: global average of the last feature map
  Tensor logits;                 // F32 [B,num_classes]; empty when there is no head
  Tensor embed;                  // F32 [B,T,C]: tokens + position embedding (keep_blocks only)
  std::vector<Tensor> blocks;    // F32 [B,T,C] per block, before the final norm (keep_blocks only)
};

// The tokens between the stages of the backbone: x is F32 [B,T,C] on a grid
// of grid_h × grid_w patches (T = grid_h·grid_w), token t at row t / grid_w.
struct Tokens {
  Tensor x;
  std::int64_t grid_h = 0, grid_w = 0;
};

// Where a model came from and what in the file was not used.
struct LoadReport {
  std::string format;                // "pth" or "safetensors"
  std::string layout;                // e.g. "mmcls (meta, state_dict)"
  std::vector<std::string> ignored;  // keys not used by the model
};

class Model {
 public:
  // Reads a .pth checkpoint (any layout of VRWKV.md 5) or a vrwkv .safetensors
  // file; infers the configuration from the tensors (or reads it from the
  // safetensors metadata), then applies the overrides. Bad files, missing or
  // mis-shaped tensors and impossible overrides throw Error(Input).
  static Model load(const std::string& path, const ConfigOverrides& overrides = {}, LoadReport* report = nullptr);
  // Builds a model from official parameter names (see parameter_shapes());
  // `source` names the origin in error messages.
  static Model from_state_dict(const TensorMap& state_dict, const Config& config,
                               const std::string& source = "state dict");

  const Config& config() const { return config_; }
  const Architecture& architecture() const { return config_.arch; }
  // Every parameter under its official name, as views into one allocation.
  const TensorMap& parameters() const { return params_; }
  std::int64_t parameter_count() const;
  // All parameters as one F32 [parameter_count] tensor in parameter_shapes()
  // order, sharing the model's buffer: training updates the weights through
  // it. The fast forward packs the weights it uses on first use: call
  // parameters_updated() after writing through this tensor.
  Tensor parameter_storage();
  void parameters_updated();
  // FLOPs by the convention of the official get_flops_backbone.py
  // (multiply-accumulates of convolutions and linears, LayerNorm 2·numel,
  // pooling numel, plus 29·T·C per block) for an H×W input.
  double flops(std::int64_t height, std::int64_t width) const;

  // The whole model: embedding, blocks, feature maps at the out indices (the
  // final norm after the last block), pooling and head. Activation memory is
  // planned for the input's shape and kept for the next call of the same
  // shape; calls on one Model are serialised.
  Outputs forward(const Tensor& input, const ForwardOptions& options = {}, const Context& ctx = {}) const;

  // The stages of forward. embed: patch embedding + position embedding
  // (resized to the input's grid) of F32 [B,Cin,H,W]. run_blocks: blocks
  // [begin, end) on the tokens, in place (work is fused across blocks only
  // inside the range). feature_map: the tokens as F32 [B,C,h,w], through the
  // final norm when `final_norm` (it follows the last block).
  Tokens embed(const Tensor& input, const ForwardOptions& options = {}, const Context& ctx = {}) const;
  void run_blocks(Tokens& tokens, std::int64_t begin, std::int64_t end, const ForwardOptions& options = {},
                  const Context& ctx = {}) const;
  Tensor feature_map(const Tokens& tokens, bool final_norm, const ForwardOptions& options = {},
                     const Context& ctx = {}) const;
  // The classifier on pooled features F32 [B,C]: logits F32 [B,num_classes].
  Tensor head(const Tensor& pooled, const ForwardOptions& options = {}, const Context& ctx = {}) const;

  // The bound weights (library internals).
  const model::State& state() const { return *state_; }

 private:
  Config config_;
  Tensor storage_;
  TensorMap params_;
  std::shared_ptr<model::State> state_;
};

// The official name and shape of every parameter of an architecture, in storage order.
std::vector<std::pair<std::string, Shape>> parameter_shapes(const Architecture& arch);

// Infers a configuration from official parameter names (VRWKV.md 5.1, 5.2),
// checking every tensor's shape against the others.
Config infer_config(const TensorMap& state_dict, const std::string& source);

// Applies overrides and checks the result is a model that can run.
void apply_overrides(Config& config, const ConfigOverrides& overrides, const std::string& source);

// Every value in range and consistent (sizes, depth, out indices, chunks,
// mean/std, class names), whether it came from a file, a flag or a training
// configuration; throws Error(Input) naming `source` and the value. Runs
// before any parameter memory is allocated.
void check_architecture(const Architecture& arch, const std::string& source);
void check_config(const Config& config, const std::string& source);

// Global average pooling of a feature map F32 [B,C,h,w] to F32 [B,C].
Tensor average_pool(const Tensor& feature_map);

}  // namespace vrwkv
