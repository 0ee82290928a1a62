// vrwkv bench: images/s, latency, GFLOP/s, share of the measured FMA peak and
// peak memory per model, batch and resolution. Each configuration runs in a
// fresh worker process (this program with --worker), so peak memory is its own.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "commands.hpp"
#include "common.hpp"
#include "dense_options.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/bench.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/plot.hpp"
#include "vrwkv/presets.hpp"
#include "vrwkv/segmentor.hpp"

extern char** environ;

namespace vrwkv::cli {

namespace {

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// Runs this program as a worker for one spec and returns its JSON line.
std::string run_worker(const bench::Spec& s) {
  std::vector<std::string> args = {"/proc/self/exe", "bench", "--worker", "--model", s.model,
                                   "--batch", std::to_string(s.batch), "--res",
                                   std::to_string(s.height) + "x" + std::to_string(s.width), "--threads",
                                   std::to_string(s.threads), "--dtype", s.dtype, "--warmup", std::to_string(s.warmup),
                                   "--reps", std::to_string(s.reps)};
  args.insert(args.end(), {"--mode", s.mode});
  if (s.train) args.push_back("--train");
  if (s.recompute) args.push_back("--recompute");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int fds[2], errs[2];
  if (pipe(fds) != 0 || pipe(errs) != 0) runtime_error("bench: cannot create a pipe");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, errs[1], 2);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  posix_spawn_file_actions_addclose(&actions, errs[0]);
  pid_t pid;
  const int rc = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  close(errs[1]);
  const auto drain = [](int fd) {
    std::string text;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) text.append(buf, n);
    close(fd);
    return text;
  };
  if (rc != 0) {
    close(fds[0]);
    close(errs[0]);
    runtime_error("bench: cannot start a worker process");
  }
  const std::string out = drain(fds[0]);  // one JSON line; the worker writes stderr only when it fails
  std::string err = drain(errs[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    // Pass the worker's own one-line message on ("vrwkv: " is added again by main).
    if (err.starts_with("vrwkv: ")) err.erase(0, 7);
    while (!err.empty() && err.back() == '\n') err.pop_back();
    throw Error(WIFEXITED(status) && WEXITSTATUS(status) == 2 ? Error::Kind::Input : Error::Kind::Runtime,
                err.empty() ? "bench: the measurement of " + s.model + " failed" : err);
  }
  return out;
}

}  // namespace

void add_bench(CLI::App& app) {
  struct Options {
    std::string models = "vrwkv_t", batches = "1", resolutions = "224", dtype = "fp32", json, plot, mode = "whole";
    int threads = 0, warmup = 1, reps = 5;
    bool worker = false, train = false, recompute = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "Measure throughput, latency and memory.\n"
      "FLOPs = 2 × multiply-adds of every linear layer, convolution and (ViT) attention product, plus the\n"
      "paper's 29·T·C per VRWKV block for Bi-WKV and element-wise work (VRWKV6: + 4·N·T·C for the Bi-WKV6\n"
      "scans, N = 64 channels per head); LayerNorm 2·numel, pooling numel.\n"
      "Peak = the fp32 FMA throughput of the same threads, measured at the start of the run.");
  cmd->add_option("--model,-m", opt->models,
                  "Comma-separated model files or presets: vrwkv_t/s/b/l, vrwkv6_t/s/b, vit_t, vit_s, upernet_vrwkv_t/s/b/l (segmentors, 150 classes), mask_rcnn_vrwkv_t/s/b/l (detectors, 80 classes, batch 1, "
                  "score threshold 0 so that 100 detections reach the masks); presets: official initialisation, seed 0");
  cmd->add_option("--mode", opt->mode,
                  "Segmentors: whole (one call on the whole image) or slide (512x512 crops, stride 341)")
      ->check(CLI::IsMember({"whole", "slide"}));
  cmd->add_option("--batch,-b", opt->batches, "Comma-separated batch sizes, e.g. 1,8");
  cmd->add_option("--res,-r", opt->resolutions, "Comma-separated resolutions: N (square) or HxW, e.g. 224,1024");
  cmd->add_option("--threads,-t", opt->threads, "Threads (default: all cores)")->check(CLI::Range(1, 1024));
  cmd->add_option("--dtype", opt->dtype,
                  "Comma-separated: fp32, bf16 (linear layers in bfloat16, float32 accumulation); with both, the "
                  "bf16/fp32 throughput ratio of each configuration is printed");
  cmd->add_option("--warmup", opt->warmup, "Untimed runs before measuring")->check(CLI::Range(0, 1000));
  cmd->add_option("--reps", opt->reps, "Timed runs (median and p90 are reported)")->check(CLI::Range(1, 100000));
  cmd->add_flag("--train", opt->train,
                "Time one training step (forward, label-smoothed loss, backward, clipping, AdamW; paper Bi-WKV) "
                "instead of a forward; FLOPs = 3× the forward's; reports the activation memory kept");
  cmd->add_flag("--recompute", opt->recompute,
                "With --train: keep only block inputs and recompute each block in the backward (less memory)");
  cmd->add_option("--json", opt->json, "Write the records as a JSON list");
  cmd->add_option("--plot", opt->plot, "Draw throughput and memory against resolution (.png or .svg)");
  cmd->add_flag("--worker", opt->worker, "(internal) measure one configuration and print it as JSON")
      ->group("");
  cmd->callback([opt, cmd] {
    const int threads = Context{opt->threads}.resolved_threads();
    if (cmd->count("--plot") && !opt->plot.ends_with(".png") && !opt->plot.ends_with(".svg"))
      input_error("--plot: expected a .png or .svg file name, got '", opt->plot, "'");
    // Outputs are checked before anything is measured (the table itself goes to standard output).
    if (cmd->count("--json")) check_output_path(opt->json, "--json", /*stdout_ok=*/false);
    if (cmd->count("--plot")) check_output_path(opt->plot, "--plot", /*stdout_ok=*/false);
    std::vector<bench::Spec> specs;
    const std::vector<std::string> dtypes = split(opt->dtype);
    for (const std::string& d : dtypes) {
      if (d != "fp32" && d != "bf16") input_error("--dtype: expected fp32 or bf16, got '", d, "'");
      if (d == "bf16" && opt->train) input_error("--dtype bf16: --train runs in fp32 only");
      for (const std::string& m : split(opt->models))
        if (d == "bf16" && (m == "vit_t" || m == "vit_s"))
          input_error("--dtype bf16 is not available for the ViT baseline (", m, ")");
    }
    for (const std::string& m : split(opt->models))
      for (const std::string& b : split(opt->batches))
        for (const std::string& r : split(opt->resolutions))
          for (const std::string& d : dtypes) {
            bench::Spec s;
            s.model = m;
            s.batch = parse_index_list(b, "--batch").at(0);
            if (s.batch < 1) input_error("--batch: expected sizes of 1 or more, got '", b, "'");
            std::tie(s.height, s.width) = parse_resolution(r, "--res");
            s.threads = threads, s.dtype = d, s.warmup = opt->warmup, s.reps = opt->reps;
            s.train = opt->train, s.recompute = opt->recompute, s.mode = opt->mode;
            specs.push_back(s);
          }
    if (specs.empty()) input_error("bench: nothing to measure");
    if (opt->recompute && !opt->train) input_error("--recompute: only with --train");
    for (const std::string& m : split(opt->models)) {
      auto presets = preset_names();
      for (const std::string& p : segmentor_preset_names()) presets.push_back(p);
      for (const std::string& p : detector_preset_names()) presets.push_back(p);
      const bool preset = m == "vit_t" || m == "vit_s" || std::find(presets.begin(), presets.end(), m) != presets.end();
      if (!preset && access(m.c_str(), R_OK) != 0)
        input_error("--model: '", m, "' is neither a preset (vrwkv_t/s/b/l, vrwkv6_t/s/b, vit_t, vit_s, "
                    "upernet_vrwkv_t/s/b/l, mask_rcnn_vrwkv_t/s/b/l) nor a readable file");
    }
    if (opt->worker) {
      // A segmentor keeps freed memory for reuse, as `vrwkv segment` does (dense_options.hpp).
      std::vector<std::string> dense = segmentor_preset_names();
      for (const std::string& p : detector_preset_names()) dense.push_back(p);
      if (std::find(dense.begin(), dense.end(), specs.at(0).model) != dense.end()) keep_freed_memory();
      std::printf("%s\n", bench::to_json(bench::run(specs.at(0))).c_str());
      return;
    }
    const double peak = bench::measure_fma_peak(threads);
    std::printf("fp32 FMA peak, %d thread%s: %.1f GFLOP/s (measured now)\n\n", threads, threads > 1 ? "s" : "", peak);
    std::printf("%-15s %5s %11s %4s %4s %10s %10s %9s %9s %6s %9s%s\n", "model", "batch", "resolution", "thr", "type",
                "images/s", "lat ms", "p90 ms", "GFLOP/s", "%peak", "RSS MiB", opt->train ? "  act MiB" : "");
    std::vector<bench::Record> records;
    for (const bench::Spec& s : specs) {
      const bench::Record r = bench::from_json(run_worker(s));
      std::printf("%-15s %5lld %5lldx%-5lld %4d %4s %10.2f %10.2f %9.2f %9.1f %5.1f%% %9.1f",
                  s.model.substr(s.model.rfind('/') + 1).substr(0, 15).c_str(), (long long)s.batch,
                  (long long)s.height, (long long)s.width, s.threads, s.dtype.c_str(), r.images_per_second,
                  r.latency_ms_median, r.latency_ms_p90, r.gflops_per_second, 100 * r.gflops_per_second / peak,
                  r.peak_rss_mib);
      if (s.train) std::printf(" %9.1f", r.activation_mib);
      std::printf("\n");
      if (r.stages.backbone > 0)
        std::printf("  stages ms: backbone %.1f, FPN %.1f, RPN + NMS %.1f, RoI heads + NMS %.1f, masks %.1f\n",
                    r.stages.backbone, r.stages.fpn, r.stages.rpn, r.stages.roi, r.stages.mask);
      std::fflush(stdout);
      records.push_back(r);
    }
    // bf16 against fp32 for each configuration measured in both.
    for (std::size_t i = 0; i < specs.size(); ++i)
      for (std::size_t j = 0; j < specs.size(); ++j) {
        const bench::Spec &a = specs[i], &b = specs[j];
        if (a.dtype == "bf16" && b.dtype == "fp32" && a.model == b.model && a.batch == b.batch &&
            a.height == b.height && a.width == b.width)
          std::printf("bf16/fp32 %s batch %lld %lldx%lld: %.2fx\n", a.model.c_str(), (long long)a.batch,
                      (long long)a.height, (long long)a.width,
                      records[i].images_per_second / records[j].images_per_second);
      }
    if (!opt->json.empty()) {
      std::string text = "[\n";
      for (std::size_t i = 0; i < records.size(); ++i) {
        std::string line = bench::to_json(records[i]);
        line.insert(line.size() - 1, ",\"peak_gflops\":" + std::to_string(peak));
        text += "  " + line + (i + 1 < records.size() ? ",\n" : "\n");
      }
      text += "]\n";
      AtomicFile out(opt->json);
      out.write(text.data(), text.size());
      out.commit();
    }
    if (!opt->plot.empty()) bench::plot(records, peak, opt->plot);
  });
}

}  // namespace vrwkv::cli
