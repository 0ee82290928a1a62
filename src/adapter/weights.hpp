// The typed weights of the dense models and the name table that binds them.
// Every tensor outside the VRWKV blocks and embeddings is listed once, with
// its official name, shape and initialisation, as a TensorSlot pointing at a
// member of these structs: loading, conversion, parameter counts, FLOPs and
// the presets' initialisation read the table, and no forward looks a tensor
// up by name. (The VRWKV blocks and embeddings are the classification
// model's: src/model/params.cpp.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/conv.hpp"
#include "vrwkv/adapter.hpp"
#include "vrwkv/config.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv::adapter {

// The official initialisations (the adapter's _init_weights, mmseg's and mmdet's heads).
enum class Init : std::uint8_t {
  Zero,
  One,
  Normal,         // N(0, 1): level_embed
  TruncNormal,    // N(0, 0.02) truncated to [−2, 2]: the adapter's Linears
  ConvFanOut,     // N(0, 2/fan_out): the adapter's Conv2d (fan_out = k²·Co/groups)
  KaimingConv,    // mmcv ConvModule (also the FPN's and the mask head's: a ConvModule's own
                  // init runs after its parent's init_cfg): N(0, 2/(k²·dim0))
  Normal001,      // N(0, 0.01²): conv_seg, the RPN's convs, the box head's fc_cls
  Normal0001,     // N(0, 0.001²): the box head's fc_reg
  XavierUniform,  // U(±√(6/(in+out))): MSDeformAttn value/output projections, the box head's shared fcs
  OffsetBias,     // MSDeformAttn sampling_offsets bias: the direction grid
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

struct TensorSlot {
  std::string name;
  Shape shape;
  float** slot;
  Init init;
};

// Appends slots to a table, one helper per kind of layer.
struct SlotTable {
  std::vector<TensorSlot>& out;
  void add(const std::string& name, Shape shape, float** slot, Init init);
  void bn(const std::string& prefix, std::int64_t C, BatchNormW& b);
  // A bias-free conv named `conv` followed by the BatchNorm `norm`, and a ReLU.
  void conv_bn(const std::string& conv, const std::string& norm, ops::ConvShape s, ConvW& c, Init init);
  // mmcv ConvModule with a BatchNorm: PREFIX.conv, PREFIX.bn.
  void conv_module(const std::string& prefix, ops::ConvShape s, ConvW& c);
  // A conv with bias: PREFIX.weight, PREFIX.bias.
  void conv(const std::string& prefix, ops::ConvShape s, ConvW& c, Init init, Init bias_init = Init::Zero);
  void linear(const std::string& prefix, std::int64_t out, std::int64_t in, LinearW& l, Init init = Init::TruncNormal,
              Init bias_init = Init::Zero);
  void norm(const std::string& prefix, std::int64_t C, NormW& n);
};

// The adapter's tensors (backbone.level_embed, backbone.spm.*,
// backbone.interactions.*, backbone.up.*, backbone.norm1..4.*).
void adapter_slots(SlotTable& table, const Config& backbone, const AdapterConfig& adapter, AdapterW& w);

// Every slot's tensor copied out of `state_dict` into one storage tensor
// (checked first: present, shape, floats; then finite), each slot pointed at
// its copy and `params` given a view of it under its name.
void bind_slots(const std::vector<TensorSlot>& slots, const TensorMap& state_dict, const std::string& source,
                const std::string& what, Tensor& storage, TensorMap& params);

// The parameters of `params` as PyTorch counts them: BatchNorm running
// statistics are buffers, not parameters.
std::int64_t parameter_count(const TensorMap& params);

// The official initialisation of every slot, added to `params` (seeded, deterministic).
void initialize(const std::vector<TensorSlot>& slots, const AdapterConfig& adapter, std::uint64_t seed,
                TensorMap& params);

}  // namespace vrwkv::adapter
