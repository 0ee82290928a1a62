// Plots (the vrwkv_plot library, the only part of vrwkv that needs cairo):
// training curves, the metrics file the trainer writes (JSON lines, see
// vrwkv/train.hpp) read back into series and drawn as a two-panel figure
// (training loss and validation top-1 against epoch), and the benchmark figure.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "vrwkv/bench.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv::train {

// One run's series. step/epoch/loss/lr have one entry per training record,
// val_* one per validation record, in file order. A key a record lacks (or
// gives as null, as a NaN loss is written) is NaN.
struct Curves {
  std::vector<double> step, epoch, loss, lr;
  std::vector<double> val_epoch, val_top1, val_top5, val_loss;
};

// Reads a metrics file. Records with "loss" are training records, records with
// "val_top1" validation records (one record may be both); others and unknown
// keys are ignored, as are blank lines and a last line cut short (no newline).
// A missing or unreadable file, a line that is not a JSON object, a known key
// that is not a number, or a file without records: Error(Input) naming the file
// (and the line).
Curves read_metrics(const std::string& path);

// Draws the runs (name, curves) to `path`, PNG or SVG by its extension (another
// extension: Error(Input)). Written atomically: a failure leaves no file.
void plot_curves(const std::vector<std::pair<std::string, Curves>>& runs, const std::string& path);

}  // namespace vrwkv::train

namespace vrwkv::bench {

// Throughput and memory against resolution, one line per model and batch;
// PNG or SVG by the file's extension.
void plot(const std::vector<Record>& records, double peak_gflops, const std::string& path);

}  // namespace vrwkv::bench

namespace vrwkv {

// Effective receptive fields (vrwkv::receptive_field) side by side, one panel
// per (title, F32 [H,W] map), each on a log scale relative to its own
// maximum (10^-3 … 1) with one colour bar; PNG or SVG by the file's
// extension, written atomically.
void plot_receptive_fields(const std::vector<std::pair<std::string, Tensor>>& maps, const std::string& path);

}  // namespace vrwkv
