// Segmentor: loading an mmseg checkpoint (configuration inferred from the
// tensors, defaults of the official configs by model size), the parameter
// storage, and mmseg's whole / slide inference (DENSE.md (d)).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "model/checkpoint.hpp"
#include "ops/maps.hpp"
#include "seg/state.hpp"
#include "threads.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/safetensors.hpp"
#include "vrwkv/segmentor.hpp"

namespace vrwkv {

namespace {

bool is_backbone_model_key(const std::string& k) {
  return k == "backbone.pos_embed" || k.starts_with("backbone.patch_embed.") || k.starts_with("backbone.layers.");
}

const Tensor& need(const TensorMap& sd, const std::string& name, int ndim, const std::string& source) {
  const auto it = sd.find(name);
  if (it == sd.end()) input_error(source, ": missing tensor '", name, "' (not a VRWKV-Adapter segmentor?)");
  if (it->second.ndim() != ndim)
    input_error(source, ": tensor '", name, "' has shape ", shape_str(it->second.shape()), ", expected ", ndim,
                " dimensions");
  return it->second;
}

// The official configs by embed width (DENSE.md (a)): tiny, small, base, large.
struct OfficialSize {
  std::int64_t embed, heads;
  bool post_norm;
};
constexpr OfficialSize kSizes[] = {{192, 6, false}, {384, 6, true}, {768, 12, true}, {1024, 16, true}};
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


}  // namespace

bool is_segmentor_checkpoint(const std::string& path) {
  LoadReport rep;
  const TensorMap sd = model::read_checkpoint(path, rep);
  return sd.count("backbone.spm.stem.0.weight") && sd.count("decode_head.conv_seg.weight");
}

SegmentorConfig Segmentor::infer_config(const TensorMap& sd, const std::string& source) {
  SegmentorConfig c;
  TensorMap bb;
  for (const auto& [k, t] : sd)
    if (is_backbone_model_key(k)) bb.emplace(k, t);
  if (!sd.count("backbone.spm.stem.0.weight") || !sd.count("decode_head.conv_seg.weight"))
    input_error(source, ": not a VRWKV-Adapter + UPerHead segmentor (no backbone.spm.stem.0.weight or "
                "decode_head.conv_seg.weight)");
  c.backbone = vrwkv::infer_config(bb, source);
  Architecture& a = c.backbone.arch;
  const OfficialSize* size = official_size(a.embed_dims);
  a.post_norm = size && size->post_norm;  // the T segmentor is pre-norm with layer scale
  a.final_norm = false;
  a.head = HeadKind::None;
  c.backbone.run.wkv = WkvSemantics::Official;
  c.backbone.run.wkv_chunks = 32;  // the cuda_new kernel the segmentation code compiles
  c.backbone.run.out_indices = {a.depth - 1};

  AdapterConfig& ad = c.adapter;
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
  if (a.depth % 4 == 0) ad.interactions = equal_interactions(a.depth);

  SegHeadConfig& h = c.head;
  const Tensor& seg = need(sd, "decode_head.conv_seg.weight", 4, source);
  h.num_classes = seg.dim(0);
  h.channels = seg.dim(1);
  h.auxiliary = sd.count("auxiliary_head.conv_seg.weight") > 0;
  if (h.auxiliary) h.aux_channels = need(sd, "auxiliary_head.conv_seg.weight", 4, source).dim(1);
  return c;
}

void Segmentor::apply_overrides(SegmentorConfig& c, const SegOverrides& o, const std::string& source) {
  if (o.post_norm) c.backbone.arch.post_norm = *o.post_norm;
  if (o.interactions) c.adapter.interactions = *o.interactions;
  // One of heads and points given: the other keeps their product, which the tensors fix.
  const std::int64_t product = c.adapter.deform_heads * c.adapter.deform_points;
  if (o.deform_heads) c.adapter.deform_heads = *o.deform_heads;
  if (o.deform_points) c.adapter.deform_points = *o.deform_points;
  if (o.deform_heads && !o.deform_points && product % *o.deform_heads == 0)
    c.adapter.deform_points = product / *o.deform_heads;
  if (o.deform_points && !o.deform_heads && product % *o.deform_points == 0)
    c.adapter.deform_heads = product / *o.deform_points;
  if (o.wkv) c.backbone.run.wkv = *o.wkv;
  if (o.wkv_chunks) c.backbone.run.wkv_chunks = *o.wkv_chunks;
  check_segmentor_config(c, source);
}

void check_segmentor_config(const SegmentorConfig& c, const std::string& source) {
  check_config(c.backbone, source);
  const Architecture& a = c.backbone.arch;
  const AdapterConfig& ad = c.adapter;
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
  const SegHeadConfig& h = c.head;
  if (h.num_classes < 1 || h.num_classes > 255)
    input_error(source, ": ", h.num_classes, " classes; the class-index maps hold at most 255");
  if (h.pool_scales.size() != 4) input_error(source, ": expected 4 pool scales");
  if (!c.labels.empty() && static_cast<std::int64_t>(c.labels.size()) != h.num_classes)
    input_error(source, ": ", c.labels.size(), " class names for ", h.num_classes, " classes");
}

std::vector<std::pair<std::string, Shape>> segmentor_parameter_shapes(const SegmentorConfig& config) {
  seg::SegWeights w;
  std::vector<std::pair<std::string, Shape>> out;
  for (const seg::TensorSlot& s : seg::tensor_slots(config, w)) out.emplace_back(s.name, s.shape);
  return out;
}

Segmentor Segmentor::from_state_dict(const TensorMap& sd, const SegmentorConfig& config, const std::string& source) {
  check_segmentor_config(config, source);
  auto state = std::make_shared<seg::State>();
  const std::vector<seg::TensorSlot> slots = seg::tensor_slots(config, state->w);
  // Every tensor present with its shape, before anything is allocated.
  std::int64_t total = 0;
  for (const seg::TensorSlot& s : slots) {
    const auto it = sd.find(s.name);
    if (it == sd.end()) input_error(source, ": missing tensor '", s.name, "' required by the segmentor");
    if (it->second.shape() != s.shape)
      input_error(source, ": tensor '", s.name, "' has shape ", shape_str(it->second.shape()), ", expected ",
                  shape_str(s.shape));
    if (it->second.dtype() == DType::I64 || it->second.dtype() == DType::Bool)
      input_error(source, ": tensor '", s.name, "' is ", dtype_name(it->second.dtype()), ", expected floats");
    total += shape_numel(s.shape);
  }
  TensorMap bb;
  for (const auto& [k, t] : sd)
    if (is_backbone_model_key(k)) bb.emplace(k, t);
  Segmentor seg;
  seg.config_ = config;
  seg.backbone_ = Model::from_state_dict(bb, config.backbone, source);
  seg.storage_ = Tensor(DType::F32, {total});
  std::int64_t at = 0;
  for (const seg::TensorSlot& s : slots) {
    const Tensor src = sd.at(s.name).to_f32();
    Tensor dst = seg.storage_.view(at, s.shape);
    std::memcpy(dst.f32(), src.f32(), dst.nbytes());
    for (std::int64_t i = 0; i < dst.numel(); ++i)
      if (!std::isfinite(dst.f32()[i]))
        input_error(source, ": tensor '", s.name, "' holds a non-finite value (", dst.f32()[i], " at element ", i, ")");
    *s.slot = dst.f32();
    seg.params_.emplace(s.name, dst);
    at += dst.numel();
  }
  seg.state_ = std::move(state);
  return seg;
}

std::string segmentor_settings_to_json(const SegmentorConfig& c) {
  nlohmann::json ranges = nlohmann::json::array();
  for (const auto& [b, e] : c.adapter.interactions) ranges.push_back({b, e});
  return nlohmann::json{{"post_norm", c.backbone.arch.post_norm},
                        {"interaction_indexes", ranges},
                        {"deform_heads", c.adapter.deform_heads},
                        {"deform_points", c.adapter.deform_points},
                        {"wkv", to_string(c.backbone.run.wkv)},
                        {"wkv_chunks", c.backbone.run.wkv_chunks}}
      .dump();
}

SegOverrides segmentor_settings_from_json(const std::string& text, const std::string& source) {
  try {
    const auto j = nlohmann::json::parse(text);
    SegOverrides o;
    o.post_norm = j.at("post_norm").get<bool>();
    std::vector<BlockRange> r;
    for (const auto& p : j.at("interaction_indexes")) r.push_back({p.at(0).get<std::int64_t>(), p.at(1).get<std::int64_t>()});
    o.interactions = r;
    o.deform_heads = j.at("deform_heads").get<std::int64_t>();
    o.deform_points = j.at("deform_points").get<std::int64_t>();
    o.wkv = wkv_from_string(j.at("wkv").get<std::string>());
    o.wkv_chunks = j.at("wkv_chunks").get<int>();
    return o;
  } catch (const nlohmann::json::exception& e) {
    input_error(source, ": metadata 'vrwkv.segmentor' is not valid (", e.what(), ")");
  }
}

Segmentor Segmentor::load(const std::string& path, const SegOverrides& overrides, LoadReport* report) {
  LoadReport rep;
  Metadata meta;
  const TensorMap sd = model::read_checkpoint(path, rep, &meta);
  SegmentorConfig config = infer_config(sd, path);
  // A converted file's settings, then the caller's over them.
  if (meta.count("vrwkv.segmentor")) apply_overrides(config, segmentor_settings_from_json(meta.at("vrwkv.segmentor"), path), path);
  apply_overrides(config, overrides, path);
  Segmentor seg = from_state_dict(sd, config, path);
  for (const auto& [k, t] : sd)
    if (!seg.params_.count(k) && !seg.backbone_.parameters().count(k)) rep.ignored.push_back(k);
  if (report) *report = std::move(rep);
  return seg;
}

std::int64_t Segmentor::parameter_count() const {
  // PyTorch's count: BatchNorm running statistics are buffers, not parameters.
  std::int64_t n = backbone_.parameter_count();
  for (const auto& [name, t] : params_)
    if (!name.ends_with(".running_mean") && !name.ends_with(".running_var")) n += t.numel();
  return n;
}

double Segmentor::flops(std::int64_t h, std::int64_t w) const {
  // 2 × multiply-adds of every convolution and linear.
  const SegmentorConfig& c = config_;
  const Architecture& a = c.backbone.arch;
  const std::int64_t C = a.embed_dims, T = (h / 16) * (w / 16), n8 = (h / 8) * (w / 8), n32 = (h / 32) * (w / 32);
  const std::int64_t Nc = n8 + T + n32;
  double macs = 0;
  // Patch embedding and blocks: the backbone's own count (its convention counts multiply-adds of the linears).
  const auto conv_macs = [](const seg::ConvW& cw, std::int64_t outH, std::int64_t outW) {
    const ops::ConvShape& s = cw.shape;
    return static_cast<double>(outH) * outW * s.Co * (s.Ci / s.groups) * s.k * s.k;
  };
  const auto lin = [](const seg::LinearW& l, std::int64_t M) { return static_cast<double>(M) * l.out * l.in; };
  macs += static_cast<double>(T) * C * 3 * 16 * 16;  // patch embedding
  // VRWKV block linears: key/value/receptance/output C², ffn key/value C·hidden, receptance C².
  std::int64_t blocks = 0;
  for (const BlockRange& r : c.adapter.interactions) blocks += r.second - r.first + 1;
  macs += static_cast<double>(blocks) * T * (5.0 * C * C + 2.0 * C * a.hidden_dims);
  const seg::SegWeights& W = state_->w;
  const seg::AdapterW& ad = W.adapter;
  macs += conv_macs(ad.stem[0], h / 2, w / 2) + conv_macs(ad.stem[1], h / 2, w / 2) +
          conv_macs(ad.stem[2], h / 2, w / 2);
  macs += conv_macs(ad.conv2, h / 8, w / 8) + conv_macs(ad.conv3, h / 16, w / 16) + conv_macs(ad.conv4, h / 32, w / 32);
  macs += conv_macs(ad.fc[0], h / 4, w / 4) + conv_macs(ad.fc[1], h / 8, w / 8) + conv_macs(ad.fc[2], h / 16, w / 16) +
          conv_macs(ad.fc[3], h / 32, w / 32);
  const auto attn = [&](const seg::DeformAttnW& at, std::int64_t Lq, std::int64_t len_in) {
    return lin(at.value_proj, len_in) + lin(at.sampling_offsets, Lq) + lin(at.attention_weights, Lq) +
           lin(at.output_proj, Lq);
  };
  const auto extractor = [&](const seg::ExtractorW& e) {
    return attn(e.attn, Nc, T) + lin(e.fc1, Nc) + lin(e.fc2, Nc) + static_cast<double>(Nc) * e.fc1.out * 9;
  };
  for (const seg::InteractionW& it : ad.interactions) {
    macs += attn(it.attn, T, Nc) + extractor(it.extractor);
    for (const seg::ExtractorW& e : it.extra) macs += extractor(e);
  }
  macs += static_cast<double>(h / 8) * (w / 8) * C * C * 4;  // up (2×2 transposed)
  const seg::UperW& u = W.decode;
  const std::int64_t H32 = h / 32, W32 = w / 32;
  for (std::size_t k = 0; k < c.head.pool_scales.size(); ++k)
    macs += conv_macs(u.psp[k], c.head.pool_scales[k], c.head.pool_scales[k]);
  macs += conv_macs(u.bottleneck, H32, W32);
  for (int i = 0; i < 3; ++i) {
    const std::int64_t s = 4 << i;
    macs += conv_macs(u.lateral[i], h / s, w / s) + conv_macs(u.fpn[i], h / s, w / s);
  }
  macs += conv_macs(u.fpn_bottleneck, h / 4, w / 4) + conv_macs(u.conv_seg, h / 4, w / 4);
  if (c.head.auxiliary) macs += conv_macs(W.aux.conv, h / 16, w / 16) + conv_macs(W.aux.conv_seg, h / 16, w / 16);
  return 2 * macs;
}

SegOutputs Segmentor::forward(const Tensor& input, const SegmentOptions& options, const Context& ctx,
                              TensorMap* trace) const {
  return seg::run(*this, *state_, input, options, ctx, trace);
}

std::vector<std::array<std::int64_t, 4>> Segmentor::slide_windows(std::int64_t H, std::int64_t W,
                                                                  const SegmentOptions& o) {
  if (o.crop_h < 1 || o.crop_w < 1 || o.stride_h < 1 || o.stride_w < 1)
    input_error("slide inference needs a positive crop and stride, got crop ", o.crop_h, "x", o.crop_w, ", stride ",
                o.stride_h, "x", o.stride_w);
  if (o.stride_h > o.crop_h || o.stride_w > o.crop_w)
    input_error("slide stride ", o.stride_h, "x", o.stride_w, " is larger than the crop ", o.crop_h, "x", o.crop_w,
                ": pixels would be left out");
  const std::int64_t gh = std::max<std::int64_t>(H - o.crop_h + o.stride_h - 1, 0) / o.stride_h + 1;
  const std::int64_t gw = std::max<std::int64_t>(W - o.crop_w + o.stride_w - 1, 0) / o.stride_w + 1;
  std::vector<std::array<std::int64_t, 4>> out;
  for (std::int64_t i = 0; i < gh; ++i)
    for (std::int64_t j = 0; j < gw; ++j) {
      std::int64_t y1 = i * o.stride_h, x1 = j * o.stride_w;
      const std::int64_t y2 = std::min(y1 + o.crop_h, H), x2 = std::min(x1 + o.crop_w, W);
      y1 = std::max<std::int64_t>(y2 - o.crop_h, 0);
      x1 = std::max<std::int64_t>(x2 - o.crop_w, 0);
      out.push_back({y1, y2, x1, x2});
    }
  return out;
}

namespace {

// logits [B,K,h,w] of a call resized to the size it was made for (encode_decode).
Tensor resize_logits(const Tensor& t, std::int64_t Ho, std::int64_t Wo) {
  if (t.dim(2) == Ho && t.dim(3) == Wo) return t;
  Tensor out(DType::F32, {t.dim(0), t.dim(1), Ho, Wo});
  ops::resize_bilinear_nchw(t.f32(), t.dim(0), t.dim(1), t.dim(2), t.dim(3), out.f32(), Ho, Wo);
  return out;
}

Tensor flip_w(const Tensor& t) {
  Tensor out(t.dtype(), t.shape());
  const std::int64_t W = t.dim(3), rows = t.numel() / W;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t x = 0; x < W; ++x) out.f32()[r * W + x] = t.f32()[r * W + W - 1 - x];
  return out;
}

// softmax over the class axis of [B,K,H,W], in place.
void softmax_classes(Tensor& t) {
  const std::int64_t B = t.dim(0), K = t.dim(1), P = t.dim(2) * t.dim(3);
  float* v = t.f32();
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t p = 0; p < P; ++p) {
      float top = -INFINITY;
      for (std::int64_t k = 0; k < K; ++k) top = std::max(top, v[(b * K + k) * P + p]);
      double sum = 0;
      for (std::int64_t k = 0; k < K; ++k) sum += std::exp(static_cast<double>(v[(b * K + k) * P + p]) - top);
      for (std::int64_t k = 0; k < K; ++k)
        v[(b * K + k) * P + p] = static_cast<float>(std::exp(static_cast<double>(v[(b * K + k) * P + p]) - top) / sum);
    }
}

}  // namespace

Tensor Segmentor::infer(const Tensor& input, const SegmentOptions& o, const Context& ctx) const {
  if (input.dtype() != DType::F32 || input.ndim() != 4 || input.dim(1) != 3 || input.dim(0) < 1 ||
      input.dim(2) < 1 || input.dim(3) < 1)
    input_error("input has shape ", shape_str(input.shape()), ", expected F32 [B,3,H,W]");
  const std::int64_t B = input.dim(0), H = input.dim(2), W = input.dim(3), K = config_.head.num_classes;
  const std::int64_t Ho = o.out_h ? o.out_h : H, Wo = o.out_w ? o.out_w : W;
  if (Ho < 1 || Wo < 1 || Ho > 65536 || Wo > 65536) input_error("output size ", Ho, "x", Wo, " is not a size");
  const auto once = [&](const Tensor& img) {
    Tensor preds;
    if (o.mode == SegmentOptions::Mode::Whole) {
      preds = resize_logits(forward(img, o, ctx).decode_logits, H, W);
    } else {
      const auto windows = slide_windows(H, W, o);
      for (const auto& [y1, y2, x1, x2] : windows)
        if ((y2 - y1) % 32 || (x2 - x1) % 32)
          input_error("slide crop ", y2 - y1, "x", x2 - x1, " of a ", H, "x", W, " image: crops must be multiples of "
                      "32 (the image is smaller than the crop ", o.crop_h, "x", o.crop_w, " and not a multiple of 32)");
      preds = Tensor(DType::F32, {B, K, H, W});
      std::vector<std::int32_t> count(H * W, 0);
      for (const auto& [y1, y2, x1, x2] : windows) {
        const std::int64_t h = y2 - y1, w = x2 - x1;
        Tensor crop(DType::F32, {B, 3, h, w});
        for (std::int64_t bc = 0; bc < B * 3; ++bc)
          for (std::int64_t y = 0; y < h; ++y)
            std::memcpy(crop.f32() + (bc * h + y) * w, img.f32() + (bc * H + y1 + y) * W + x1, sizeof(float) * w);
        const Tensor logits = resize_logits(forward(crop, o, ctx).decode_logits, h, w);
        const std::int64_t top = y1, left = x1;  // plain copies: OpenMP regions cannot name structured bindings (clang)
        float* sum = preds.f32();
        const float* add = logits.f32();
        const ThreadScope threads(ctx);
#pragma omp parallel for collapse(2) schedule(static)
        for (std::int64_t bk = 0; bk < B * K; ++bk)
          for (std::int64_t y = 0; y < h; ++y) {
            float* row = sum + (bk * H + top + y) * W + left;
            const float* from = add + (bk * h + y) * w;
            for (std::int64_t x = 0; x < w; ++x) row[x] += from[x];
          }
        for (std::int64_t y = y1; y < y2; ++y)
          for (std::int64_t x = x1; x < x2; ++x) ++count[y * W + x];
      }
      float* sum = preds.f32();
      const ThreadScope threads(ctx);
#pragma omp parallel for schedule(static)
      for (std::int64_t bk = 0; bk < B * K; ++bk)
        for (std::int64_t p = 0; p < H * W; ++p) sum[bk * H * W + p] /= static_cast<float>(count[p]);
    }
    return resize_logits(preds, Ho, Wo);
  };
  Tensor logits = once(input);
  if (!o.flip) return logits;
  // mmseg's flip augmentation averages the softmax of both passes.
  softmax_classes(logits);
  Tensor flipped = flip_w(once(flip_w(input)));
  softmax_classes(flipped);
  for (std::int64_t i = 0; i < logits.numel(); ++i)
    logits.f32()[i] = std::log(0.5f * (logits.f32()[i] + flipped.f32()[i]));
  return logits;
}

Tensor Segmentor::predict(const Tensor& logits) {
  if (logits.dtype() != DType::F32 || logits.ndim() != 4)
    input_error("logits have shape ", shape_str(logits.shape()), ", expected F32 [B,K,H,W]");
  const std::int64_t B = logits.dim(0), K = logits.dim(1), P = logits.dim(2) * logits.dim(3);
  Tensor pred(DType::I64, {B, logits.dim(2), logits.dim(3)});
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t p = 0; p < P; ++p) {
      std::int64_t best = 0;
      for (std::int64_t k = 1; k < K; ++k)
        if (logits.f32()[(b * K + k) * P + p] > logits.f32()[(b * K + best) * P + p]) best = k;
      pred.data<std::int64_t>()[b * P + p] = best;
    }
  return pred;
}

}  // namespace vrwkv
