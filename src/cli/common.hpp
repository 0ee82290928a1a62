// Pieces every vrwkv subcommand shares: the model options and how a model is
// loaded from them, thread setup, class names.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "vrwkv/model.hpp"

namespace vrwkv::cli {

// The bundled Fashion-MNIST model (docs/TRAINING.md), used when no --model is
// given. The program looks for it relative to its own file (/proc/self/exe),
// never in the source tree: DIR/../share/vrwkv/models/NAME (installed; the
// data directory as configured), then DIR/models/NAME (the copy the build puts
// beside build/vrwkv).
std::vector<std::string> default_model_candidates();
// The first readable candidate; none: Error(Input) naming every path tried.
std::string default_model();

struct ModelOptions {
  std::string model;
  int threads = 0;  // 0: all cores
  std::string wkv, preprocess, head, pos_grid, out_indices, shift, wkv_direction, wkv_decay;
  int wkv_chunks = 0, shift_pixel = -1;
  double channel_gamma = 0;
  std::string post_norm, final_norm, key_norm, layer_scale;  // "true"/"false" or empty
  std::string dtype = "fp32";

  // Adds --model (required unless `model_optional`), --threads and every config override.
  void add_to(CLI::App& app, bool model_optional = false);
  ConfigOverrides overrides() const;
  ForwardOptions forward_options() const;
  Context context() const { return {threads}; }
  // The model file: --model, else the default model (Error(Input) when it is missing).
  std::string path() const;
  // Loads the model (the default model when none is given; printing nothing).
  Model load(LoadReport* report = nullptr) const;
};

// Parses "N" (square) or "HxW" into {H, W}, each in 1..16384.
// The images a command could not read: each gets one line on stderr as the
// next one comes (the last is kept back), the others are processed, and
// finish() then ends the command with exit 2 and that last line, so one bad
// image still gives one line.
class UnreadableImages {
 public:
  void add(const std::string& message);
  std::size_t count() const { return count_; }
  // total > 0: "(N of total images could not be read)", else "(N images ...)".
  void finish(std::size_t total = 0) const;

 private:
  std::string pending_;
  std::size_t count_ = 0;
};

std::pair<std::int64_t, std::int64_t> parse_resolution(const std::string& text, const std::string& option);

// Parses "0,5,11" (negative allowed).
std::vector<std::int64_t> parse_index_list(const std::string& text, const std::string& option);

}  // namespace vrwkv::cli
