// The configuration of a VRWKV model (VRWKV.md 1.10, 4), in four parts:
//  - Architecture: what the tensors mean (shapes, block kind, norms, head);
//  - Preprocessing: how an image becomes an input;
//  - labels: the class names;
//  - RunOptions: how the model runs unless a call says otherwise (Bi-WKV
//    semantics, the blocks whose outputs are feature maps).
// Files record all four (the safetensors metadata "vrwkv.config").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "vrwkv/preprocessing.hpp"
#include "vrwkv/wkv.hpp"

namespace vrwkv {

// The block of the backbone. Vrwkv: Spatial Mix (Q-Shift, Bi-WKV, gate) +
// Channel Mix (VRWKV.md 1.4-1.7). Vrwkv6: the RWKV-6 Spatial Mix (per-head
// Q-Shift, ddlerp, data-dependent decay, Bi-WKV6, GroupNorm, SiLU gate) and
// the same Channel Mix with the per-head shift (VRWKV6.md A.4). The
// ablation's variants of the VRWKV block are options of it (shift,
// wkv_direction, wkv_decay), not kinds. New kinds are added here and in
// src/model/blocks/ (docs/ARCHITECTURE.md).
enum class BlockKind { Vrwkv, Vrwkv6 };
enum class HeadKind { None, Linear, Mlp };  // none / head.fc / head.0-tanh-head.2 (VRWKV-L)
// The token shift before the mixes (ABLATION.md B.3): Q-Shift (VRWKV.md 1.5);
// RWKV's original 1-D shift (every channel takes the token shift_pixel before
// it in raster order, zeros before the first); none (shift_pixel 0, no
// spatial_mix tensors in a VRWKV block).
enum class TokenShift { Q, OneD, None };

struct Architecture {
  BlockKind block = BlockKind::Vrwkv;
  std::int64_t embed_dims = 192;
  std::int64_t depth = 12;
  std::int64_t patch_size = 16;
  std::int64_t in_channels = 3;
  std::int64_t hidden_dims = 768;  // ChannelMix hidden size, hidden_rate·embed_dims
  std::int64_t pos_grid_h = 14, pos_grid_w = 14;  // the training grid of pos_embed
  TokenShift shift = TokenShift::Q;  // None exactly when shift_pixel is 0
  int shift_pixel = 1;               // the shift distance; 0: no shift (and no spatial_mix tensors)
  double channel_gamma = 0.25;       // Q-Shift only
  // The attention's direction and operands (VRWKV only; ABLATION.md B.3).
  WkvDirection wkv_direction = WkvDirection::Bi;
  WkvDecay wkv_decay = WkvDecay::Vrwkv;
  bool key_norm = false;
  bool post_norm = false;
  bool layer_scale = false;  // gamma1/gamma2 present
  bool final_norm = true;
  HeadKind head = HeadKind::Linear;
  std::int64_t num_classes = 1000;
  std::int64_t head_hidden = 0;  // Mlp head only
  // Vrwkv6 only (VRWKV6.md A.3): channels per attention head, the rank of the
  // five ddlerp LoRAs (TIME_MIX_EXTRA_DIM) and of the decay LoRA.
  std::int64_t head_size = 64, mix_rank = 32, decay_rank = 64;
};

struct RunOptions {
  WkvSemantics wkv = WkvSemantics::Official;
  int wkv_chunks = 32;                    // S, official semantics only
  std::vector<std::int64_t> out_indices;  // block indices in [0, depth), ascending
};

struct Config {
  Architecture arch;
  Preprocessing preprocessing;
  std::vector<std::string> labels;  // class names; empty: ImageNet names for 1000 classes, indices otherwise
  RunOptions run;
};

// Values a user can set by hand over what was inferred from the tensors.
struct ConfigOverrides {
  std::optional<bool> post_norm, key_norm, layer_scale, final_norm;
  std::optional<TokenShift> shift;
  std::optional<int> shift_pixel;
  std::optional<double> channel_gamma;
  std::optional<WkvDirection> wkv_direction;
  std::optional<WkvDecay> wkv_decay;
  std::optional<std::int64_t> pos_grid_h, pos_grid_w;
  std::optional<HeadKind> head;
  std::optional<std::vector<std::int64_t>> out_indices;  // negative indices count from the end
  std::optional<WkvSemantics> wkv;
  std::optional<int> wkv_chunks;
  std::optional<Preprocess> preprocess;
};

std::string to_string(BlockKind b);  // "vrwkv", "vrwkv6"
std::string to_string(HeadKind h);   // "none", "linear", "mlp"
std::string to_string(TokenShift s);  // "q", "1d", "none"
BlockKind block_from_string(const std::string& s);  // these throw Error(Input)
HeadKind head_from_string(const std::string& s);
TokenShift shift_from_string(const std::string& s);

// JSON text carried in the safetensors metadata under "vrwkv.config".
std::string config_to_json(const Config& config);
Config config_from_json(const std::string& json, const std::string& source);

}  // namespace vrwkv
