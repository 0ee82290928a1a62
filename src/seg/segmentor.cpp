// Segmentor: loading an mmseg checkpoint (configuration inferred from the
// tensors, defaults of the official configs by model size), the parameter
// storage, and mmseg's whole / slide inference (DENSE.md (d)).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "adapter/adapter.hpp"
#include "model/checkpoint.hpp"
#include "ops/maps.hpp"
#include "seg/state.hpp"
#include "threads.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/safetensors.hpp"
#include "vrwkv/segmentor.hpp"

namespace vrwkv {

bool is_segmentor_checkpoint(const std::string& path) { return checkpoint_kind(path) == CheckpointKind::Segmentor; }

SegmentorConfig Segmentor::infer_config(const TensorMap& sd, const std::string& source) {
  if (!sd.count("backbone.spm.stem.0.weight") || !sd.count("decode_head.conv_seg.weight"))
    input_error(source, ": not a VRWKV-Adapter + UPerHead segmentor (no backbone.spm.stem.0.weight or "
                "decode_head.conv_seg.weight)");
  SegmentorConfig c;
  adapter::infer_config(sd, source, c.backbone, c.adapter);
  SegHeadConfig& h = c.head;
  const Tensor& seg = sd.at("decode_head.conv_seg.weight");
  if (seg.ndim() != 4) input_error(source, ": decode_head.conv_seg.weight has shape ", shape_str(seg.shape()),
                                   ", expected [K,C,1,1]");
  h.num_classes = seg.dim(0);
  h.channels = seg.dim(1);
  h.auxiliary = sd.count("auxiliary_head.conv_seg.weight") > 0;
  if (h.auxiliary) {
    const Tensor& aux = sd.at("auxiliary_head.conv_seg.weight");
    if (aux.ndim() != 4) input_error(source, ": auxiliary_head.conv_seg.weight has shape ", shape_str(aux.shape()),
                                     ", expected [K,C,1,1]");
    h.aux_channels = aux.dim(1);
  }
  return c;
}

void Segmentor::apply_overrides(SegmentorConfig& c, const AdapterOverrides& o, const std::string& source) {
  adapter::apply_overrides(c.backbone, c.adapter, o, source);
  check_segmentor_config(c, source);
}

void check_segmentor_config(const SegmentorConfig& c, const std::string& source) {
  adapter::check_config(c.backbone, c.adapter, source);
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
  Segmentor seg;
  seg.config_ = config;
  adapter::bind_slots(seg::tensor_slots(config, state->w), sd, source, "segmentor", seg.storage_, seg.params_);
  seg.backbone_ = Model::from_state_dict(adapter::backbone_model_tensors(sd), config.backbone, source);
  seg.state_ = std::move(state);
  return seg;
}

std::string segmentor_settings_to_json(const SegmentorConfig& c) {
  return adapter::settings_to_json(c.backbone, c.adapter);
}

AdapterOverrides segmentor_settings_from_json(const std::string& text, const std::string& source) {
  return adapter::settings_from_json(text, source, "vrwkv.segmentor");
}

Segmentor Segmentor::load(const std::string& path, const AdapterOverrides& overrides, LoadReport* report) {
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
  return backbone_.parameter_count() + adapter::parameter_count(params_);
}

double Segmentor::flops(std::int64_t h, std::int64_t w) const {
  // 2 × multiply-adds of every convolution and linear.
  const SegmentorConfig& c = config_;
  const seg::SegWeights& W = state_->w;
  double macs = adapter::flops(c.backbone, c.adapter, W.adapter, h, w) / 2;
  const auto conv_macs = [](const seg::ConvW& cw, std::int64_t outH, std::int64_t outW) {
    const ops::ConvShape& s = cw.shape;
    return static_cast<double>(outH) * outW * s.Co * (s.Ci / s.groups) * s.k * s.k;
  };
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
