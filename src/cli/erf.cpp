// vrwkv erf: the effective receptive field of one or more classification
// models (Luo et al. 2016, as the paper's figure), averaged over images of a
// dataset, drawn side by side; --json writes the raw maps.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "validators.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/backward.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/plot.hpp"
#include "vrwkv/train.hpp"

namespace vrwkv::cli {

void add_erf(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::vector<std::string> more;
    std::string data, output, json, names;
    std::int64_t images = 100, batch = 16;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "erf", "Effective receptive field: mean |d (central output, summed over channels) / d input| over images");
  opt->model.add_to(*cmd, true);
  cmd->add_option("models", opt->more, "More models, drawn beside the first (the model flags apply to all)");
  cmd->add_option("--data,-d", opt->data, "Dataset: fashion-mnist:test, fashion-mnist:train, imagefolder:DIR")
      ->required();
  cmd->add_option("-n,--images", opt->images, "Images to average over (the first N of the dataset)")
      ->check(validators::integer_between(1, 1 << 24));
  cmd->add_option("--batch", opt->batch, "Images per backward pass")->check(validators::integer_between(1, 4096));
  cmd->add_option("--output,-o", opt->output, "Figure, .png or .svg")->required();
  cmd->add_option("--json", opt->json, "Also write the maps as JSON: {models: [{name, model, images, height, width, "
                  "map (rows)}]}");
  cmd->add_option("--names", opt->names, "Comma-separated panel titles (default: the model file names)");
  cmd->callback([opt] {
    if (!opt->output.ends_with(".png") && !opt->output.ends_with(".svg"))
      input_error("--output: expected a .png or .svg file name, got '", opt->output, "'");
    // --model and the positional models; the default model only when neither is given.
    std::vector<std::string> paths;
    if (!opt->model.model.empty() || opt->more.empty()) paths.push_back(opt->model.path());
    paths.insert(paths.end(), opt->more.begin(), opt->more.end());
    check_output_path(opt->output, "--output", /*stdout_ok=*/false);
    check_not_an_input(opt->output, paths, "--output");
    if (!opt->json.empty()) {
      check_output_path(opt->json, "--json", /*stdout_ok=*/false);
      check_not_an_input(opt->json, paths, "--json");
      if (opt->json == opt->output) input_error("--json: the same file as --output ('", opt->json, "')");
    }
    std::vector<std::string> names;
    if (!opt->names.empty()) {
      std::istringstream in(opt->names);
      for (std::string name; std::getline(in, name, ',');) names.push_back(name);
      if (names.size() != paths.size())
        input_error("--names: ", names.size(), " name(s) for ", paths.size(), " model(s)");
    } else {
      for (const std::string& p : paths) names.push_back(std::filesystem::path(p).stem().string());
    }
    // Every model loaded and checked before the long part.
    std::vector<Model> models;
    const ConfigOverrides overrides = opt->model.overrides();
    for (const std::string& p : paths) {
      models.push_back(Model::load(p, overrides));
      if (models.back().architecture().in_channels != models.front().architecture().in_channels)
        input_error(p, ": has ", models.back().architecture().in_channels, " input channels, ", paths[0], " has ",
                    models.front().architecture().in_channels, " (the figure compares one dataset's images)");
    }
    const auto data = train::open_dataset(opt->data);
    const std::int64_t n = std::min(opt->images, data->size());
    if (n == 0) input_error(opt->data, ": no images");
    const bool tty = isatty(STDERR_FILENO);
    const Context ctx = opt->model.context();
    std::vector<std::pair<std::string, Tensor>> maps;
    for (std::size_t m = 0; m < models.size(); ++m) {
      Tensor sum;
      for (std::int64_t start = 0; start < n; start += opt->batch) {
        const std::int64_t count = std::min(opt->batch, n - start);
        const Tensor map = receptive_field(models[m], train::load_inputs(models[m], *data, start, count, ctx), ctx);
        if (sum.numel() == 0) sum = map.clone();
        else
          for (std::int64_t i = 0; i < sum.numel(); ++i) sum.f32()[i] += map.f32()[i];
        if (tty)
          std::fprintf(stderr, "\r%s: %lld/%lld images\033[K", names[m].c_str(), static_cast<long long>(start + count),
                       static_cast<long long>(n));
      }
      for (std::int64_t i = 0; i < sum.numel(); ++i) sum.f32()[i] /= static_cast<float>(n);
      maps.emplace_back(names[m], sum);
    }
    if (tty) std::fprintf(stderr, "\r\033[K");
    // The JSON is written first and committed after the figure: a failure in the work or the drawing leaves
    // neither file.
    std::unique_ptr<AtomicFile> json_out;
    if (!opt->json.empty()) {
      nlohmann::json j = {{"data", opt->data}, {"models", nlohmann::json::array()}};
      for (std::size_t m = 0; m < maps.size(); ++m) {
        const Tensor& t = maps[m].second;
        nlohmann::json rows = nlohmann::json::array();
        for (std::int64_t y = 0; y < t.dim(0); ++y)
          rows.push_back(std::vector<float>(t.f32() + y * t.dim(1), t.f32() + (y + 1) * t.dim(1)));
        j["models"].push_back({{"name", maps[m].first}, {"model", paths[m]}, {"images", n}, {"height", t.dim(0)},
                               {"width", t.dim(1)}, {"map", rows}});
      }
      json_out = std::make_unique<AtomicFile>(opt->json);
      const std::string text = j.dump() + "\n";
      json_out->write(text.data(), text.size());
    }
    plot_receptive_fields(maps, opt->output);
    if (json_out) json_out->commit();
    for (std::size_t m = 0; m < maps.size(); ++m) {
      const Tensor& t = maps[m].second;
      double total = 0, peak = 0;
      for (std::int64_t i = 0; i < t.numel(); ++i) total += t.f32()[i], peak = std::max<double>(peak, t.f32()[i]);
      std::printf("%s: %lldx%lld map over %lld images, sum %.4g, max %.4g\n", maps[m].first.c_str(),
                  static_cast<long long>(t.dim(0)), static_cast<long long>(t.dim(1)), static_cast<long long>(n), total,
                  peak);
    }
    std::printf("wrote %s\n", opt->output.c_str());
  });
}

}  // namespace vrwkv::cli
