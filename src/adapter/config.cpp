// The adapter's configuration: what a state dict's tensors tell, the
// official configs by model size for the rest (DENSE.md (a), (f)), the
// user's overrides and their checks, the settings of a converted file, FLOPs.
#include <nlohmann/json.hpp>

#include "io/json_number.hpp"

#include "adapter/adapter.hpp"
#include "model/checkpoint.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/presets.hpp"

namespace vrwkv::adapter {

namespace {

const Tensor& need(const TensorMap& sd, const std::string& name, int ndim, const std::string& source) {
  const auto it = sd.find(name);
  if (it == sd.end()) input_error(source, ": missing tensor '", name, "' (not a VRWKV-Adapter backbone?)");
  if (it->second.ndim() != ndim)
    input_error(source, ": tensor '", name, "' has shape ", shape_str(it->second.shape()), ", expected ", ndim,
                " dimensions");
  return it->second;
}

// The official configs by embed width: tiny, small, base, large.
struct OfficialSize {
  std::int64_t embed, heads;
  bool post_norm;
  double deform_ratio;
};
constexpr OfficialSize kSizes[] = {{192, 6, false, 1.0}, {384, 6, true, 1.0}, {768, 12, true, 0.5},
                                   {1024, 16, true, 0.5}};
const OfficialSize* official_size(std::int64_t C) {
  for (const OfficialSize& s : kSizes)
    if (s.embed == C) return &s;
  return nullptr;
}

// Four equal groups of blocks (the official 12- and 24-block configs).
std::vector<BlockRange> equal_interactions(std::int64_t depth) {
  std::vector<BlockRange> r;
  for (std::int64_t i = 0; i < 4; ++i) r.push_back({i * depth / 4, (i + 1) * depth / 4 - 1});
  return r;
}

// What both tasks' configs set on the VRWKV part.
void dense_backbone(Config& c) {
  Architecture& a = c.arch;
  a.final_norm = false;
  a.head = HeadKind::None;
  c.run.wkv = WkvSemantics::Official;
  c.run.wkv_chunks = 32;  // the cuda_new kernel both code bases compile
  c.run.out_indices = {a.depth - 1};
}

}  // namespace

bool is_backbone_model_key(const std::string& k) {
  return k == "backbone.pos_embed" || k.starts_with("backbone.patch_embed.") || k.starts_with("backbone.layers.");
}

TensorMap backbone_model_tensors(const TensorMap& sd) {
  TensorMap bb;
  for (const auto& [k, t] : sd)
    if (is_backbone_model_key(k)) bb.emplace(k, t);
  return bb;
}

void infer_config(const TensorMap& sd, const std::string& source, Config& backbone, AdapterConfig& ad) {
  if (!sd.count("backbone.spm.stem.0.weight"))
    input_error(source, ": no VRWKV-Adapter backbone (no backbone.spm.stem.0.weight)");
  backbone = vrwkv::infer_config(backbone_model_tensors(sd), source);
  Architecture& a = backbone.arch;
  const OfficialSize* size = official_size(a.embed_dims);
  a.post_norm = size && size->post_norm;  // the T models are pre-norm with layer scale
  dense_backbone(backbone);

  ad.conv_inplane = need(sd, "backbone.spm.stem.0.weight", 4, source).dim(0);
  const std::string inj = "backbone.interactions.0.injector.attn.";
  ad.value_dims = need(sd, inj + "value_proj.weight", 2, source).dim(0);
  ad.cffn_hidden = need(sd, "backbone.interactions.0.extractor.ffn.fc1.weight", 2, source).dim(0);
  const std::int64_t heads_points =
      need(sd, "backbone.interactions.0.extractor.attn.attention_weights.weight", 2, source).dim(0);
  ad.deform_heads = size ? size->heads : 0;
  ad.deform_points = 4;
  if (size && heads_points % size->heads == 0) ad.deform_points = heads_points / size->heads;
  if (!size) ad.deform_heads = heads_points % 4 == 0 ? heads_points / 4 : 0;
  std::int64_t n = 0;
  while (sd.count("backbone.interactions." + std::to_string(n) + ".injector.gamma")) ++n;
  if (n != 4) input_error(source, ": ", n, " interactions (backbone.interactions.N), expected 4");
  ad.interactions.clear();
  if (a.depth % 4 == 0) ad.interactions = equal_interactions(a.depth);
}

void apply_overrides(Config& backbone, AdapterConfig& ad, const AdapterOverrides& o, const std::string& source) {
  if (o.post_norm) backbone.arch.post_norm = *o.post_norm;
  if (o.interactions) ad.interactions = *o.interactions;
  // One of heads and points given: the other keeps their product, which the tensors fix.
  const std::int64_t product = ad.deform_heads * ad.deform_points;
  if (o.deform_heads) ad.deform_heads = *o.deform_heads;
  if (o.deform_points) ad.deform_points = *o.deform_points;
  if (o.deform_heads && !o.deform_points && *o.deform_heads > 0 && product % *o.deform_heads == 0)
    ad.deform_points = product / *o.deform_heads;
  if (o.deform_points && !o.deform_heads && *o.deform_points > 0 && product % *o.deform_points == 0)
    ad.deform_heads = product / *o.deform_points;
  if (o.wkv) backbone.run.wkv = *o.wkv;
  if (o.wkv_chunks) backbone.run.wkv_chunks = *o.wkv_chunks;
  check_config(backbone, ad, source);
}

void check_config(const Config& backbone, const AdapterConfig& ad, const std::string& source) {
  vrwkv::check_config(backbone, source);
  const Architecture& a = backbone.arch;
  if (ad.interactions.size() != 4)
    input_error(source, ": ", ad.interactions.size(), " interaction block ranges, expected 4 (set "
                "--interaction-indexes, e.g. 0-2,3-5,6-8,9-11)");
  for (const BlockRange& r : ad.interactions)
    if (r.first < 0 || r.first > r.second || r.second >= a.depth)
      input_error(source, ": interaction blocks ", r.first, "-", r.second, " are not a range of the ", a.depth,
                  " blocks");
  if (ad.deform_heads < 1 || ad.deform_points < 1 || ad.deform_heads > 1024 || ad.deform_points > 1024)
    input_error(source, ": the deformable attention's heads (", ad.deform_heads, ") and points (", ad.deform_points,
                ") cannot be told from the tensors; set --deform-heads and --deform-points");
  if (ad.value_dims % ad.deform_heads)
    input_error(source, ": value width ", ad.value_dims, " is not divisible by ", ad.deform_heads,
                " deformable-attention heads (set --deform-heads and --deform-points)");
  if (ad.conv_inplane < 1 || ad.cffn_hidden < 1) input_error(source, ": empty adapter widths");
}

void preset_config(const std::string& name, Config& backbone, AdapterConfig& ad) {
  backbone = vrwkv::preset_config(name);
  Architecture& a = backbone.arch;
  const OfficialSize* size = official_size(a.embed_dims);
  if (!size) input_error("backbone preset '", name, "' has no official adapter config");
  a.layer_scale = true;  // init_values 1 (T) or 1e-5
  a.post_norm = size->post_norm;
  dense_backbone(backbone);
  ad = AdapterConfig{};
  ad.deform_heads = size->heads;
  ad.value_dims = static_cast<std::int64_t>(a.embed_dims * size->deform_ratio);
  ad.cffn_hidden = a.embed_dims / 4;
  ad.interactions = equal_interactions(a.depth);
}

std::string settings_to_json(const Config& backbone, const AdapterConfig& ad) {
  nlohmann::json ranges = nlohmann::json::array();
  for (const auto& [b, e] : ad.interactions) ranges.push_back({b, e});
  return nlohmann::json{{"post_norm", backbone.arch.post_norm},
                        {"interaction_indexes", ranges},
                        {"deform_heads", ad.deform_heads},
                        {"deform_points", ad.deform_points},
                        {"wkv", to_string(backbone.run.wkv)},
                        {"wkv_chunks", backbone.run.wkv_chunks}}
      .dump();
}

AdapterOverrides settings_from_json(const std::string& text, const std::string& source, const std::string& key) {
  try {
    const auto j = nlohmann::json::parse(text);
    AdapterOverrides o;
    o.post_norm = j.at("post_norm").get<bool>();
    std::vector<BlockRange> r;
    const auto integer = [&](const nlohmann::json& v, const char* name, double hi = 9.0e18) {
      return io::json_integer(v, source + ": metadata '" + key + "' " + name, -9.0e18, hi);
    };
    for (const auto& p : j.at("interaction_indexes"))
      r.push_back({integer(p.at(0), "interaction_indexes"), integer(p.at(1), "interaction_indexes")});
    o.interactions = r;
    o.deform_heads = integer(j.at("deform_heads"), "deform_heads");
    o.deform_points = integer(j.at("deform_points"), "deform_points");
    o.wkv = wkv_from_string(j.at("wkv").get<std::string>());
    o.wkv_chunks = static_cast<int>(integer(j.at("wkv_chunks"), "wkv_chunks", 1 << 30));
    return o;
  } catch (const nlohmann::json::exception& e) {
    input_error(source, ": metadata '", key, "' is not valid (", e.what(), ")");
  }
}

double flops(const Config& backbone, const AdapterConfig& c, const AdapterW& ad, std::int64_t h, std::int64_t w) {
  const Architecture& a = backbone.arch;
  const std::int64_t C = a.embed_dims, T = (h / 16) * (w / 16), n8 = (h / 8) * (w / 8), n32 = (h / 32) * (w / 32);
  const std::int64_t Nc = n8 + T + n32;
  double macs = 0;
  const auto conv_macs = [](const ConvW& cw, std::int64_t outH, std::int64_t outW) {
    const ops::ConvShape& s = cw.shape;
    return static_cast<double>(outH) * outW * s.Co * (s.Ci / s.groups) * s.k * s.k;
  };
  const auto lin = [](const LinearW& l, std::int64_t M) { return static_cast<double>(M) * l.out * l.in; };
  macs += static_cast<double>(T) * C * 3 * 16 * 16;  // patch embedding
  // VRWKV block linears: key/value/receptance/output C², ffn key/value C·hidden, receptance C².
  std::int64_t blocks = 0;
  for (const BlockRange& r : c.interactions) blocks += r.second - r.first + 1;
  macs += static_cast<double>(blocks) * T * (5.0 * C * C + 2.0 * C * a.hidden_dims);
  macs += conv_macs(ad.stem[0], h / 2, w / 2) + conv_macs(ad.stem[1], h / 2, w / 2) +
          conv_macs(ad.stem[2], h / 2, w / 2);
  macs += conv_macs(ad.conv2, h / 8, w / 8) + conv_macs(ad.conv3, h / 16, w / 16) + conv_macs(ad.conv4, h / 32, w / 32);
  macs += conv_macs(ad.fc[0], h / 4, w / 4) + conv_macs(ad.fc[1], h / 8, w / 8) + conv_macs(ad.fc[2], h / 16, w / 16) +
          conv_macs(ad.fc[3], h / 32, w / 32);
  const auto attn = [&](const DeformAttnW& at, std::int64_t Lq, std::int64_t len_in) {
    return lin(at.value_proj, len_in) + lin(at.sampling_offsets, Lq) + lin(at.attention_weights, Lq) +
           lin(at.output_proj, Lq);
  };
  const auto extractor = [&](const ExtractorW& e) {
    return attn(e.attn, Nc, T) + lin(e.fc1, Nc) + lin(e.fc2, Nc) + static_cast<double>(Nc) * e.fc1.out * 9;
  };
  for (const InteractionW& it : ad.interactions) {
    macs += attn(it.attn, T, Nc) + extractor(it.extractor);
    for (const ExtractorW& e : it.extra) macs += extractor(e);
  }
  macs += static_cast<double>(h / 8) * (w / 8) * C * C * 4;  // up (2×2 transposed)
  return 2 * macs;
}

}  // namespace vrwkv::adapter

namespace vrwkv {

CheckpointKind checkpoint_kind(const std::string& path) {
  LoadReport report;
  const TensorMap sd = model::read_checkpoint(path, report);
  if (sd.count("neck.lateral_convs.0.conv.weight") && sd.count("rpn_head.rpn_conv.weight"))
    return CheckpointKind::Detector;
  if (sd.count("backbone.spm.stem.0.weight") && sd.count("decode_head.conv_seg.weight"))
    return CheckpointKind::Segmentor;
  return CheckpointKind::Classifier;
}

}  // namespace vrwkv
