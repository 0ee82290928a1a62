// The options of the commands that run a dense model, a segmentor (segment,
// run, eval --task seg) or a detector (detect, run, eval --task det): the
// adapter's settings the tensors do not tell, the segmentors' inference mode,
// and how the models are loaded from them.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "common.hpp"
#include "vrwkv/detector.hpp"
#include "vrwkv/segmentor.hpp"

namespace vrwkv::cli {

struct DenseOptions {
  std::string interactions, mode, crop, stride;
  std::int64_t deform_heads = 0, deform_points = 0;
  bool flip = false;

  // --interaction-indexes, --deform-heads, --deform-points; then the
  // segmentors' --mode, --crop, --stride, --flip.
  void add_adapter_to(CLI::App& app);
  void add_to(CLI::App& app);
  // With --post-norm, --wkv, --wkv-chunks of the model options.
  AdapterOverrides overrides(const ModelOptions& model) const;
  // The checkpoint's test_cfg with these options (and --dtype) over it; checked (crop, stride).
  SegmentOptions inference(const SegmentorConfig& config, const ModelOptions& model) const;
};

// Loads the segmentor, then keeps the process's freed memory for reuse: its
// maps are tens of MiB each, allocated and freed on every call, and glibc
// would serve them with mmap and unmap them on free, so that every call
// page-faults them in again (measured: half the page faults of a 512² call
// gone). Set after loading, so the reading of a checkpoint keeps no copy.
Segmentor load_segmentor(const ModelOptions& model, const DenseOptions& seg, LoadReport* report = nullptr);
void keep_freed_memory();

// Whether --model names a segmentor / a detector (a preset name or such a checkpoint).
bool names_segmentor(const ModelOptions& model);
bool names_detector(const ModelOptions& model);

// Loads the detector (a preset or a checkpoint), then keeps freed memory as load_segmentor.
Detector load_detector(const ModelOptions& model, const DenseOptions& dense, LoadReport* report = nullptr);
// The class names of a detector: its labels, COCO's for 80 classes, else indices.
std::vector<std::string> detector_classes(const DetectorConfig& config);

// The class names of a segmentor: its labels, ADE20K's for 150 classes, else indices.
std::vector<std::string> segmentor_classes(const SegmentorConfig& config);

}  // namespace vrwkv::cli
