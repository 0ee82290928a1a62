// Throughput, latency and memory measurements behind `vrwkv bench`
// (ENGINEERING.md "Tests and measurements"); the vrwkv_bench library. The
// figure is in vrwkv/plot.hpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vrwkv::bench {

struct Spec {
  std::string model;  // a model file, a VRWKV preset (vrwkv_t...), a segmentor preset (upernet_vrwkv_t...),
                      // a detector preset (mask_rcnn_vrwkv_t...) or a ViT preset (vit_t, vit_s)
  std::int64_t batch = 1, height = 224, width = 224;
  int threads = 1;
  std::string dtype = "fp32";
  int warmup = 1, reps = 5;
  bool train = false;      // time a training step (forward, backward, AdamW) instead of a forward
  bool recompute = false;  // train: keep only block inputs, recompute each block in the backward
  std::string mode = "whole";  // segmentors: "whole" or "slide" inference (512² crops, stride 341)
};

// A detector's time per stage, medians over the timed calls (ms).
struct StageMs {
  double backbone = 0, fpn = 0, rpn = 0, roi = 0, mask = 0;
};

struct Record {
  Spec spec;
  double flops_per_image = 0;  // 2 × multiply-adds
  double images_per_second = 0, latency_ms_median = 0, latency_ms_p90 = 0, gflops_per_second = 0;
  double peak_rss_mib = 0;
  std::int64_t parameters = 0;
  double activation_mib = 0;  // train: activations kept for the backward
  StageMs stages;             // detectors
};

// fp32 FMA throughput of `threads` threads, GFLOP/s (2 FLOPs per FMA lane).
double measure_fma_peak(int threads, double seconds = 0.3);

// Builds the model and measures it in this process (peak RSS is the
// process's, so run one spec per process).
Record run(const Spec& spec);

std::string to_json(const Record& r);
Record from_json(const std::string& line);

}  // namespace vrwkv::bench
