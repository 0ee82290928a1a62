// The VRWKV-Adapter backbone of the dense models (DENSE.md (a), (b)): a
// spatial prior module, and interactions (injector → a group of VRWKV blocks
// → extractor) that pass information between the RWKV tokens and the
// convolutional features at strides 8, 16 and 32. It returns four maps at
// strides 4–32. The segmentor and the detector share it; they differ only in
// how the RWKV tokens join the four maps (AdapterFusion).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "vrwkv/config.hpp"

namespace vrwkv {

// Inclusive block ranges, one per interaction (`interaction_indexes`).
using BlockRange = std::pair<std::int64_t, std::int64_t>;

struct AdapterConfig {
  std::int64_t conv_inplane = 64;  // SPM width i
  std::int64_t deform_heads = 6;   // M
  std::int64_t deform_points = 4;  // P
  std::int64_t value_dims = 192;   // int(C·deform_ratio)
  std::int64_t cffn_hidden = 48;   // int(C·cffn_ratio)
  std::vector<BlockRange> interactions;  // 4 of them
};

// How the RWKV tokens join the four maps (DENSE.md (a) 6 and (f)).
enum class AdapterFusion : std::uint8_t {
  PerInteraction,  // segmentation: interaction k's tokens go to stride 4·2^k
  Final,           // detection: the last interaction's tokens go to all four
};

// The settings a checkpoint's tensors do not tell, as a user sets them
// (--post-norm, --interaction-indexes, --deform-heads, --deform-points,
// --wkv, --wkv-chunks).
struct AdapterOverrides {
  std::optional<bool> post_norm;
  std::optional<std::vector<BlockRange>> interactions;
  std::optional<std::int64_t> deform_heads, deform_points;
  std::optional<WkvSemantics> wkv;
  std::optional<int> wkv_chunks;
};

// What a checkpoint file holds, told by its tensor names (reads the file):
// a classifier, a segmentor (adapter + decode head) or a detector (FPN + RPN).
enum class CheckpointKind : std::uint8_t { Classifier, Segmentor, Detector };
CheckpointKind checkpoint_kind(const std::string& path);

}  // namespace vrwkv
