// vrwkv convert: any loadable checkpoint to the native safetensors format,
// with the configuration in its metadata.
#include <cstdio>

#include "commands.hpp"
#include "common.hpp"
#include "listing.hpp"
#include "dense_options.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/safetensors.hpp"

namespace vrwkv::cli {

void add_convert(CLI::App& app) {
  struct Options {
    ModelOptions model;
    DenseOptions seg;
    std::string output;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("convert", "Convert a checkpoint to vrwkv safetensors (config in metadata)");
  opt->model.add_to(*cmd, /*model_optional=*/true);
  // Shared model options that converting does not use are refused, not ignored: the input is the first
  // argument, the tensors are written as they are (F32), nothing runs.
  for (const char* unused : {"--model", "--dtype", "--threads"}) cmd->remove_option(cmd->get_option(unused));
  cmd->add_option("input", opt->model.model, "Checkpoint (.pth or .safetensors)")->required();
  cmd->add_option("output", opt->output, "Output .safetensors")->required();
  opt->seg.add_to(*cmd);
  cmd->callback([opt] {
    check_output_path(opt->output, "output");
    check_not_an_input(opt->output, {opt->model.model}, "output");
    LoadReport report;
    if (names_detector(opt->model)) {
      const Detector det = load_detector(opt->model, opt->seg, &report);
      TensorMap all = det.parameters();
      if (det.config().has_backbone)
        for (const auto& [k, t] : det.backbone().parameters()) all.emplace(k, t);
      write_safetensors(opt->output, all, {{"vrwkv.detector", detector_settings_to_json(det.config())},
                                           {"format", "vrwkv"}});
      std::fprintf(stderr, "%s: %s, %zu tensors, %lld parameters -> %s\n", opt->model.model.c_str(),
                   report.layout.empty() ? "preset" : report.layout.c_str(), all.size(),
                   static_cast<long long>(det.parameter_count()), opt->output.c_str());
      return;
    }
    if (names_segmentor(opt->model)) {
      const Segmentor seg = load_segmentor(opt->model, opt->seg, &report);
      TensorMap all = seg.parameters();
      for (const auto& [k, t] : seg.backbone().parameters()) all.emplace(k, t);
      write_safetensors(opt->output, all, {{"vrwkv.segmentor", segmentor_settings_to_json(seg.config())},
                                           {"format", "vrwkv"}});
      std::fprintf(stderr, "%s: %s, %zu tensors, %lld parameters -> %s\n", opt->model.model.c_str(),
                   report.layout.empty() ? "preset" : report.layout.c_str(), all.size(),
                   static_cast<long long>(seg.parameter_count()), opt->output.c_str());
      return;
    }
    const Model model = opt->model.load(&report);
    write_safetensors(opt->output, model.parameters(), {{"vrwkv.config", config_to_json(model.config())},
                                                        {"format", "vrwkv"}});
    std::fprintf(stderr, "%s: %s, %zu tensors, %lld parameters -> %s\n", opt->model.model.c_str(),
                 report.layout.c_str(), model.parameters().size(),
                 static_cast<long long>(model.parameter_count()), opt->output.c_str());
    if (!report.ignored.empty())
      std::fprintf(stderr, "ignored %zu entries not part of the model: %s\n", report.ignored.size(),
                   list_some(report.ignored).c_str());
  });
}

}  // namespace vrwkv::cli
