// vrwkv plot: training curves (loss and validation top-1 against epoch) from
// one or more metrics files written by `vrwkv train`, to PNG or SVG.
#include <filesystem>
#include <memory>
#include <set>
#include <sstream>

#include "commands.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/plot.hpp"

namespace vrwkv::cli {

namespace {

// A run's default name: the directory holding its metrics file (runs/NAME/metrics.jsonl).
std::string dir_name(const std::string& file) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path p = fs::absolute(file, ec);
  if (ec) p = file;
  const std::string dir = p.lexically_normal().parent_path().filename().string();
  return dir.empty() ? fs::path(file).stem().string() : dir;
}

}  // namespace

void add_plot(CLI::App& app) {
  struct Options {
    std::vector<std::string> metrics;
    std::string output, names;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("plot", "Draw training curves (loss, validation top-1) from metrics files");
  cmd->add_option("metrics", opt->metrics, "metrics.jsonl files written by vrwkv train, one per run")->required();
  cmd->add_option("--output,-o", opt->output, "Output image, .png or .svg")->required();
  cmd->add_option("--names", opt->names,
                  "Comma-separated run names for the legend (default: each file's directory name, or its stem)");
  cmd->callback([opt] {
    if (!opt->output.ends_with(".png") && !opt->output.ends_with(".svg"))
      input_error("--output: expected a .png or .svg file name, got '", opt->output, "'");
    check_output_path(opt->output, "--output", /*stdout_ok=*/false);
    check_not_an_input(opt->output, opt->metrics, "--output");
    std::vector<std::string> names;
    if (!opt->names.empty()) {
      std::istringstream in(opt->names);
      for (std::string name; std::getline(in, name, ',');) names.push_back(name);
      if (opt->names.back() == ',') names.emplace_back();
      if (names.size() != opt->metrics.size())
        input_error("--names: ", names.size(), " name", names.size() == 1 ? "" : "s", " for ", opt->metrics.size(),
                    " metrics file", opt->metrics.size() == 1 ? "" : "s");
    } else {
      std::set<std::string> dirs, stems;
      for (const std::string& m : opt->metrics) {
        names.push_back(dir_name(m));
        dirs.insert(names.back());
        stems.insert(std::filesystem::path(m).stem().string());
      }
      // Runs in one directory (a/x.jsonl, a/y.jsonl): their file names tell them apart.
      if (dirs.size() < names.size() && stems.size() == names.size())
        for (std::size_t i = 0; i < names.size(); ++i) names[i] = std::filesystem::path(opt->metrics[i]).stem().string();
    }
    std::vector<std::pair<std::string, train::Curves>> runs;
    for (std::size_t i = 0; i < opt->metrics.size(); ++i)
      runs.emplace_back(names[i], train::read_metrics(opt->metrics[i]));
    train::plot_curves(runs, opt->output);
  });
}

}  // namespace vrwkv::cli
