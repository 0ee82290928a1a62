#include "dense_options.hpp"

#include <malloc.h>

#include <cstdio>
#include <map>
#include <sstream>

#include "vrwkv/error.hpp"

namespace vrwkv::cli {

namespace {
// "0-2,3-5,6-8,9-11": inclusive block ranges.
std::vector<BlockRange> parse_ranges(const std::string& text) {
  std::vector<BlockRange> out;
  std::istringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    long long a = 0, b = 0;
    char dash = 0, extra = 0;
    const int n = std::sscanf(item.c_str(), "%lld%c%lld%c", &a, &dash, &b, &extra);
    if (n == 1) b = a;
    else if (n != 3 || dash != '-')
      input_error("--interaction-indexes: expected inclusive block ranges such as 0-2,3-5,6-8,9-11, got '", text, "'");
    out.push_back({a, b});
  }
  return out;
}
}  // namespace

void DenseOptions::add_adapter_to(CLI::App& app) {
  app.add_option("--interaction-indexes", interactions,
                 "Blocks of each interaction, inclusive ranges, e.g. 0-2,3-5,6-8,9-11 (default: the official "
                 "config of the depth)");
  app.add_option("--deform-heads", deform_heads, "Deformable-attention heads (default: the official config)")
      ->check(CLI::Range(1, 1024));
  app.add_option("--deform-points", deform_points, "Deformable-attention points per level (default 4)")
      ->check(CLI::Range(1, 1024));
}

void DenseOptions::add_to(CLI::App& app) {
  add_adapter_to(app);
  app.add_option("--mode", mode, "Inference: whole | slide (default: the checkpoint's, slide for ADE20K)")
      ->check(CLI::IsMember({"whole", "slide"}));
  app.add_option("--crop", crop, "Slide crop HxW (default 512x512)");
  app.add_option("--stride", stride, "Slide stride HxW (default 341x341)");
  app.add_flag("--flip", flip, "Average the softmax with the horizontally flipped image's");
}

AdapterOverrides DenseOptions::overrides(const ModelOptions& m) const {
  AdapterOverrides o;
  const ConfigOverrides c = m.overrides();
  o.post_norm = c.post_norm;
  o.wkv = c.wkv;
  o.wkv_chunks = c.wkv_chunks;
  if (!interactions.empty()) o.interactions = parse_ranges(interactions);
  if (deform_heads) o.deform_heads = deform_heads;
  if (deform_points) o.deform_points = deform_points;
  return o;
}

SegmentOptions DenseOptions::inference(const SegmentorConfig& config, const ModelOptions& model) const {
  SegmentOptions o = config.test;
  if (!mode.empty()) o.mode = mode == "whole" ? SegmentOptions::Mode::Whole : SegmentOptions::Mode::Slide;
  if (!crop.empty()) std::tie(o.crop_h, o.crop_w) = parse_resolution(crop, "--crop");
  if (!stride.empty()) std::tie(o.stride_h, o.stride_w) = parse_resolution(stride, "--stride");
  if ((!crop.empty() || !stride.empty()) && o.mode == SegmentOptions::Mode::Whole)
    input_error("--crop and --stride are for slide inference, not --mode whole");
  if (o.crop_h % 32 || o.crop_w % 32)
    input_error("--crop: the segmentor needs multiples of 32, got ", o.crop_h, "x", o.crop_w);
  if (o.stride_h > o.crop_h || o.stride_w > o.crop_w)
    input_error("--stride ", o.stride_h, "x", o.stride_w, " is larger than the crop ", o.crop_h, "x", o.crop_w,
                ": pixels would be left out");
  o.flip = flip;
  o.bf16 = model.dtype == "bf16";
  return o;
}

void keep_freed_memory() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

Segmentor load_segmentor(const ModelOptions& m, const DenseOptions& s, LoadReport* report) {
  const std::string path = m.path();
  bool preset = false;
  for (const std::string& name : segmentor_preset_names()) preset = preset || path == name;
  Segmentor seg = preset ? Segmentor::preset(path) : Segmentor::load(path, s.overrides(m), report);
  keep_freed_memory();
  return seg;
}

namespace {
// The kind of model --model names: a preset's, or the checkpoint's (read once per path).
CheckpointKind kind_of(const ModelOptions& m) {
  const std::string path = m.path();
  for (const std::string& name : segmentor_preset_names())
    if (path == name) return CheckpointKind::Segmentor;
  for (const std::string& name : detector_preset_names())
    if (path == name) return CheckpointKind::Detector;
  static std::map<std::string, CheckpointKind> known;
  const auto it = known.find(path);
  if (it != known.end()) return it->second;
  return known[path] = checkpoint_kind(path);
}
}  // namespace

bool names_segmentor(const ModelOptions& m) { return kind_of(m) == CheckpointKind::Segmentor; }
bool names_detector(const ModelOptions& m) { return kind_of(m) == CheckpointKind::Detector; }

Detector load_detector(const ModelOptions& m, const DenseOptions& d, LoadReport* report) {
  const std::string path = m.path();
  bool preset = false;
  for (const std::string& name : detector_preset_names()) preset = preset || path == name;
  Detector det = preset ? Detector::preset(path) : Detector::load(path, d.overrides(m), report);
  keep_freed_memory();
  return det;
}

std::vector<std::string> detector_classes(const DetectorConfig& c) {
  if (!c.labels.empty()) return c.labels;
  if (c.head.num_classes == 80) return coco_classes();
  std::vector<std::string> out;
  for (std::int64_t k = 0; k < c.head.num_classes; ++k) out.push_back("class " + std::to_string(k));
  return out;
}

std::vector<std::string> segmentor_classes(const SegmentorConfig& c) {
  if (!c.labels.empty()) return c.labels;
  if (c.head.num_classes == 150) return ade20k_classes();
  std::vector<std::string> out;
  for (std::int64_t k = 0; k < c.head.num_classes; ++k) out.push_back("class " + std::to_string(k));
  return out;
}

}  // namespace vrwkv::cli
