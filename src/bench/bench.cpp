#include "vrwkv/bench.hpp"

#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "threads.hpp"
#include "vrwkv/backward.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/model.hpp"
#include "vrwkv/optimizer.hpp"
#include "vrwkv/presets.hpp"
#include "vrwkv/detector.hpp"
#include "vrwkv/segmentor.hpp"
#include "vrwkv/vit.hpp"

namespace vrwkv::bench {

namespace {
using Clock = std::chrono::steady_clock;

// One vector register of floats: 16 with AVX-512, else 8 (AVX2's 256 bits). A
// wider type would be split into pairs of registers and, with the twelve
// chains below, spill out of AVX2's sixteen (measured: 7 GFLOP/s instead of
// the ~60 oneDNN's sgemm reaches on one such core).
#ifdef __AVX512F__
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));

// Twelve independent FMA chains per thread hide the FMA latency.
constexpr int kChains = 12;
double fma_loop(std::int64_t iterations) {
  VecF acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = VecF{} + static_cast<float>(i);
  const VecF m = VecF{} + 0.999999f, k = VecF{} + 1e-7f;
  for (std::int64_t it = 0; it < iterations; ++it)
    for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * m + k;
  float s = 0;
  for (int i = 0; i < kChains; ++i) s += acc[i][0];
  return s;
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * (v.size() - 1);
  const std::size_t lo = static_cast<std::size_t>(pos);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}
}  // namespace

double measure_fma_peak(int threads, double seconds) {
  const std::int64_t iterations = 2000000;
  double best = 0;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  double sum = 0;  // kept, so the loops cannot be optimised away
  while (Clock::now() < end) {
    const auto t0 = Clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sum)
    sum += fma_loop(iterations);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, threads * iterations * double(kChains) * kLanes * 2 / s / 1e9);
  }
  volatile double sink = sum;
  (void)sink;
  return best;
}

Record run(const Spec& spec) {
  const Context ctx{spec.threads};
  Record rec;
  rec.spec = spec;
  Tensor input(DType::F32, {spec.batch, 3, spec.height, spec.width});
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (std::int64_t i = 0; i < input.numel(); ++i) input.f32()[i] = normal(rng);
  std::function<void()> step;
  Model model;
  std::unique_ptr<Gradients> grads;
  std::unique_ptr<Backprop> backprop;
  std::unique_ptr<train::AdamW> adamw;
  Tensor params, targets;
  Vit vit;
  Segmentor segmentor;
  ForwardOptions options;
  if (spec.dtype != "fp32" && spec.dtype != "bf16") input_error("--dtype: expected fp32 or bf16, got '", spec.dtype, "'");
  options.bf16 = spec.dtype == "bf16";
  Detector detector;
  std::vector<DetStageTimes> stage_times;
  const auto det_presets = detector_preset_names();
  const bool det_preset = std::find(det_presets.begin(), det_presets.end(), spec.model) != det_presets.end();
  const auto seg_presets = segmentor_preset_names();
  const bool seg_preset = std::find(seg_presets.begin(), seg_presets.end(), spec.model) != seg_presets.end();
  const auto presets = preset_names();
  const bool preset = std::find(presets.begin(), presets.end(), spec.model) != presets.end();
  const bool file = !spec.model.starts_with("vit_") && !preset && !seg_preset;
  if (det_preset || (file && is_detector_checkpoint(spec.model))) {
    if (spec.train) input_error("--train is available for classification models only");
    if (spec.batch != 1) input_error("--batch: a detector runs one image per call (batch 1)");
    if (spec.height % 32 || spec.width % 32)
      input_error("--res: a detector's input is padded to multiples of 32, got ", spec.height, "x", spec.width);
    detector = det_preset ? Detector::preset(spec.model, 0) : Detector::load(spec.model);
    if (!detector.config().has_backbone) input_error(spec.model, ": the detector holds only the neck and heads");
    // Every call carries the cap of 100 detections through the mask head,
    // as a trained model does on a COCO photo: the score threshold is 0.
    DetTestConfig test = detector.config().test;
    test.score_thr = 0;
    detector.set_test_config(test);
    ImageMeta meta{spec.height, spec.width, spec.height, spec.width, spec.height, spec.width, {1, 1, 1, 1}};
    DetectOptions o;
    o.bf16 = options.bf16;
    const Detections d = detector.detect(input, meta, o, ctx);
    rec.flops_per_image = detector.flops(spec.height, spec.width, d.proposals, d.size());
    rec.parameters = detector.parameter_count();
    step = [&, meta, o] {
      DetStageTimes t;
      detector.detect(input, meta, o, ctx, nullptr, &t);
      stage_times.push_back(t);
    };
  } else if (seg_preset || (file && is_segmentor_checkpoint(spec.model))) {
    if (spec.train) input_error("--train is available for classification models only");
    segmentor = seg_preset ? Segmentor::preset(spec.model, 0) : Segmentor::load(spec.model);
    SegmentOptions so;
    if (spec.mode != "whole" && spec.mode != "slide")
      input_error("--mode: expected whole or slide, got '", spec.mode, "'");
    so.mode = spec.mode == "whole" ? SegmentOptions::Mode::Whole : SegmentOptions::Mode::Slide;
    so.bf16 = options.bf16;
    rec.flops_per_image = 0;
    for (const auto& [y1, y2, x1, x2] : so.mode == SegmentOptions::Mode::Whole
                                            ? std::vector<std::array<std::int64_t, 4>>{{0, spec.height, 0, spec.width}}
                                            : Segmentor::slide_windows(spec.height, spec.width, so))
      rec.flops_per_image += segmentor.flops(y2 - y1, x2 - x1);
    rec.parameters = segmentor.parameter_count();
    step = [&, so] { segmentor.infer(input, so, ctx); };
  } else if (spec.model.starts_with("vit_")) {
    if (options.bf16) input_error("--dtype bf16 is not available for the ViT baseline");
    vit = Vit::preset(spec.model, 0);
    rec.flops_per_image = vit.flops(spec.height, spec.width);
    rec.parameters = vit.parameter_count();
    if (spec.train) input_error("--train is available for VRWKV models only");
    step = [&] { vit.forward(input, ctx); };
  } else {
    // Training measures the paper semantics of a VRWKV block; VRWKV6 has only Bi-WKV6.
    ConfigOverrides o;
    o.wkv = WkvSemantics::Paper;
    if (preset) {
      Config c = preset_config(spec.model);
      if (spec.train && c.arch.block == BlockKind::Vrwkv) apply_overrides(c, o, spec.model);
      model = Model::from_state_dict(initial_parameters(c.arch, 0), c, spec.model);
    } else {
      model = Model::load(spec.model);
      if (spec.train && model.architecture().block == BlockKind::Vrwkv) model = Model::load(spec.model, o);
    }
    rec.flops_per_image = 2 * model.flops(spec.height, spec.width);
    rec.parameters = model.parameter_count();
    if (spec.train) {
      if (options.bf16) input_error("--train runs in fp32 only");
      // One optimisation step: forward, loss, backward, clipping, AdamW. FLOPs
      // counted as 3× the forward's (the backward computes two products per forward one).
      rec.flops_per_image *= 3;
      grads = std::make_unique<Gradients>(model);
      backprop = std::make_unique<Backprop>(model);
      adamw = std::make_unique<train::AdamW>(model.architecture(), train::AdamWOptions{});
      params = model.parameter_storage();
      Tensor labels(DType::I64, {spec.batch});
      for (std::int64_t b = 0; b < spec.batch; ++b) labels.data<std::int64_t>()[b] = b % model.architecture().num_classes;
      targets = one_hot(labels, model.architecture().num_classes);
      step = [&] {
        grads->zero();
        BackwardOptions bo;
        bo.recompute = spec.recompute;
        backprop->run(input, targets, *grads, bo, ctx);
        const ThreadScope scope(ctx);
        train::clip_grad_norm(grads->storage.f32(), grads->storage.numel(), 5.0);
        adamw->step(params.f32(), grads->storage.f32(), 1e-4);
      };
    } else {
      step = [&] { model.forward(input, options, ctx); };
    }
  }
  for (int i = 0; i < spec.warmup; ++i) step();
  std::vector<double> ms;
  for (int i = 0; i < spec.reps; ++i) {
    const auto t0 = Clock::now();
    step();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  rec.latency_ms_median = percentile(ms, 0.5);
  if (!stage_times.empty()) {
    const auto median = [&](double DetStageTimes::*field) {
      std::vector<double> v;
      for (std::size_t i = spec.warmup; i < stage_times.size(); ++i) v.push_back(1000 * stage_times[i].*field);
      return percentile(v, 0.5);
    };
    rec.stages = {median(&DetStageTimes::backbone), median(&DetStageTimes::fpn), median(&DetStageTimes::rpn),
                  median(&DetStageTimes::roi), median(&DetStageTimes::mask)};
  }
  rec.latency_ms_p90 = percentile(ms, 0.9);
  rec.images_per_second = spec.batch * 1000.0 / rec.latency_ms_median;
  rec.gflops_per_second = rec.flops_per_image * rec.images_per_second / 1e9;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  rec.peak_rss_mib = usage.ru_maxrss / 1024.0;
  if (backprop) rec.activation_mib = backprop->activation_bytes() / 1048576.0;
  return rec;
}

std::string to_json(const Record& r) {
  nlohmann::json j{{"model", r.spec.model},
                        {"batch", r.spec.batch},
                        {"height", r.spec.height},
                        {"width", r.spec.width},
                        {"threads", r.spec.threads},
                        {"dtype", r.spec.dtype},
                        {"train", r.spec.train},
                        {"recompute", r.spec.recompute},
                        {"mode", r.spec.mode},
                        {"reps", r.spec.reps},
                        {"parameters", r.parameters},
                        {"flops_per_image", r.flops_per_image},
                        {"images_per_second", r.images_per_second},
                        {"latency_ms_median", r.latency_ms_median},
                        {"latency_ms_p90", r.latency_ms_p90},
                        {"gflops_per_second", r.gflops_per_second},
                        {"peak_rss_mib", r.peak_rss_mib},
                        {"activation_mib", r.activation_mib}};
  if (r.stages.backbone > 0)
    j["stage_ms"] = {{"backbone", r.stages.backbone}, {"fpn", r.stages.fpn}, {"rpn", r.stages.rpn},
                     {"roi", r.stages.roi}, {"mask", r.stages.mask}};
  return j.dump();
}

Record from_json(const std::string& line) {
  const auto j = nlohmann::json::parse(line);
  Record r;
  r.spec.model = j.at("model");
  r.spec.batch = j.at("batch");
  r.spec.height = j.at("height");
  r.spec.width = j.at("width");
  r.spec.threads = j.at("threads");
  r.spec.dtype = j.at("dtype");
  r.spec.train = j.value("train", false);
  r.spec.recompute = j.value("recompute", false);
  r.spec.mode = j.value("mode", "whole");
  r.activation_mib = j.value("activation_mib", 0.0);
  if (j.contains("stage_ms")) {
    const auto& s = j.at("stage_ms");
    r.stages = {s.at("backbone"), s.at("fpn"), s.at("rpn"), s.at("roi"), s.at("mask")};
  }
  r.spec.reps = j.at("reps");
  r.parameters = j.at("parameters");
  r.flops_per_image = j.at("flops_per_image");
  r.images_per_second = j.at("images_per_second");
  r.latency_ms_median = j.at("latency_ms_median");
  r.latency_ms_p90 = j.at("latency_ms_p90");
  r.gflops_per_second = j.at("gflops_per_second");
  r.peak_rss_mib = j.at("peak_rss_mib");
  return r;
}

}  // namespace vrwkv::bench
