// Object detection and instance segmentation (DETECTION.md): the official
// Mask R-CNN models, the VRWKV-Adapter backbone (detection fusion) with FPN,
// RPN, the Shared2FC box head and the FCN mask head, at the official test
// settings.
//
//   vrwkv::Detector det = vrwkv::Detector::load("mask_rcnn_vrwkv_adapter_tiny_fpn_1x_coco.pth");
//   vrwkv::DetImage img = vrwkv::load_det_image("photo.jpg");
//   vrwkv::Detections d = det.detect(img.input, img.meta);
//   // d.bboxes [N,4] (x1,y1,x2,y2 in the photo's pixels), d.scores [N], d.labels [N], d.masks [N,h,w]
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vrwkv/adapter.hpp"
#include "vrwkv/context.hpp"
#include "vrwkv/model.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv {

namespace det {
struct State;
}

// Widths of the neck and heads (the official: FPN 256, fc 1024, mask 256, 80 classes).
struct DetHeadConfig {
  std::int64_t in_channels = 192;    // the backbone's width (the FPN's input, all four levels)
  std::int64_t fpn_channels = 256;
  std::int64_t rpn_channels = 256;
  std::int64_t fc_channels = 1024;
  std::int64_t mask_channels = 256;
  std::int64_t num_classes = 80;
};

// test_cfg of the official configs.
struct DetTestConfig {
  std::int64_t rpn_nms_pre = 1000, rpn_max_per_img = 1000;
  float rpn_iou = 0.7f;
  float score_thr = 0.05f, iou = 0.5f;
  std::int64_t max_per_img = 100;
  float mask_thr = 0.5f;
};

struct DetectorConfig {
  bool has_backbone = true;  // false: a checkpoint of the neck and heads only (run on given features)
  Config backbone;
  AdapterConfig adapter;
  DetHeadConfig head;
  DetTestConfig test;
  std::vector<std::string> labels;  // class names; empty: COCO's for 80 classes, indices otherwise
};

// Where the network input sits in the original image (mmdet's img_meta).
struct ImageMeta {
  std::int64_t ori_h = 0, ori_w = 0;  // the original image
  std::int64_t img_h = 0, img_w = 0;  // after the keep-ratio resize (boxes are clipped to it)
  std::int64_t pad_h = 0, pad_w = 0;  // after padding to a multiple of 32 (the network input)
  std::array<float, 4> scale_factor{1, 1, 1, 1};  // (w, h, w, h): resized / original
};

struct DetectOptions {
  bool reference = false;  // the reference ops (float64 accumulation, separate BatchNorms)
  bool bf16 = false;       // convolutions and the VRWKV blocks' linears in bfloat16 (fast path)
  bool masks = true;       // run the mask head
};

// Detections on the original image, by descending score.
struct Detections {
  Tensor bboxes;  // F32 [N,4] x1, y1, x2, y2
  Tensor scores;  // F32 [N]
  Tensor labels;  // I64 [N], 0-based class indices
  Tensor masks;   // U8 [N,ori_h,ori_w] (0/1); empty without masks
  std::int64_t proposals = 0;  // the RPN's proposals (RoIs of the box head)
  std::int64_t size() const { return scores.ndim() ? scores.dim(0) : 0; }
};

// Seconds spent in each stage of one detect call.
struct DetStageTimes {
  double backbone = 0, fpn = 0, rpn = 0, roi = 0, mask = 0;
};

class Detector {
 public:
  // An mmdet checkpoint (.pth {'meta','state_dict'}, or a converted
  // .safetensors): widths and classes from the tensors, the backbone's other
  // settings by model size (and `overrides`). Bad files throw Error(Input).
  static Detector load(const std::string& path, const AdapterOverrides& overrides = {}, LoadReport* report = nullptr);
  static Detector from_state_dict(const TensorMap& state_dict, const DetectorConfig& config,
                                  const std::string& source = "state dict");
  static DetectorConfig infer_config(const TensorMap& state_dict, const std::string& source);
  static void apply_overrides(DetectorConfig& config, const AdapterOverrides& overrides, const std::string& source);
  // An official detector with its official initialisation (mask_rcnn_vrwkv_t/s/b/l).
  static Detector preset(const std::string& name, std::uint64_t seed = 0);

  const DetectorConfig& config() const { return config_; }
  // Error(Input) for a negative count or a threshold outside [0, 1].
  void set_test_config(const DetTestConfig& test);
  const Model& backbone() const { return backbone_; }
  const TensorMap& parameters() const { return params_; }  // the adapter's, neck's and heads'
  std::int64_t parameter_count() const;                    // as PyTorch counts them (no BN buffers)
  // 2 × multiply-adds of the convolutions and linears of one call on an h×w
  // input (padded) with `proposals` RoIs and `detections` masks.
  double flops(std::int64_t h, std::int64_t w, std::int64_t proposals = 1000, std::int64_t detections = 100) const;

  // The backbone's four maps, F32 NCHW [1,C,h/4..h/32,·], of F32 [1,3,h,w]
  // (h, w multiples of 32). With `trace`, the adapter's intermediates too.
  std::vector<Tensor> features(const Tensor& input, const DetectOptions& options = {}, const Context& ctx = {},
                               TensorMap* trace = nullptr) const;
  // The neck and heads on the backbone's maps. With `trace`, every
  // intermediate under the goldens' names (fpn.L, rpn.cls.L, rpn.reg.L,
  // proposals, roi_feats, bbox.cls_score, bbox.bbox_pred, mask.rois, mask.logits).
  Detections detect_features(const std::vector<Tensor>& features, const ImageMeta& meta,
                             const DetectOptions& options = {}, const Context& ctx = {}, TensorMap* trace = nullptr,
                             DetStageTimes* times = nullptr) const;
  // The whole detector on the network input (normalised, padded).
  Detections detect(const Tensor& input, const ImageMeta& meta, const DetectOptions& options = {},
                    const Context& ctx = {}, TensorMap* trace = nullptr, DetStageTimes* times = nullptr) const;

 private:
  DetectorConfig config_;
  Model backbone_;
  Tensor storage_;
  TensorMap params_;
  std::shared_ptr<det::State> state_;
};

// Every value in range and consistent; throws Error(Input) naming `source`.
void check_detector_config(const DetectorConfig& config, const std::string& source);
// The settings the tensors do not tell, as JSON (metadata "vrwkv.detector" of a converted file).
std::string detector_settings_to_json(const DetectorConfig& config);
// Whether a checkpoint's tensors hold a detector (an FPN neck and an RPN head).
bool is_detector_state_dict(const TensorMap& state_dict);
bool is_detector_checkpoint(const std::string& path);  // reads the file

std::vector<std::string> detector_preset_names();  // mask_rcnn_vrwkv_t, _s, _b, _l
DetectorConfig detector_preset_config(const std::string& name);
TensorMap detector_initial_parameters(const DetectorConfig& config, std::uint64_t seed);

// COCO's 80 class names (shared/data) and their category ids in annotation files.
const std::vector<std::string>& coco_classes();
const std::vector<std::int64_t>& coco_category_ids();

}  // namespace vrwkv
