// The options of the commands that run a segmentor (segment, run, eval
// --task seg): the settings the tensors do not tell, the inference mode, and
// how a segmentor is loaded from them.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "common.hpp"
#include "vrwkv/segmentor.hpp"

namespace vrwkv::cli {

struct SegOptions {
  std::string interactions, mode, crop, stride;
  std::int64_t deform_heads = 0, deform_points = 0;
  bool flip = false;

  // --interaction-indexes, --deform-heads, --deform-points, --mode, --crop, --stride, --flip.
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
Segmentor load_segmentor(const ModelOptions& model, const SegOptions& seg, LoadReport* report = nullptr);
void keep_freed_memory();

// Whether --model names a segmentor (a preset name or a segmentor checkpoint).
bool names_segmentor(const ModelOptions& model);

// The class names of a segmentor: its labels, ADE20K's for 150 classes, else indices.
std::vector<std::string> segmentor_classes(const SegmentorConfig& config);

}  // namespace vrwkv::cli
