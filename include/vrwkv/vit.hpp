// A ViT (DeiT) baseline in the same engine, for the efficiency comparison of
// the paper (VRWKV.md 9.3): patch 16, class token, learned position
// embedding, pre-norm blocks of multi-head softmax attention and a GELU MLP.
// Attention is computed in blocks of queries, so no T×T matrix is ever held:
// at most a block of rows of one head at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "vrwkv/context.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv {

struct VitConfig {
  std::int64_t embed_dims = 192, depth = 12, heads = 3, patch_size = 16, mlp_dims = 768, num_classes = 1000;
  std::int64_t pos_grid = 14;
};

class Vit {
 public:
  // "vit_t" (DeiT-T: 192 wide, 3 heads) or "vit_s" (DeiT-S: 384, 6 heads),
  // timm-style initialisation (TruncNormal 0.02) from a seed.
  static Vit preset(const std::string& name, std::uint64_t seed);
  const VitConfig& config() const { return config_; }
  std::int64_t parameter_count() const { return storage_.numel(); }
  const TensorMap& parameters() const { return params_; }  // timm names: blocks.N.qkv.weight, ...
  // FLOPs as 2 × multiply-adds of the linears, the convolution and attention.
  double flops(std::int64_t height, std::int64_t width) const;
  // input: F32 [B,3,H,W] with H, W multiples of 16; returns logits [B,K].
  // Calls on one Vit are serialised.
  Tensor forward(const Tensor& input, const Context& ctx = {}) const;

 private:
  struct Packed;  // the block linears packed for oneDNN, made on the first forward
  VitConfig config_;
  Tensor storage_;
  TensorMap params_;
  std::shared_ptr<Packed> packed_;
};

}  // namespace vrwkv
