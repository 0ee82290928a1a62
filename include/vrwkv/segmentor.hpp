// Semantic segmentation (DENSE.md): the official VRWKV-Adapter backbone
// (spatial prior module, injector/extractor interactions around groups of
// VRWKV blocks) with the UPerHead decoder and the auxiliary FCNHead of the
// ADE20K configs.
//
//   vrwkv::Segmentor seg = vrwkv::Segmentor::load("upernet_vrwkv_adapter_tiny_512_160k_ade20k.pth");
//   vrwkv::Tensor logits = seg.infer(input);          // input F32 [B,3,H,W], normalised
//   vrwkv::Tensor pred = vrwkv::Segmentor::predict(logits);  // I64 [B,H,W]
//
// One backbone call (forward) needs H and W multiples of 32, as the official
// code does; infer() runs mmseg's whole or slide inference on any size.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "vrwkv/adapter.hpp"
#include "vrwkv/context.hpp"
#include "vrwkv/model.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv {

namespace seg {
struct State;
}

struct SegHeadConfig {
  std::int64_t num_classes = 150;
  std::int64_t channels = 512;      // UPerHead
  std::vector<std::int64_t> pool_scales{1, 2, 3, 6};
  bool auxiliary = true;            // FCNHead present
  std::int64_t aux_channels = 256;
};

// How inference runs (mmseg test_cfg, flip) and at what size it answers.
struct SegmentOptions {
  enum class Mode { Whole, Slide } mode = Mode::Slide;
  std::int64_t crop_h = 512, crop_w = 512, stride_h = 341, stride_w = 341;
  bool flip = false;              // average the softmax with the horizontally flipped image's
  std::int64_t out_h = 0, out_w = 0;  // rescale the result to this size; 0: the input's
  bool reference = false;         // the reference ops (separate BatchNorms, float64 accumulation)
  bool bf16 = false;              // the heads' convolutions but the classifiers in bfloat16, float32 sums (fast path)
};

struct SegmentorConfig {
  Config backbone;  // the VRWKV part: no final norm, no head
  AdapterConfig adapter;
  SegHeadConfig head;
  std::vector<std::string> labels;  // class names; empty: ADE20K's for 150 classes, indices otherwise
  SegmentOptions test;              // the checkpoint's test_cfg (ADE20K: slide 512/341)
};

// One backbone call and the heads on it; every map F32 NCHW.
struct SegOutputs {
  std::vector<Tensor> features;  // 4 maps [B,C,h/4..h/32,·]
  Tensor decode_logits;          // [B,K,h/4,w/4]
  Tensor aux_logits;             // [B,K,h/16,w/16], when the checkpoint has an auxiliary head
};

class Segmentor {
 public:
  // An mmseg checkpoint (.pth {'meta','state_dict'}, or a converted
  // .safetensors). Widths, depth, SPM width, value and ConvFFN widths,
  // classes and heads come from the tensors; interactions, deform heads and
  // points, pre/post-norm and the Bi-WKV default to the official config of
  // the model size. Bad files and impossible settings throw Error(Input).
  static Segmentor load(const std::string& path, const AdapterOverrides& overrides = {}, LoadReport* report = nullptr);
  static Segmentor from_state_dict(const TensorMap& state_dict, const SegmentorConfig& config,
                                   const std::string& source = "state dict");
  // The configuration a state dict implies (before overrides).
  // An official segmentor with its official initialisation (upernet_vrwkv_t/s/b/l).
  static Segmentor preset(const std::string& name, std::uint64_t seed = 0);
  static SegmentorConfig infer_config(const TensorMap& state_dict, const std::string& source);
  static void apply_overrides(SegmentorConfig& config, const AdapterOverrides& overrides, const std::string& source);

  const SegmentorConfig& config() const { return config_; }
  const Model& backbone() const { return backbone_; }
  // Every parameter under its official name (backbone.*, decode_head.*, auxiliary_head.*).
  const TensorMap& parameters() const { return params_; }
  // Parameters as PyTorch counts them (BatchNorm running statistics are buffers).
  std::int64_t parameter_count() const;
  // 2 × multiply-adds of every convolution and linear of one whole-mode call on h×w.
  double flops(std::int64_t height, std::int64_t width) const;

  // One backbone call and both heads on F32 [B,3,h,w], h and w multiples of
  // 32. With `trace`, the intermediates are also stored there under the
  // goldens' names (deform.ref1, backbone.spm.c1, backbone.interactions.N.x,
  // backbone.up, backbone.normJ.in, ...) in the goldens' layouts.
  SegOutputs forward(const Tensor& input, const SegmentOptions& options = {}, const Context& ctx = {},
                     TensorMap* trace = nullptr) const;
  // mmseg inference (whole or slide, optional flip), rescaled to the output
  // size: F32 [B,K,Ho,Wo] logits (with flip: log of the averaged softmax).
  Tensor infer(const Tensor& input, const SegmentOptions& options, const Context& ctx = {}) const;
  Tensor infer(const Tensor& input, const Context& ctx = {}) const { return infer(input, config_.test, ctx); }
  // argmax over classes: I64 [B,Ho,Wo].
  static Tensor predict(const Tensor& logits);
  // The crop windows (y1, y2, x1, x2) of slide inference on H×W, mmseg's order.
  static std::vector<std::array<std::int64_t, 4>> slide_windows(std::int64_t H, std::int64_t W,
                                                                const SegmentOptions& options);

 private:
  SegmentorConfig config_;
  Model backbone_;
  Tensor storage_;
  TensorMap params_;  // the adapter's and the heads' (the backbone's are backbone_.parameters())
  std::shared_ptr<seg::State> state_;
};

// The name and shape of every parameter outside the VRWKV blocks and
// embeddings (adapter, decode head, auxiliary head), in checkpoint order.
std::vector<std::pair<std::string, Shape>> segmentor_parameter_shapes(const SegmentorConfig& config);
// Every value in range and consistent (widths divisible by the heads, block
// ranges inside the depth, ...); throws Error(Input) naming `source`.
void check_segmentor_config(const SegmentorConfig& config, const std::string& source);

// The settings the tensors do not tell (interactions, deform heads and
// points, post-norm, Bi-WKV), as JSON: the metadata "vrwkv.segmentor" of a
// converted file, applied when it is loaded (before the caller's overrides).
std::string segmentor_settings_to_json(const SegmentorConfig& config);
AdapterOverrides segmentor_settings_from_json(const std::string& json, const std::string& source);

// Whether a checkpoint file holds a segmentor (a spatial prior module and a
// decode head) rather than a classifier; reads the file.
bool is_segmentor_checkpoint(const std::string& path);

// The official segmentors (ADE20K configs, 150 classes): upernet_vrwkv_t, _s, _b, _l.
std::vector<std::string> segmentor_preset_names();
SegmentorConfig segmentor_preset_config(const std::string& name);  // Error(Input) for another name
// Every parameter (backbone included) as the official code initialises it; deterministic for a seed.
TensorMap segmentor_initial_parameters(const SegmentorConfig& config, std::uint64_t seed);

// ADE20K's 150 class names and palette (shared/data), compiled in.
const std::vector<std::string>& ade20k_classes();
const std::vector<std::array<std::uint8_t, 3>>& ade20k_palette();

}  // namespace vrwkv
