// The parameter table (VRWKV.md 5.1, 5.2): every parameter of a model is a
// row with its official name, a shape rule, when it is present, how it is
// initialised, what it costs and whether AdamW decays it. The parameter list,
// shapes, initialisation, configuration inference, FLOP count and the
// optimizer's decay mask all read the rows; at load the rows bind the weights
// into typed structs (BackboneWeights, HeadWeights, a block kind's weights),
// so no forward or backward looks a tensor up by name.
//
// The backbone's and the head's rows are in params.cpp; a block kind's rows
// are in its own file under blocks/.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "vrwkv/config.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv::model {

// The symbols of a shape rule.
// VRWKV6 (VRWKV6.md A.3): Heads = C / HeadSize, MixLora = 5·MixRank (the
// five ddlerp LoRAs side by side), Five = 5.
enum class Dim : std::uint8_t {
  One,
  C,
  Hidden,
  InChannels,
  Patch,
  PosTokens,
  Classes,
  HeadHidden,
  Heads,
  HeadSize,
  MixLora,
  MixRank,
  Five,
  DecayRank,
};
// When a row is present.
enum class When : std::uint8_t { Always, FirstBlock, LayerScale, KeyNorm, Shift, FinalNorm, HeadLinear, HeadMlp };
// The official initialisation (mmcls / the official VRWKV code).
enum class Init : std::uint8_t {
  Zero,
  One,
  TruncNormal,   // N(0, 0.02) truncated to [−2, 2]: every Linear
  PatchUniform,  // PyTorch's Conv2d default: U(±1/√fan_in)
  LayerScale,    // init_values
  SpatialDecay,  // −5 + 8·(h/(C−1))^(0.7 + 1.3·i/(L−1))
  SpatialFirst,  // log 0.3 + 0.5·(((h+1) mod 3) − 1)
  MixK,          // (h/C)^(1 − i/L)
  MixV,          // (h/C)^(1 − i/L) + 0.3·i/(L−1)
  MixR,          // (h/C)^(0.5·(1 − i/L))
  // VRWKV6 (VRWKV6.md A.3), maa = 0 meaning no shift:
  MaaShift,     // 1 − (h/C)^(1 − i/L): time_maa_x, _w, _k
  MaaValue,     // 1 − ((h/C)^(1 − i/L) + 0.3·i/(L−1)): time_maa_v
  MaaHalf,      // 1 − (h/C)^(0.5·(1 − i/L)): time_maa_r, _g
  LoraUniform,  // U(−1e-4, 1e-4): the LoRA matrices
  Decay6,       // −6 + 5·(h/(C−1))^(0.7 + 1.3·i/(L−1)): time_decay
  Bonus6,       // i/(L−1)·(1 − h/(C−1)) + 0.1·(((h+1) mod 3) − 1), h the flat channel: time_faaaa
};
// FLOPs by the convention of the official get_flops_backbone.py.
enum class Cost : std::uint8_t { None, PerToken, Norm, PerImage };  // T·numel, 2·T·numel, numel

struct ParamInfo {
  const char* name;  // official name; in a block's rows, the part after "backbone.layers.N."
  std::vector<Dim> shape;
  When when;
  Init init;
  Cost cost;
  bool decay;  // AdamW weight decay (no decay: biases and LayerNorm weights)
};

// A row that binds a parameter into a member of the typed struct S.
template <class S>
struct ParamRow {
  ParamInfo info;
  float* S::*field;
};

bool present(When when, const Architecture& arch, std::int64_t layer);
std::int64_t dim_value(Dim d, const Architecture& arch);
Shape shape_of(const ParamInfo& info, const Architecture& arch);

// Rows of the backbone (before and after the blocks) and of the head.
struct BackboneWeights {
  float *pos_embed, *patch_weight, *patch_bias;  // backbone.pos_embed, backbone.patch_embed.projection.*
  float *norm_weight, *norm_bias;                // the final norm, backbone.ln1.*
};
struct HeadWeights {
  float *fc_weight, *fc_bias;                      // head.fc.* (linear head)
  float *fc0_weight, *fc0_bias, *fc2_weight, *fc2_bias;  // head.0.*, head.2.* (MLP head, tanh between)
};
const std::vector<ParamRow<BackboneWeights>>& backbone_rows_before_blocks();
const std::vector<ParamRow<BackboneWeights>>& backbone_rows_after_blocks();
const std::vector<ParamRow<HeadWeights>>& head_rows();

// The full name of a row: block rows get "backbone.layers.N." in front.
std::string param_name(const ParamInfo& info, std::int64_t layer);

// One parameter of a model, in storage order.
struct Param {
  std::string name;
  Shape shape;
  const ParamInfo* info;
  std::int64_t layer;  // block index, or -1 outside the blocks
};
std::vector<Param> parameter_list(const Architecture& arch);

// Binds the rows' weights from `lookup` (a present row's name -> its float
// storage) into `s`; absent rows stay null.
template <class S>
void bind_rows(S& s, const std::vector<ParamRow<S>>& rows, const Architecture& arch, std::int64_t layer,
               const std::function<float*(const std::string&)>& lookup) {
  for (const ParamRow<S>& row : rows)
    s.*row.field = present(row.info.when, arch, layer) ? lookup(param_name(row.info, layer)) : nullptr;
}

// The same struct pointing `to` + (p − from) for each member p: the
// parameter's place in another buffer laid out like the parameters (the
// gradients).
template <class S>
S rebase(const S& s, const std::vector<ParamRow<S>>& rows, const float* from, float* to) {
  S out = s;
  for (const ParamRow<S>& row : rows)
    if (s.*row.field) out.*row.field = to + (s.*row.field - from);
  return out;
}

}  // namespace vrwkv::model
