// The backbone's and the head's parameter rows, and what reads the table:
// the parameter list, configuration inference, overrides, binding at load and
// FLOPs (VRWKV.md 5.1, 5.2). Initialisation by the rows is in presets.cpp.
#include "model/params.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "model/block.hpp"
#include "model/weights.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/model.hpp"

namespace vrwkv {

namespace model {

bool present(When when, const Architecture& a, std::int64_t layer) {
  switch (when) {
    case When::Always: return true;
    case When::FirstBlock: return layer == 0;
    case When::LayerScale: return a.layer_scale;
    case When::KeyNorm: return a.key_norm;
    case When::Shift: return a.shift_pixel > 0;
    case When::FinalNorm: return a.final_norm;
    case When::HeadLinear: return a.head == HeadKind::Linear;
    case When::HeadMlp: return a.head == HeadKind::Mlp;
  }
  return false;
}

std::int64_t dim_value(Dim d, const Architecture& a) {
  switch (d) {
    case Dim::One: return 1;
    case Dim::C: return a.embed_dims;
    case Dim::Hidden: return a.hidden_dims;
    case Dim::InChannels: return a.in_channels;
    case Dim::Patch: return a.patch_size;
    case Dim::PosTokens: return a.pos_grid_h * a.pos_grid_w;
    case Dim::Classes: return a.num_classes;
    case Dim::HeadHidden: return a.head_hidden;
    case Dim::Heads: return a.head_size > 0 ? a.embed_dims / a.head_size : 0;
    case Dim::HeadSize: return a.head_size;
    case Dim::MixLora: return 5 * a.mix_rank;
    case Dim::MixRank: return a.mix_rank;
    case Dim::Five: return 5;
    case Dim::DecayRank: return a.decay_rank;
  }
  return 0;
}

Shape shape_of(const ParamInfo& info, const Architecture& a) {
  Shape s;
  for (Dim d : info.shape) s.push_back(dim_value(d, a));
  return s;
}

std::string param_name(const ParamInfo& info, std::int64_t layer) {
  return layer < 0 ? std::string(info.name) : "backbone.layers." + std::to_string(layer) + "." + info.name;
}

namespace {
using D = Dim;
}  // namespace

const std::vector<ParamRow<BackboneWeights>>& backbone_rows_before_blocks() {
  using B = BackboneWeights;
  static const std::vector<ParamRow<B>> r = {
      {{"backbone.pos_embed", {D::One, D::PosTokens, D::C}, When::Always, Init::Zero, Cost::None, true},
       &B::pos_embed},
      {{"backbone.patch_embed.projection.weight", {D::C, D::InChannels, D::Patch, D::Patch}, When::Always,
        Init::PatchUniform, Cost::PerToken, true},
       &B::patch_weight},
      {{"backbone.patch_embed.projection.bias", {D::C}, When::Always, Init::PatchUniform, Cost::PerToken, false},
       &B::patch_bias},
  };
  return r;
}

const std::vector<ParamRow<BackboneWeights>>& backbone_rows_after_blocks() {
  using B = BackboneWeights;
  static const std::vector<ParamRow<B>> r = {
      {{"backbone.ln1.weight", {D::C}, When::FinalNorm, Init::One, Cost::Norm, false}, &B::norm_weight},
      {{"backbone.ln1.bias", {D::C}, When::FinalNorm, Init::Zero, Cost::None, false}, &B::norm_bias},
  };
  return r;
}

const std::vector<ParamRow<HeadWeights>>& head_rows() {
  using H = HeadWeights;
  static const std::vector<ParamRow<H>> r = {
      {{"head.fc.weight", {D::Classes, D::C}, When::HeadLinear, Init::TruncNormal, Cost::PerImage, true},
       &H::fc_weight},
      {{"head.fc.bias", {D::Classes}, When::HeadLinear, Init::Zero, Cost::None, false}, &H::fc_bias},
      {{"head.0.weight", {D::HeadHidden, D::C}, When::HeadMlp, Init::TruncNormal, Cost::PerImage, true},
       &H::fc0_weight},
      {{"head.0.bias", {D::HeadHidden}, When::HeadMlp, Init::Zero, Cost::None, false}, &H::fc0_bias},
      {{"head.2.weight", {D::Classes, D::HeadHidden}, When::HeadMlp, Init::TruncNormal, Cost::PerImage, true},
       &H::fc2_weight},
      {{"head.2.bias", {D::Classes}, When::HeadMlp, Init::Zero, Cost::None, false}, &H::fc2_bias},
  };
  return r;
}

namespace {
// Every row of a configuration with its layer (-1 outside the blocks), in storage order.
template <class F>
void for_each_row(const Architecture& a, const std::vector<ParamInfo>& block_rows, F&& f) {
  for (const auto& r : backbone_rows_before_blocks()) f(r.info, -1);
  for (std::int64_t i = 0; i < a.depth; ++i)
    for (const ParamInfo& info : block_rows) f(info, i);
  for (const auto& r : backbone_rows_after_blocks()) f(r.info, -1);
  for (const auto& r : head_rows()) f(r.info, -1);
}

// The block rows of a kind, made once.
const std::vector<ParamInfo>& kind_rows(BlockKind kind) {
  static const std::vector<ParamInfo> vrwkv = block_kind(BlockKind::Vrwkv).rows();
  static const std::vector<ParamInfo> vrwkv6 = block_kind(BlockKind::Vrwkv6).rows();
  switch (kind) {
    case BlockKind::Vrwkv: return vrwkv;
    case BlockKind::Vrwkv6: return vrwkv6;
  }
  return vrwkv;
}
}  // namespace

std::vector<Param> parameter_list(const Architecture& a) {
  std::vector<Param> out;
  for_each_row(a, kind_rows(a.block), [&](const ParamInfo& info, std::int64_t layer) {
    if (present(info.when, a, layer)) out.push_back({param_name(info, layer), shape_of(info, a), &info, layer});
  });
  return out;
}

const std::vector<ParamInfo>& block_rows(BlockKind kind) { return kind_rows(kind); }

}  // namespace model

using model::Dim;
using model::When;

std::vector<std::pair<std::string, Shape>> parameter_shapes(const Architecture& arch) {
  std::vector<std::pair<std::string, Shape>> out;
  for (model::Param& p : model::parameter_list(arch)) out.emplace_back(std::move(p.name), std::move(p.shape));
  return out;
}

namespace {

// The first row of `rows` present under `when` (the one whose presence tells the flag).
const model::ParamInfo* first_row(const std::vector<model::ParamInfo>& rows, When when) {
  for (const model::ParamInfo& r : rows)
    if (r.when == when) return &r;
  return nullptr;
}

// Binds the shape rules' symbols to a checkpoint's tensor shapes, checking
// every present tensor against every earlier one.
struct Unifier {
  const std::string& source;
  std::map<Dim, std::int64_t> bound{{Dim::One, 1}};
  std::map<Dim, std::string> by;  // the tensor that bound each symbol

  void unify(const std::string& name, const model::ParamInfo& info, const Tensor& t) {
    if (t.ndim() != static_cast<int>(info.shape.size()))
      input_error(source, ": tensor '", name, "' has shape ", shape_str(t.shape()), ", expected ", info.shape.size(),
                  " dimensions");
    for (std::size_t k = 0; k < info.shape.size(); ++k) {
      const Dim d = info.shape[k];
      const auto it = bound.find(d);
      if (it == bound.end()) {
        if (t.dim(static_cast<int>(k)) < 1)
          input_error(source, ": tensor '", name, "' has shape ", shape_str(t.shape()), ", expected sizes >= 1");
        bound[d] = t.dim(static_cast<int>(k)), by[d] = name;
      } else if (it->second != t.dim(static_cast<int>(k))) {
        input_error(source, ": tensor '", name, "' has shape ", shape_str(t.shape()), ", inconsistent with ",
                    by.count(d) ? "'" + by[d] + "'" : std::string("the model's fixed sizes"), " (dimension ", k,
                    " should be ",
                    it->second, ")");
      }
    }
  }
};

}  // namespace

Config infer_config(const TensorMap& sd, const std::string& source) {
  Config c;
  Architecture& a = c.arch;
  const auto has = [&](const std::string& name) { return sd.count(name) > 0; };
  // The block kind: the one whose signature tensor block 0 has (VRWKV6: att.time_maa_w1).
  // The block kind: the first whose signature tensor block 0 has (VRWKV6: att.time_maa_w1; VRWKV:
  // att.spatial_decay); neither: VRWKV, whose missing tensors are then named.
  for (BlockKind kind : {BlockKind::Vrwkv6, BlockKind::Vrwkv})
    if (has(std::string("backbone.layers.0.") + model::block_kind(kind).signature)) {
      a.block = kind;
      break;
    }
  const std::vector<model::ParamInfo>& rows = model::block_rows(a.block);
  const auto block_has = [&](When when, std::int64_t layer) {
    const model::ParamInfo* r = first_row(rows, when);
    return r && has(model::param_name(*r, layer));
  };
  const std::string first_param = model::backbone_rows_before_blocks()[1].info.name;
  if (!has(first_param)) input_error(source, ": missing tensor '", first_param, "' (not a Vision-RWKV checkpoint?)");
  std::int64_t depth = 0;
  while (block_has(When::Always, depth)) ++depth;
  if (depth == 0)
    input_error(source, ": no blocks found (expected ", model::param_name(*first_row(rows, When::Always), 0), ")");
  a.depth = depth;
  // A kind whose mixing parameters stay without a shift (VRWKV6) cannot tell shift_pixel: 1 as officially.
  if (first_row(rows, When::Shift) && !block_has(When::Shift, 0)) a.shift_pixel = 0, a.shift = TokenShift::None;
  a.key_norm = block_has(When::KeyNorm, 0);
  a.layer_scale = block_has(When::LayerScale, 0);
  a.post_norm = a.layer_scale;  // true of every released model
  a.final_norm = has(model::backbone_rows_after_blocks()[0].info.name);
  const auto head_has = [&](When when) {  // the first row of a head kind tells it
    for (const auto& r : model::head_rows())
      if (r.info.when == when) return has(r.info.name);
    return false;
  };
  a.head = head_has(When::HeadLinear) ? HeadKind::Linear : head_has(When::HeadMlp) ? HeadKind::Mlp : HeadKind::None;

  // Every tensor the flags call for, with its shape rule: binds the sizes.
  Unifier u{source, {{Dim::One, 1}, {Dim::Five, 5}}, {}};
  for (const model::Param& p : model::parameter_list(a)) {
    const auto it = sd.find(p.name);
    if (it == sd.end()) input_error(source, ": missing tensor '", p.name, "' required by the model configuration");
    u.unify(p.name, *p.info, it->second);
  }
  const auto size = [&](Dim d, std::int64_t otherwise) { return u.bound.count(d) ? u.bound.at(d) : otherwise; };
  a.embed_dims = size(Dim::C, 0);
  a.in_channels = size(Dim::InChannels, 0);
  a.patch_size = size(Dim::Patch, 0);
  a.hidden_dims = size(Dim::Hidden, 0);
  a.num_classes = size(Dim::Classes, 0);
  a.head_hidden = size(Dim::HeadHidden, 0);
  if (a.block == BlockKind::Vrwkv6) {
    a.head_size = size(Dim::HeadSize, 0), a.mix_rank = size(Dim::MixRank, 0), a.decay_rank = size(Dim::DecayRank, 0);
    if (size(Dim::Heads, 0) * a.head_size != a.embed_dims)
      input_error(source, ": att.time_faaaa has ", size(Dim::Heads, 0), " heads of ", a.head_size, " channels, but the "
                  "model has ", a.embed_dims, " channels");
  }
  const std::int64_t n0 = size(Dim::PosTokens, 0);
  const auto side = static_cast<std::int64_t>(std::llround(std::sqrt(static_cast<double>(n0))));
  // A non-square training grid cannot be told from the tensor: --pos-grid sets it.
  a.pos_grid_h = a.pos_grid_w = side * side == n0 ? side : 0;
  if (a.pos_grid_h == 0) a.pos_grid_h = n0, a.pos_grid_w = 1;
  c.run.out_indices = {a.depth - 1};
  // VRWKV-L (InternImage code base, key_norm) was evaluated with the InternImage transform.
  c.preprocessing.kind = a.key_norm ? Preprocess::InternImage : Preprocess::Mmcls;
  return c;
}

void check_architecture(const Architecture& a, const std::string& source) {
  const auto range = [&](const char* what, double v, double lo, double hi) {
    if (v >= lo && v <= hi) return;
    // Whole numbers as such (2147483648, not 2.14748e+09).
    if (v == std::floor(v) && std::abs(v) < 9e18)
      input_error(source, ": ", what, " ", static_cast<long long>(v), " is outside ", static_cast<long long>(lo), "..",
                  static_cast<long long>(hi));
    input_error(source, ": ", what, " ", v, " is outside ", lo, "..", hi);
  };
  range("embed_dims", static_cast<double>(a.embed_dims), 1, 1 << 16);
  range("depth", static_cast<double>(a.depth), 1, 1024);
  range("patch_size", static_cast<double>(a.patch_size), 1, 1024);
  range("in_channels", static_cast<double>(a.in_channels), 1, 64);
  range("hidden_dims", static_cast<double>(a.hidden_dims), 1, 1 << 20);
  range("pos_grid height", static_cast<double>(a.pos_grid_h), 1, 16384);
  range("pos_grid width", static_cast<double>(a.pos_grid_w), 1, 16384);
  range("shift_pixel", a.shift_pixel, 0, 1024);
  if (!(a.channel_gamma > 0 && a.channel_gamma <= 0.25))
    input_error(source, ": channel_gamma must be in (0, 1/4], got ", a.channel_gamma);
  if ((a.shift == TokenShift::None) != (a.shift_pixel == 0))
    input_error(source, ": shift ", to_string(a.shift), " with shift_pixel ", a.shift_pixel,
                " (shift none is exactly shift_pixel 0)");
  if (a.wkv_decay == WkvDecay::Rwkv4 && a.wkv_direction != WkvDirection::Uni)
    input_error(source, ": wkv_decay rwkv4 is the decay of RWKV-4's causal attention and needs wkv_direction uni");
  if (a.block == BlockKind::Vrwkv6 &&
      (a.shift == TokenShift::OneD || a.wkv_direction != WkvDirection::Bi || a.wkv_decay != WkvDecay::Vrwkv))
    input_error(source, ": the 1-D shift, the uni-directional WKV and the RWKV-4 decay are variants of the VRWKV "
                "block; a VRWKV6 model has its per-head Q-Shift (or none) and Bi-WKV6");
  if (a.head != HeadKind::None) range("num_classes", static_cast<double>(a.num_classes), 1, 1 << 24);
  if (a.head == HeadKind::Mlp) range("head_hidden", static_cast<double>(a.head_hidden), 1, 1 << 20);
  if (a.block == BlockKind::Vrwkv6) {
    range("head_size", static_cast<double>(a.head_size), 1, 256);  // the backward keeps O(√T·N²) per head
    range("mix_rank", static_cast<double>(a.mix_rank), 1, 1 << 16);
    range("decay_rank", static_cast<double>(a.decay_rank), 1, 1 << 16);
    if (a.embed_dims % a.head_size != 0)
      input_error(source, ": embed_dims ", a.embed_dims, " is not a whole number of heads of ", a.head_size,
                  " channels");
  }
}

void check_config(const Config& c, const std::string& source) {
  check_architecture(c.arch, source);
  if (c.run.out_indices.empty()) input_error(source, ": out_indices is empty, expected at least one block index");
  for (std::size_t i = 0; i < c.run.out_indices.size(); ++i) {
    const std::int64_t j = c.run.out_indices[i];
    if (j < 0 || j >= c.arch.depth)
      input_error(source, ": out index ", j, " is outside 0..", c.arch.depth - 1, " (the model's blocks)");
    if (i > 0 && j <= c.run.out_indices[i - 1])
      input_error(source, ": out_indices must be ascending and distinct, got ", c.run.out_indices[i - 1], " then ", j);
  }
  if (c.run.wkv_chunks < 1 || c.run.wkv_chunks > 65536)
    input_error(source, ": wkv_chunks ", c.run.wkv_chunks, " is outside 1..65536");
  for (int k = 0; k < 3; ++k)
    if (!std::isfinite(c.preprocessing.mean[k]) || !std::isfinite(c.preprocessing.std[k]) ||
        !(c.preprocessing.std[k] > 0))
      input_error(source, ": preprocessing mean/std must be finite with std > 0, got mean ", c.preprocessing.mean[k],
                  " std ", c.preprocessing.std[k]);
  if (!c.labels.empty() && static_cast<std::int64_t>(c.labels.size()) != c.arch.num_classes)
    input_error(source, ": ", c.labels.size(), " class names for ", c.arch.num_classes, " classes");
}

void apply_overrides(Config& c, const ConfigOverrides& o, const std::string& source) {
  Architecture& a = c.arch;
  if (a.block == BlockKind::Vrwkv6) {  // options of the VRWKV block that VRWKV6 does not have
    if (o.channel_gamma)
      input_error("--channel-gamma: a VRWKV6 model shifts a quarter of each head's channels, there is no gamma to set");
    if (o.wkv || o.wkv_chunks)
      input_error("--wkv/--wkv-chunks: a VRWKV6 model has one attention, Bi-WKV6, with no semantics to choose");
    if (o.shift == TokenShift::OneD)
      input_error("--shift 1d: the 1-D shift is a variant of the VRWKV block; a VRWKV6 model has q or none");
    if (o.wkv_direction || o.wkv_decay)
      input_error("--wkv-direction/--wkv-decay: variants of the VRWKV block; a VRWKV6 model has Bi-WKV6 only");
  }
  if (o.shift && o.shift_pixel && (*o.shift == TokenShift::None) != (*o.shift_pixel == 0))
    input_error("--shift ", to_string(*o.shift), " contradicts --shift-pixel ", *o.shift_pixel,
                " (shift none is shift_pixel 0)");
  // A VRWKV model without a shift has no spatial_mix tensors to shift with.
  const bool unshifted = a.block == BlockKind::Vrwkv && a.shift == TokenShift::None;
  if (unshifted && ((o.shift && *o.shift != TokenShift::None) || (o.shift_pixel && *o.shift_pixel > 0)))
    input_error(o.shift ? "--shift " + to_string(*o.shift) : std::string("--shift-pixel"), ": ", source,
                " has no spatial_mix tensors (a model without token shift)");
  if (o.wkv_decay == WkvDecay::Rwkv4 && o.wkv_direction.value_or(a.wkv_direction) != WkvDirection::Uni)
    input_error("--wkv-decay rwkv4: RWKV-4's decay belongs to the causal attention; add --wkv-direction uni");
  if (o.post_norm) a.post_norm = *o.post_norm;
  if (o.key_norm) a.key_norm = *o.key_norm;
  if (o.layer_scale) a.layer_scale = *o.layer_scale;
  if (o.final_norm) a.final_norm = *o.final_norm;
  if (o.shift_pixel) {
    a.shift_pixel = *o.shift_pixel;
    if (a.shift_pixel == 0) a.shift = TokenShift::None;
    else if (a.shift == TokenShift::None) a.shift = TokenShift::Q;
  }
  if (o.shift) {
    a.shift = *o.shift;
    if (a.shift == TokenShift::None) a.shift_pixel = 0;
    else if (a.shift_pixel == 0) a.shift_pixel = 1;
  }
  if (o.wkv_direction) a.wkv_direction = *o.wkv_direction;
  if (o.wkv_decay) a.wkv_decay = *o.wkv_decay;
  if (o.channel_gamma) a.channel_gamma = *o.channel_gamma;
  if (o.pos_grid_h) a.pos_grid_h = *o.pos_grid_h;
  if (o.pos_grid_w) a.pos_grid_w = *o.pos_grid_w;
  if (o.head) {
    if (*o.head != HeadKind::None && a.head == HeadKind::None)
      input_error(source, ": the model has no head, so --head ", to_string(*o.head), " is impossible");
    a.head = *o.head;
  }
  if (o.wkv) c.run.wkv = *o.wkv;
  if (o.wkv_chunks) c.run.wkv_chunks = *o.wkv_chunks;
  if (o.preprocess) c.preprocessing.kind = *o.preprocess;
  if (o.out_indices) {
    std::set<std::int64_t> idx;
    for (std::int64_t i : *o.out_indices) {
      const std::int64_t j = i < 0 ? i + a.depth : i;
      if (j < 0 || j >= a.depth)
        input_error("--out-indices: block index ", i, " is out of range for a model of depth ", a.depth);
      idx.insert(j);
    }
    if (idx.empty()) input_error("--out-indices: expected at least one block index");
    c.run.out_indices.assign(idx.begin(), idx.end());
  }
  if (a.shift_pixel < 0) input_error("--shift-pixel must be 0 or more, got ", a.shift_pixel);
  if (!(a.channel_gamma > 0 && a.channel_gamma <= 0.25))
    input_error("--channel-gamma must be in (0, 1/4], got ", a.channel_gamma);
  if (c.run.wkv_chunks < 1) input_error("--wkv-chunks must be at least 1, got ", c.run.wkv_chunks);
  if (a.pos_grid_h < 1 || a.pos_grid_w < 1)
    input_error("--pos-grid must be positive, got ", a.pos_grid_h, "x", a.pos_grid_w);
  check_config(c, source);
}

Model Model::from_state_dict(const TensorMap& sd, const Config& config, const std::string& source) {
  check_config(config, source);
  const std::vector<model::Param> params = model::parameter_list(config.arch);
  // Every tensor is checked before the parameter memory is allocated.
  std::int64_t total = 0;
  for (const model::Param& p : params) {
    const auto it = sd.find(p.name);
    if (it == sd.end()) input_error(source, ": missing tensor '", p.name, "' required by the model configuration");
    const Tensor& src = it->second;
    if (src.shape() != p.shape)
      input_error(source, ": tensor '", p.name, "' has shape ", shape_str(src.shape()), ", expected ",
                  shape_str(p.shape));
    if (src.dtype() != DType::F32 && src.dtype() != DType::F64 && src.dtype() != DType::F16 &&
        src.dtype() != DType::BF16)
      input_error(source, ": tensor '", p.name, "' is ", dtype_name(src.dtype()), ", expected floating point");
    total += shape_numel(p.shape);
  }
  Model m;
  m.config_ = config;
  m.storage_ = Tensor(DType::F32, {total});
  std::int64_t offset = 0;
  for (const model::Param& p : params) {
    Tensor view = m.storage_.view(offset, p.shape);
    const Tensor f = sd.at(p.name).to_f32();
    std::memcpy(view.raw(), f.raw(), view.nbytes());
    const float* v = view.f32();
    for (std::int64_t i = 0; i < view.numel(); ++i)
      if (!std::isfinite(v[i]))
        input_error(source, ": tensor '", p.name, "' holds a non-finite value (", v[i], " at element ", i, ")");
    m.params_.emplace(p.name, view);
    offset += shape_numel(p.shape);
  }
  m.state_ = model::bind(m.config_, m.params_, m.storage_.f32());
  return m;
}

std::int64_t Model::parameter_count() const { return storage_.numel(); }

double Model::flops(std::int64_t height, std::int64_t width) const {
  const Architecture& a = config_.arch;
  const double T = static_cast<double>(((height + a.patch_size - 1) / a.patch_size) *
                                       ((width + a.patch_size - 1) / a.patch_size));
  double f = 0;
  for (const model::Param& p : model::parameter_list(a)) {
    const double n = static_cast<double>(shape_numel(p.shape));
    switch (p.info->cost) {
      case model::Cost::None: break;
      case model::Cost::PerToken: f += T * n; break;
      case model::Cost::Norm: f += 2 * T * n; break;
      case model::Cost::PerImage: f += n; break;
    }
  }
  f += a.depth * model::block_kind(a.block).extra_flops(a, T);
  if (a.head != HeadKind::None) f += T * a.embed_dims;  // global average pooling
  return f;
}

}  // namespace vrwkv
