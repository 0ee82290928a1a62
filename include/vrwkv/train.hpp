// The training loop (VRWKV.md 1.9, 6.2): a model
// built from a configuration (or a checkpoint to fine-tune), data with the
// training augmentations, AdamW on a per-iteration cosine schedule, gradient
// clipping, label smoothing, DropPath, Mixup/CutMix, optional EMA and
// per-block recomputation; metrics as JSON lines, periodic evaluation, atomic
// checkpoints with the optimizer state, and a resume that continues bit for
// bit (for the same thread count); data-parallel over a Communicator
// (vrwkv/distributed.hpp, docs/DISTRIBUTED.md).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "vrwkv/data.hpp"
#include "vrwkv/distributed.hpp"
#include "vrwkv/model.hpp"
#include "vrwkv/optimizer.hpp"

namespace vrwkv::train {

struct TrainConfig {
  // Model: `init` (a checkpoint to fine-tune; its head is replaced when the
  // class count differs), else `preset` (vrwkv_t/s/b/l), else `model`.
  std::string init, preset;
  Architecture model;         // num_classes and class names come from the data
  // model.shift/wkv_direction/wkv_decay given beside `init` (with shift_pixel): they
  // say how to read the checkpoint (a .pth cannot tell a variant's), so they
  // override what it records.
  bool init_variant = false;
  double init_values = 1e-5;  // layer-scale gammas' initial value (layer_scale only)
  // Data.
  std::string train_data = "fashion-mnist:train", val_data = "fashion-mnist:test";
  std::int64_t train_limit = 0, val_limit = 0;  // use only the first N images (0: all)
  Transform transform;  // augmentations; size, channels, mean and std come from the model
  Mixing mixing;
  // Optimisation.
  std::int64_t epochs = 10, batch_size = 128;
  AdamWOptions adamw;
  double clip_grad = 5.0;
  double warmup_epochs = 1, warmup_ratio = 1e-3, min_lr_ratio = 1e-2;
  double label_smoothing = 0.1;
  double drop_path = 0.0;  // the last block's rate; linspace(0, drop_path, depth)
  double ema_decay = 0.0;  // 0: no EMA
  bool recompute = false;
  std::uint64_t seed = 0;
  // Data-parallel: 1 shards the AdamW moments over the ranks (ZeRO-1); the results are identical to 0.
  int zero = 0;
  // Bookkeeping.
  std::int64_t eval_every = 1;          // epochs
  std::int64_t checkpoint_every = 200;  // steps (also at every epoch end)
  std::int64_t log_every = 50;          // steps
};

// The JSON form (configs/*.json). Unknown keys are errors, so typos do not pass silently.
TrainConfig train_config_from_json(const std::string& text, const std::string& source);
std::string train_config_to_json(const TrainConfig& config);

struct EvalResult {
  double top1 = 0, top5 = 0, loss = 0;  // accuracies in %, mean cross-entropy (no smoothing)
  std::int64_t images = 0;              // images counted
  std::int64_t skipped = 0;             // images left out because they could not be read (on_image_error)
  // The sums behind the figures: images in the top 1 and in the top 5, the summed cross-entropy.
  std::int64_t top1_hits = 0, top5_hits = 0;
  double loss_sum = 0;
};

// Top-1/top-5 of a model on a dataset with the model's own preprocessing.
// limit > 0: the first `limit` images. progress(done, total) after each batch;
// options: the forward's (e.g. bf16). An image that cannot be read (a corrupt
// file: Error(Input)) ends the evaluation with that error, unless
// on_image_error is given: then it is called with the image's index and the
// message, and the image is left out of the counts (EvalResult::skipped); it
// may throw to stop.
EvalResult evaluate(const Model& model, const Dataset& data, std::int64_t batch_size, std::int64_t limit = 0,
                    const std::function<void(std::int64_t, std::int64_t)>& progress = {},
                    const ForwardOptions& options = {}, const Context& ctx = {},
                    const std::function<void(std::int64_t, const std::string&)>& on_image_error = {});

// Images [start, start + count) of a dataset as the model's input F32
// [count,Cin,H,W], with the model's own preprocessing (as evaluate). An image
// that cannot be read throws its Error(Input).
Tensor load_inputs(const Model& model, const Dataset& data, std::int64_t start, std::int64_t count,
                   const Context& ctx = {});

struct TrainRun {
  std::string out_dir;  // checkpoint.safetensors, metrics.jsonl, model.safetensors
  bool resume = false;  // continue from out_dir/checkpoint.safetensors (with its stored configuration)
  bool force = false;   // start afresh in an out_dir that holds a run, replacing it
  bool progress_bar = true;
  std::int64_t stop_after = 0;  // > 0: stop (with a checkpoint) after this many steps in total
  // Polled after every step: when it holds a non-zero value (a signal
  // number, or -1 for a stop the caller asked for), training writes a
  // checkpoint and returns (--resume continues).
  const std::atomic<int>* stop = nullptr;
  // Called with every record appended to metrics.jsonl (one JSON object:
  // step records with loss/lr/grad_norm, evaluation records with val_top1/
  // val_top5/val_loss), after it reached the file. An exception it throws
  // ends the run there (the last checkpoint stays as it was).
  std::function<void(const std::string& record_json)> on_metrics;
  Context ctx;  // threads of the training step, the loader and evaluation
  // Data-parallel training (null: this process alone). Every rank calls train() with the same configuration and
  // out_dir; each computes its shard of every batch, and rank 0 alone writes the progress, metrics.jsonl, the
  // checkpoints and the model. The batch size is the global batch; it must divide by the number of ranks.
  Communicator* comm = nullptr;
};

// Runs training; returns the final evaluation (when a validation set is given).
// out_dir is locked for the run: a second run into it fails at once with
// Error(Input), and so does a fresh run into a folder holding a run (unless
// resume or force).
EvalResult train(const TrainConfig& config, const TrainRun& run);

// The model a configuration starts from (before any step), with initial weights.
Model initial_model(const TrainConfig& config, const Dataset& train_data);

}  // namespace vrwkv::train
