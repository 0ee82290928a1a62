// The segmentor's name table (DENSE.md (a)-(c), (e)): every tensor of the
// adapter and the heads with its official name, shape and initialisation,
// bound to a member of the typed weights below. Loading, conversion,
// parameter counts, FLOPs and the presets' initialisation all read
// tensor_slots(); no forward looks a tensor up by name. (The VRWKV blocks and
// embeddings are the classification model's: src/model/params.cpp.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/conv.hpp"
#include "vrwkv/segmentor.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv::seg {

// The official initialisation (the adapter's _init_weights, mmseg's heads).
enum class Init : std::uint8_t {
  Zero,
  One,
  Normal,        // N(0, 1): level_embed
  TruncNormal,   // N(0, 0.02) truncated to [−2, 2]: the adapter's Linears
  ConvFanOut,    // N(0, 2/fan_out): the adapter's Conv2d (fan_out = k²·Co/groups)
  KaimingConv,   // mmcv ConvModule: kaiming normal, fan_out, relu: N(0, 2/(k²·Co))
  SegNormal,     // N(0, 0.01²): conv_seg
  XavierUniform,  // MSDeformAttn value/output projections
  OffsetBias,    // MSDeformAttn sampling_offsets bias: the direction grid
  DeconvUniform,  // PyTorch's ConvTranspose2d default U(±1/√fan_in)
};

struct BatchNormW {
  float *weight = nullptr, *bias = nullptr, *mean = nullptr, *var = nullptr;
};
// A convolution (mmcv ConvModule when bn is present: conv → BN → ReLU).
struct ConvW {
  float *weight = nullptr, *bias = nullptr;
  BatchNormW bn;
  ops::ConvShape shape{};
  bool relu = false;
};
struct LinearW {
  float *weight = nullptr, *bias = nullptr;
  std::int64_t out = 0, in = 0;
};
struct NormW {
  float *weight = nullptr, *bias = nullptr;
};
struct DeformAttnW {
  LinearW sampling_offsets, attention_weights, value_proj, output_proj;
  std::int64_t levels = 0;
};
struct ExtractorW {
  NormW query_norm, feat_norm, ffn_norm;
  DeformAttnW attn;
  LinearW fc1, fc2;
  ConvW dwconv;  // depthwise 3×3 with bias
};
struct InteractionW {
  float* gamma = nullptr;  // injector
  NormW query_norm, feat_norm;
  DeformAttnW attn;
  ExtractorW extractor;
  std::vector<ExtractorW> extra;  // the last interaction's two extra extractors
};
struct AdapterW {
  float* level_embed = nullptr;  // [3, C]
  ConvW stem[3], conv2, conv3, conv4, fc[4];
  std::vector<InteractionW> interactions;
  ConvW up;  // ConvTranspose2d 2×2 stride 2, weight [C, C, 2, 2]
  BatchNormW norm[4];
};
struct UperW {
  ConvW psp[4], bottleneck, lateral[3], fpn[3], fpn_bottleneck, conv_seg;
};
struct FcnW {
  ConvW conv, conv_seg;
};
struct SegWeights {
  AdapterW adapter;
  UperW decode;
  FcnW aux;
};

struct TensorSlot {
  std::string name;
  Shape shape;
  float** slot;
  Init init;
};

// Every tensor outside the VRWKV blocks and embeddings, in checkpoint order,
// each bound to its member of `w` (whose shapes, ConvShape and LinearW sizes,
// this fills in).
std::vector<TensorSlot> tensor_slots(const SegmentorConfig& config, SegWeights& w);

}  // namespace vrwkv::seg
