// The parameter table of a VRWKV model under the official names (VRWKV.md 5.1,
// 5.2), configuration inference from those names, overrides and FLOPs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "ops/qshift.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/model.hpp"

namespace vrwkv {

std::vector<std::pair<std::string, Shape>> parameter_shapes(const Config& c) {
  const std::int64_t C = c.embed_dims, H = c.hidden_dims;
  std::vector<std::pair<std::string, Shape>> p;
  p.push_back({"backbone.pos_embed", {1, c.pos_grid_h * c.pos_grid_w, C}});
  p.push_back({"backbone.patch_embed.projection.weight", {C, c.in_channels, c.patch_size, c.patch_size}});
  p.push_back({"backbone.patch_embed.projection.bias", {C}});
  for (std::int64_t i = 0; i < c.depth; ++i) {
    const std::string l = "backbone.layers." + std::to_string(i) + ".";
    if (c.layer_scale) {
      p.push_back({l + "gamma1", {C}});
      p.push_back({l + "gamma2", {C}});
    }
    for (const char* ln : {"ln1", "ln2"}) {
      p.push_back({l + ln + ".weight", {C}});
      p.push_back({l + ln + ".bias", {C}});
    }
    if (i == 0) {
      p.push_back({l + "ln0.weight", {C}});
      p.push_back({l + "ln0.bias", {C}});
    }
    p.push_back({l + "att.spatial_decay", {C}});
    p.push_back({l + "att.spatial_first", {C}});
    if (c.shift_pixel > 0)
      for (const char* mix : {"k", "v", "r"}) p.push_back({l + "att.spatial_mix_" + mix, {1, 1, C}});
    for (const char* lin : {"key", "value", "receptance", "output"}) p.push_back({l + "att." + lin + ".weight", {C, C}});
    if (c.key_norm) {
      p.push_back({l + "att.key_norm.weight", {C}});
      p.push_back({l + "att.key_norm.bias", {C}});
    }
    if (c.shift_pixel > 0)
      for (const char* mix : {"k", "r"}) p.push_back({l + "ffn.spatial_mix_" + mix, {1, 1, C}});
    p.push_back({l + "ffn.key.weight", {H, C}});
    p.push_back({l + "ffn.receptance.weight", {C, C}});
    p.push_back({l + "ffn.value.weight", {C, H}});
    if (c.key_norm) {
      p.push_back({l + "ffn.key_norm.weight", {H}});
      p.push_back({l + "ffn.key_norm.bias", {H}});
    }
  }
  if (c.final_norm) {
    p.push_back({"backbone.ln1.weight", {C}});
    p.push_back({"backbone.ln1.bias", {C}});
  }
  if (c.head == HeadKind::Linear) {
    p.push_back({"head.fc.weight", {c.num_classes, C}});
    p.push_back({"head.fc.bias", {c.num_classes}});
  } else if (c.head == HeadKind::Mlp) {
    p.push_back({"head.0.weight", {c.head_hidden, C}});
    p.push_back({"head.0.bias", {c.head_hidden}});
    p.push_back({"head.2.weight", {c.num_classes, c.head_hidden}});
    p.push_back({"head.2.bias", {c.num_classes}});
  }
  return p;
}

namespace {
const Tensor& require(const TensorMap& sd, const std::string& name, int ndim, const std::string& source) {
  const auto it = sd.find(name);
  if (it == sd.end()) input_error(source, ": missing tensor '", name, "' (not a Vision-RWKV checkpoint?)");
  if (it->second.ndim() != ndim)
    input_error(source, ": tensor '", name, "' has shape ", shape_str(it->second.shape()), ", expected ", ndim,
                " dimensions");
  return it->second;
}
}  // namespace

Config infer_config(const TensorMap& sd, const std::string& source) {
  Config c;
  const Tensor& proj = require(sd, "backbone.patch_embed.projection.weight", 4, source);
  c.embed_dims = proj.dim(0);
  c.in_channels = proj.dim(1);
  c.patch_size = proj.dim(2);
  if (proj.dim(3) != c.patch_size)
    input_error(source, ": patch embedding ", shape_str(proj.shape()), " is not square");
  std::int64_t depth = 0;
  while (sd.count("backbone.layers." + std::to_string(depth) + ".ln1.weight")) ++depth;
  if (depth == 0) input_error(source, ": no blocks found (expected backbone.layers.0.ln1.weight)");
  c.depth = depth;
  c.hidden_dims = require(sd, "backbone.layers.0.ffn.key.weight", 2, source).dim(0);
  const Tensor& pos = require(sd, "backbone.pos_embed", 3, source);
  const std::int64_t n0 = pos.dim(1);
  const auto side = static_cast<std::int64_t>(std::llround(std::sqrt(static_cast<double>(n0))));
  // A non-square training grid cannot be told from the tensor: --pos-grid sets it.
  c.pos_grid_h = c.pos_grid_w = side * side == n0 ? side : 0;
  if (c.pos_grid_h == 0) c.pos_grid_h = n0, c.pos_grid_w = 1;
  c.shift_pixel = sd.count("backbone.layers.0.att.spatial_mix_k") ? 1 : 0;
  c.key_norm = sd.count("backbone.layers.0.att.key_norm.weight") > 0;
  c.layer_scale = sd.count("backbone.layers.0.gamma1") > 0;
  c.post_norm = c.layer_scale;  // true of every released model
  c.final_norm = sd.count("backbone.ln1.weight") > 0;
  if (sd.count("head.fc.weight")) {
    c.head = HeadKind::Linear;
    c.num_classes = require(sd, "head.fc.weight", 2, source).dim(0);
  } else if (sd.count("head.0.weight") && sd.count("head.2.weight")) {
    c.head = HeadKind::Mlp;
    c.head_hidden = require(sd, "head.0.weight", 2, source).dim(0);
    c.num_classes = require(sd, "head.2.weight", 2, source).dim(0);
  } else {
    c.head = HeadKind::None;
    c.num_classes = 0;
  }
  c.out_indices = {c.depth - 1};
  // VRWKV-L (InternImage code base, key_norm) was evaluated with the InternImage transform.
  c.preprocess = c.key_norm ? Preprocess::InternImage : Preprocess::Mmcls;
  return c;
}

void apply_overrides(Config& c, const ConfigOverrides& o, const std::string& source) {
  if (o.post_norm) c.post_norm = *o.post_norm;
  if (o.key_norm) c.key_norm = *o.key_norm;
  if (o.layer_scale) c.layer_scale = *o.layer_scale;
  if (o.final_norm) c.final_norm = *o.final_norm;
  if (o.shift_pixel) c.shift_pixel = *o.shift_pixel;
  if (o.channel_gamma) c.channel_gamma = *o.channel_gamma;
  if (o.pos_grid_h) c.pos_grid_h = *o.pos_grid_h;
  if (o.pos_grid_w) c.pos_grid_w = *o.pos_grid_w;
  if (o.head) {
    if (*o.head != HeadKind::None && c.head == HeadKind::None)
      input_error(source, ": the model has no head, so --head ", to_string(*o.head), " is impossible");
    c.head = *o.head;
  }
  if (o.wkv) c.wkv = *o.wkv;
  if (o.wkv_chunks) c.wkv_chunks = *o.wkv_chunks;
  if (o.preprocess) c.preprocess = *o.preprocess;
  if (o.out_indices) {
    std::set<std::int64_t> idx;
    for (std::int64_t i : *o.out_indices) {
      const std::int64_t j = i < 0 ? i + c.depth : i;
      if (j < 0 || j >= c.depth)
        input_error("--out-indices: block index ", i, " is out of range for a model of depth ", c.depth);
      idx.insert(j);
    }
    if (idx.empty()) input_error("--out-indices: expected at least one block index");
    c.out_indices.assign(idx.begin(), idx.end());
  }
  if (c.shift_pixel < 0) input_error("--shift-pixel must be 0 or more, got ", c.shift_pixel);
  if (!(c.channel_gamma > 0 && c.channel_gamma <= 0.25))
    input_error("--channel-gamma must be in (0, 1/4], got ", c.channel_gamma);
  if (c.wkv_chunks < 1) input_error("--wkv-chunks must be at least 1, got ", c.wkv_chunks);
  if (c.pos_grid_h < 1 || c.pos_grid_w < 1)
    input_error("--pos-grid must be positive, got ", c.pos_grid_h, "x", c.pos_grid_w);
}

Model Model::from_state_dict(const TensorMap& sd, const Config& config, const std::string& source) {
  Model m;
  m.config_ = config;
  m.cache_ = new_cache();
  const auto shapes = parameter_shapes(config);
  std::int64_t total = 0;
  for (const auto& [name, shape] : shapes) total += shape_numel(shape);
  m.storage_ = Tensor(DType::F32, {total});
  std::int64_t offset = 0;
  for (const auto& [name, shape] : shapes) {
    const auto it = sd.find(name);
    if (it == sd.end()) input_error(source, ": missing tensor '", name, "' required by the model configuration");
    const Tensor& src = it->second;
    if (src.shape() != shape)
      input_error(source, ": tensor '", name, "' has shape ", shape_str(src.shape()), ", expected ",
                  shape_str(shape));
    if (src.dtype() != DType::F32 && src.dtype() != DType::F64 && src.dtype() != DType::F16 &&
        src.dtype() != DType::BF16)
      input_error(source, ": tensor '", name, "' is ", dtype_name(src.dtype()), ", expected floating point");
    Tensor view = m.storage_.view(offset, shape);
    const Tensor f = src.to_f32();
    std::memcpy(view.raw(), f.raw(), view.nbytes());
    m.params_.emplace(name, view);
    offset += shape_numel(shape);
  }
  return m;
}

std::int64_t Model::parameter_count() const { return storage_.numel(); }

double Model::flops(std::int64_t height, std::int64_t width) const {
  const Config& c = config_;
  const double C = c.embed_dims, Hd = c.hidden_dims, p = c.patch_size;
  const double T = static_cast<double>(((height + c.patch_size - 1) / c.patch_size) *
                                       ((width + c.patch_size - 1) / c.patch_size));
  double f = T * C * (c.in_channels * p * p) + T * C;  // patch conv + its bias
  const double per_block = 4 * T * C * C                // att key, value, receptance, output
                           + T * C * Hd * 2 + T * C * C  // ffn key, value, receptance
                           + 2 * (2 * T * C)             // ln1, ln2
                           + (c.key_norm ? 2 * T * C + 2 * T * Hd : 0) + 29 * T * C;
  f += c.depth * per_block + 2 * T * C;  // ln0
  if (c.final_norm) f += 2 * T * C;
  if (c.head != HeadKind::None) f += T * C;  // global average pooling
  if (c.head == HeadKind::Linear) f += C * c.num_classes;
  if (c.head == HeadKind::Mlp) f += C * c.head_hidden + c.head_hidden * c.num_classes;
  return f;
}

}  // namespace vrwkv
