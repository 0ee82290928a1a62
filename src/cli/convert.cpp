// vrwkv convert: any loadable checkpoint to the native safetensors format,
// with the configuration in its metadata.
#include <cstdio>

#include "commands.hpp"
#include "common.hpp"
#include "vrwkv/safetensors.hpp"

namespace vrwkv::cli {

void add_convert(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string output;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("convert", "Convert a checkpoint to vrwkv safetensors (config in metadata)");
  opt->model.add_to(*cmd, /*model_optional=*/true);
  cmd->add_option("input", opt->model.model, "Checkpoint (.pth or .safetensors)")->required();
  cmd->add_option("output", opt->output, "Output .safetensors")->required();
  cmd->callback([opt] {
    LoadReport report;
    const Model model = opt->model.load(&report);
    write_safetensors(opt->output, model.parameters(), {{"vrwkv.config", config_to_json(model.config())},
                                                        {"format", "vrwkv"}});
    std::fprintf(stderr, "%s: %s, %zu tensors, %lld parameters -> %s\n", opt->model.model.c_str(),
                 report.layout.c_str(), model.parameters().size(),
                 static_cast<long long>(model.parameter_count()), opt->output.c_str());
    if (!report.ignored.empty()) {
      std::fprintf(stderr, "ignored %zu entries not part of the model:", report.ignored.size());
      for (const std::string& k : report.ignored) std::fprintf(stderr, " %s", k.c_str());
      std::fprintf(stderr, "\n");
    }
  });
}

}  // namespace vrwkv::cli
