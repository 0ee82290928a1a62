// The configuration of a VRWKV backbone and head (VRWKV.md 1.10, 4).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vrwkv {

enum class HeadKind { None, Linear, Mlp };  // none / head.fc / head.0-tanh-head.2 (VRWKV-L)
enum class WkvSemantics { Paper, Official };
// mmcls: short side 256, centre crop 224 (VRWKV-T/S/B); internimage: short
// side 384, centre crop 384 (VRWKV-L); resize: models trained here — the
// image in the model's channels, resized to the training grid × patch size,
// normalised with Config::mean/std.
enum class Preprocess { Mmcls, InternImage, Resize };

struct Config {
  std::int64_t embed_dims = 192;
  std::int64_t depth = 12;
  std::int64_t patch_size = 16;
  std::int64_t in_channels = 3;
  std::int64_t hidden_dims = 768;  // ChannelMix hidden size, hidden_rate·embed_dims
  std::int64_t pos_grid_h = 14, pos_grid_w = 14;  // the training grid of pos_embed
  int shift_pixel = 1;
  double channel_gamma = 0.25;
  bool key_norm = false;
  bool post_norm = false;
  bool layer_scale = false;  // gamma1/gamma2 present
  bool final_norm = true;
  HeadKind head = HeadKind::Linear;
  std::int64_t num_classes = 1000;
  std::int64_t head_hidden = 0;  // Mlp head only
  std::vector<std::int64_t> out_indices;  // block indices in [0, depth), ascending
  WkvSemantics wkv = WkvSemantics::Official;
  int wkv_chunks = 32;
  Preprocess preprocess = Preprocess::Mmcls;
  std::array<float, 3> mean{123.675f, 116.28f, 103.53f}, std{58.395f, 57.12f, 57.375f};  // 0..255, resize only
  std::vector<std::string> class_names;  // empty: ImageNet names for 1000 classes, indices otherwise
};

// Values a user can set by hand over what was inferred from the tensors.
struct ConfigOverrides {
  std::optional<bool> post_norm, key_norm, layer_scale, final_norm;
  std::optional<int> shift_pixel;
  std::optional<double> channel_gamma;
  std::optional<std::int64_t> pos_grid_h, pos_grid_w;
  std::optional<HeadKind> head;
  std::optional<std::vector<std::int64_t>> out_indices;  // negative indices count from the end
  std::optional<WkvSemantics> wkv;
  std::optional<int> wkv_chunks;
  std::optional<Preprocess> preprocess;
};

std::string to_string(HeadKind h);        // "none", "linear", "mlp"
std::string to_string(WkvSemantics s);    // "paper", "official"
std::string to_string(Preprocess p);      // "mmcls", "internimage", "resize"
HeadKind head_from_string(const std::string& s);          // these throw Error(Input)
WkvSemantics wkv_from_string(const std::string& s);
Preprocess preprocess_from_string(const std::string& s);

// JSON text carried in the safetensors metadata under "vrwkv.config".
std::string config_to_json(const Config& config);
Config config_from_json(const std::string& json, const std::string& source);

}  // namespace vrwkv
