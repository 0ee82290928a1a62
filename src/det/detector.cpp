// Detector: loading an mmdet Mask R-CNN checkpoint (configuration from the
// tensors, the backbone's defaults by model size), the parameter storage,
// the presets, and the calls (backbone, then neck and heads).
#include <chrono>
#include <cmath>
#include <sstream>

#include "adapter/adapter.hpp"
#include "det/state.hpp"
#include "model/checkpoint.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/presets.hpp"

namespace vrwkv {

namespace det {
extern const char* const kCocoClasses;
}

namespace {

const Tensor& need(const TensorMap& sd, const std::string& name, int ndim, const std::string& source) {
  const auto it = sd.find(name);
  if (it == sd.end()) input_error(source, ": missing tensor '", name, "' (not a Mask R-CNN detector?)");
  if (it->second.ndim() != ndim)
    input_error(source, ": tensor '", name, "' has shape ", shape_str(it->second.shape()), ", expected ", ndim,
                " dimensions");
  return it->second;
}

}  // namespace

bool is_detector_state_dict(const TensorMap& sd) {
  return sd.count("neck.lateral_convs.0.conv.weight") && sd.count("rpn_head.rpn_conv.weight");
}

bool is_detector_checkpoint(const std::string& path) { return checkpoint_kind(path) == CheckpointKind::Detector; }

DetectorConfig Detector::infer_config(const TensorMap& sd, const std::string& source) {
  if (!is_detector_state_dict(sd))
    input_error(source, ": not a Mask R-CNN detector (no neck.lateral_convs.0.conv.weight or rpn_head.rpn_conv.weight)");
  DetectorConfig c;
  c.has_backbone = sd.count("backbone.spm.stem.0.weight") > 0;
  if (c.has_backbone) adapter::infer_config(sd, source, c.backbone, c.adapter);
  DetHeadConfig& h = c.head;
  const Tensor& lat = need(sd, "neck.lateral_convs.0.conv.weight", 4, source);
  h.fpn_channels = lat.dim(0);
  h.in_channels = lat.dim(1);
  h.rpn_channels = need(sd, "rpn_head.rpn_conv.weight", 4, source).dim(0);
  const std::int64_t anchors = need(sd, "rpn_head.rpn_cls.weight", 4, source).dim(0);
  if (anchors != static_cast<std::int64_t>(det::kAnchorRatios.size()))
    input_error(source, ": rpn_head.rpn_cls has ", anchors, " anchors per position, expected ",
                det::kAnchorRatios.size(), " (ratios 0.5, 1, 2; sigmoid scores)");
  const Tensor& cls = need(sd, "roi_head.bbox_head.fc_cls.weight", 2, source);
  h.num_classes = cls.dim(0) - 1;
  h.fc_channels = cls.dim(1);
  h.mask_channels = need(sd, "roi_head.mask_head.convs.0.conv.weight", 4, source).dim(0);
  return c;
}

void Detector::apply_overrides(DetectorConfig& c, const AdapterOverrides& o, const std::string& source) {
  if (c.has_backbone) adapter::apply_overrides(c.backbone, c.adapter, o, source);
  check_detector_config(c, source);
}

void check_detector_config(const DetectorConfig& c, const std::string& source) {
  if (c.has_backbone) {
    adapter::check_config(c.backbone, c.adapter, source);
    if (c.head.in_channels != c.backbone.arch.embed_dims)
      input_error(source, ": the FPN takes ", c.head.in_channels, " channels but the backbone gives ",
                  c.backbone.arch.embed_dims);
  }
  const DetHeadConfig& h = c.head;
  for (const std::int64_t v : {h.in_channels, h.fpn_channels, h.rpn_channels, h.fc_channels, h.mask_channels})
    if (v < 1 || v > 65536) input_error(source, ": a neck or head width of ", v, " channels");
  if (h.num_classes < 1 || h.num_classes > 65536) input_error(source, ": ", h.num_classes, " classes");
  if (!c.labels.empty() && static_cast<std::int64_t>(c.labels.size()) != h.num_classes)
    input_error(source, ": ", c.labels.size(), " class names for ", h.num_classes, " classes");
}

void Detector::set_test_config(const DetTestConfig& t) {
  if (t.rpn_nms_pre < 0 || t.rpn_max_per_img < 0 || t.max_per_img < 0)
    input_error("test settings: negative counts (", t.rpn_nms_pre, ", ", t.rpn_max_per_img, ", ", t.max_per_img, ")");
  for (const float v : {t.rpn_iou, t.score_thr, t.iou, t.mask_thr})
    if (!(v >= 0 && v <= 1)) input_error("test settings: threshold ", v, " is not in [0, 1]");
  config_.test = t;
}

std::string detector_settings_to_json(const DetectorConfig& c) {
  return c.has_backbone ? adapter::settings_to_json(c.backbone, c.adapter) : "{}";
}

Detector Detector::from_state_dict(const TensorMap& sd, const DetectorConfig& config, const std::string& source) {
  check_detector_config(config, source);
  auto state = std::make_shared<det::State>();
  Detector d;
  d.config_ = config;
  adapter::bind_slots(det::tensor_slots(config, state->w), sd, source, "detector", d.storage_, d.params_);
  if (config.has_backbone)
    d.backbone_ = Model::from_state_dict(adapter::backbone_model_tensors(sd), config.backbone, source);
  d.state_ = std::move(state);
  return d;
}

Detector Detector::load(const std::string& path, const AdapterOverrides& overrides, LoadReport* report) {
  LoadReport rep;
  Metadata meta;
  const TensorMap sd = model::read_checkpoint(path, rep, &meta);
  DetectorConfig config = infer_config(sd, path);
  if (config.has_backbone && meta.count("vrwkv.detector"))
    apply_overrides(config, adapter::settings_from_json(meta.at("vrwkv.detector"), path, "vrwkv.detector"), path);
  apply_overrides(config, overrides, path);
  Detector d = from_state_dict(sd, config, path);
  for (const auto& [k, t] : sd)
    if (!d.params_.count(k) && !(config.has_backbone && d.backbone_.parameters().count(k))) rep.ignored.push_back(k);
  if (report) *report = std::move(rep);
  return d;
}

std::int64_t Detector::parameter_count() const {
  return (config_.has_backbone ? backbone_.parameter_count() : 0) + adapter::parameter_count(params_);
}

double Detector::flops(std::int64_t h, std::int64_t w, std::int64_t proposals, std::int64_t detections) const {
  const DetectorConfig& c = config_;
  const det::DetWeights& W = state_->w;
  double macs = c.has_backbone ? adapter::flops(c.backbone, c.adapter, W.adapter, h, w) / 2 : 0;
  const auto conv_macs = [](const det::ConvW& cw, std::int64_t outH, std::int64_t outW) {
    const ops::ConvShape& s = cw.shape;
    return static_cast<double>(outH) * outW * s.Co * (s.Ci / s.groups) * s.k * s.k;
  };
  std::int64_t H = h / 4, Wd = w / 4;
  for (int l = 0; l < 5; ++l) {
    if (l < 4) macs += conv_macs(W.fpn.lateral[l], H, Wd) + conv_macs(W.fpn.fpn[l], H, Wd);
    macs += conv_macs(W.rpn.conv, H, Wd) + conv_macs(W.rpn.cls, H, Wd) + conv_macs(W.rpn.reg, H, Wd);
    H = (H + 1) / 2, Wd = (Wd + 1) / 2;
  }
  const auto lin = [](const det::LinearW& l, std::int64_t M) { return static_cast<double>(M) * l.out * l.in; };
  macs += lin(W.box.shared[0], proposals) + lin(W.box.shared[1], proposals) + lin(W.box.cls, proposals) +
          lin(W.box.reg, proposals);
  for (const det::ConvW& cv : W.mask.convs) macs += detections * conv_macs(cv, det::kMaskRoiSize, det::kMaskRoiSize);
  const std::int64_t M = c.head.mask_channels, S = 2 * det::kMaskRoiSize;
  macs += static_cast<double>(detections) * det::kMaskRoiSize * det::kMaskRoiSize * M * M * 4;  // upsample
  macs += detections * conv_macs(W.mask.logits, S, S);
  return 2 * macs;
}

namespace {

std::array<adapter::Map, 4> backbone_maps(const Detector& d, det::State& st, const Tensor& input,
                                          const DetectOptions& o, const Context& ctx, TensorMap* trace) {
  if (!d.config().has_backbone)
    input_error("this detector holds only the neck and heads: give it the backbone's features (--from-features)");
  if (input.ndim() == 4 && input.dim(0) != 1)
    input_error("input has shape ", shape_str(input.shape()), ": the detector runs one image per call (batch 1)");
  const adapter::RunOptions ro{AdapterFusion::Final, o.reference, o.bf16};
  return adapter::forward(d.backbone(), d.config().adapter, st.w.adapter, st.convs, input, ro, ctx, trace);
}

void check_meta(const ImageMeta& m, std::int64_t pad_h, std::int64_t pad_w) {
  if (m.ori_h < 1 || m.ori_w < 1 || m.img_h < 1 || m.img_w < 1 || m.ori_h > 65536 || m.ori_w > 65536)
    input_error("image metadata: original ", m.ori_h, "x", m.ori_w, ", resized ", m.img_h, "x", m.img_w,
                " are not image sizes");
  if (m.img_h > pad_h || m.img_w > pad_w)
    input_error("image metadata: the resized image ", m.img_h, "x", m.img_w, " does not fit the ", pad_h, "x", pad_w,
                " input");
  for (const float s : m.scale_factor)
    if (!(s > 0) || !std::isfinite(s)) input_error("image metadata: scale factor ", s, " is not a positive number");
  // The masks are ori_h × ori_w bytes per detection.
  if (m.ori_h * m.ori_w > (std::int64_t{1} << 27))
    input_error("image metadata: an original image of ", m.ori_h, "x", m.ori_w, " pixels (at most 2^27)");
  // The resize the scale factor describes: resized = original · factor, up to mmcv's rounding.
  if (std::abs(m.ori_w * static_cast<double>(m.scale_factor[0]) - m.img_w) > 1 ||
      std::abs(m.ori_h * static_cast<double>(m.scale_factor[1]) - m.img_h) > 1)
    input_error("image metadata: scale factor ", m.scale_factor[0], "x", m.scale_factor[1], " does not take the original ",
                m.ori_h, "x", m.ori_w, " to the resized ", m.img_h, "x", m.img_w);
}

}  // namespace

std::vector<Tensor> Detector::features(const Tensor& input, const DetectOptions& o, const Context& ctx,
                                       TensorMap* trace) const {
  std::vector<Tensor> out;
  for (const adapter::Map& m : backbone_maps(*this, *state_, input, o, ctx, trace)) out.push_back(adapter::to_nchw(m));
  return out;
}

Detections Detector::detect_features(const std::vector<Tensor>& features, const ImageMeta& meta,
                                     const DetectOptions& o, const Context& ctx, TensorMap* trace,
                                     DetStageTimes* times) const {
  if (features.size() != 4) input_error(features.size(), " feature maps given, expected 4 (strides 4, 8, 16, 32)");
  std::array<adapter::Map, 4> maps;
  for (int l = 0; l < 4; ++l) {
    const Tensor& t = features[l];
    if (t.dtype() != DType::F32 || t.ndim() != 4 || t.dim(0) != 1 || t.dim(1) != config_.head.in_channels)
      input_error("feature map ", l, " has shape ", shape_str(t.shape()), " (", dtype_name(t.dtype()),
                  "), expected F32 [1,", config_.head.in_channels, ",H,W]");
    if (l && (t.dim(2) * 2 != features[l - 1].dim(2) || t.dim(3) * 2 != features[l - 1].dim(3)))
      input_error("feature map ", l, " is ", t.dim(2), "x", t.dim(3), ", expected half of map ", l - 1, "'s ",
                  features[l - 1].dim(2), "x", features[l - 1].dim(3));
    for (std::int64_t i = 0; i < t.numel(); ++i)
      if (!std::isfinite(t.f32()[i])) input_error("feature map ", l, " holds a non-finite value at element ", i);
    maps[l] = adapter::from_nchw(t);
  }
  check_meta(meta, features[0].dim(2) * 4, features[0].dim(3) * 4);
  return det::run_heads(config_, *state_, maps, meta, o, ctx, trace, times);
}

Detections Detector::detect(const Tensor& input, const ImageMeta& meta, const DetectOptions& o, const Context& ctx,
                            TensorMap* trace, DetStageTimes* times) const {
  const auto t0 = std::chrono::steady_clock::now();
  std::array<adapter::Map, 4> maps = backbone_maps(*this, *state_, input, o, ctx, trace);
  if (times) times->backbone += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (trace)
    for (int l = 0; l < 4; ++l) (*trace)["features." + std::to_string(l)] = adapter::to_nchw(maps[l]);
  check_meta(meta, input.dim(2), input.dim(3));
  return det::run_heads(config_, *state_, maps, meta, o, ctx, trace, times);
}

std::vector<std::string> detector_preset_names() {
  return {"mask_rcnn_vrwkv_t", "mask_rcnn_vrwkv_s", "mask_rcnn_vrwkv_b", "mask_rcnn_vrwkv_l"};
}

DetectorConfig detector_preset_config(const std::string& name) {
  static const std::pair<const char*, const char*> rows[] = {{"mask_rcnn_vrwkv_t", "vrwkv_t"},
                                                             {"mask_rcnn_vrwkv_s", "vrwkv_s"},
                                                             {"mask_rcnn_vrwkv_b", "vrwkv_b"},
                                                             {"mask_rcnn_vrwkv_l", "vrwkv_l"}};
  for (const auto& [preset, backbone] : rows) {
    if (name != preset) continue;
    DetectorConfig c;
    adapter::preset_config(backbone, c.backbone, c.adapter);
    c.head.in_channels = c.backbone.arch.embed_dims;
    return c;
  }
  input_error("unknown detector preset '", name, "' (expected mask_rcnn_vrwkv_t, _s, _b or _l)");
}

TensorMap detector_initial_parameters(const DetectorConfig& c, std::uint64_t seed) {
  TensorMap p;
  if (c.has_backbone) {
    const Architecture& a = c.backbone.arch;
    p = initial_parameters(a, seed, a.embed_dims == 192 ? 1.0 : 1e-5);
  }
  det::DetWeights w;
  adapter::initialize(det::tensor_slots(c, w), c.adapter, seed + 1, p);
  return p;
}

Detector Detector::preset(const std::string& name, std::uint64_t seed) {
  const DetectorConfig c = detector_preset_config(name);
  return from_state_dict(detector_initial_parameters(c, seed), c, name);
}

const std::vector<std::string>& coco_classes() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    std::istringstream in(det::kCocoClasses);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) v.push_back(line);
    return v;
  }();
  return names;
}

const std::vector<std::int64_t>& coco_category_ids() {
  // The 80 categories' ids in COCO annotation files (1..90 with gaps), in mmdet's class order.
  static const std::vector<std::int64_t> ids = [] {
    std::vector<std::int64_t> v;
    for (std::int64_t i = 1; i <= 90; ++i)
      if (i != 12 && i != 26 && i != 29 && i != 30 && i != 45 && i != 66 && i != 68 && i != 69 && i != 71 &&
          i != 83)
        v.push_back(i);
    return v;
  }();
  return ids;
}

}  // namespace vrwkv
