// Gradients of a VRWKV classifier (VRWKV.md 1.4-1.8,
// 2.6): forward, label-smoothed cross-entropy and a hand-written backward
// through every layer.
//
//   vrwkv::Gradients grads(model);
//   vrwkv::Backprop backprop(model);
//   vrwkv::LossResult r = backprop.run(input, vrwkv::one_hot(labels, K), grads);
//   grads.tensors.at("backbone.layers.0.att.key.weight")   // dL/dW
//
// The Bi-WKV gradient is the exact gradient of the model's own forward, in
// either semantics (VRWKV.md 2.2 paper, 2.3 official with S chunks), by O(T·C)
// scans — not the official CUDA kernel's backward, whose gk and gv use the
// paper weights (2.6).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "vrwkv/model.hpp"

namespace vrwkv {

// One gradient per parameter, as views into one buffer laid out like
// Model::parameter_storage() (same names, shapes and order).
struct Gradients {
  explicit Gradients(const Model& model);
  void zero();
  Tensor storage;     // F32 [parameter_count]
  TensorMap tensors;  // official parameter name -> view
};

struct BackwardOptions {
  double label_smoothing = 0.1;  // mmcls LabelSmoothLoss, mode 'original': (1−ε)·target + ε/K
  // DropPath rate per block (VRWKV.md 1.4); empty: none (eval mode).
  std::vector<double> drop_path;
  std::uint64_t seed = 0;  // drop-path masks
  bool recompute = false;  // keep only block inputs and recompute each block in the backward (less memory)
};

struct LossResult {
  double loss = 0;  // mean over the batch
  Tensor logits;    // F32 [B,K]
};

// Targets: F32 [B,K] rows summing to 1 (one-hot, or mixed by Mixup/CutMix).
Tensor one_hot(const Tensor& labels, std::int64_t num_classes);

class Backprop {
 public:
  // Keeps a reference to the model, whose weights may change between runs.
  explicit Backprop(const Model& model);
  ~Backprop();
  // Forward, loss and backward for input F32 [B,Cin,H,W] and targets F32
  // [B,K]; adds dL/dθ to `grads`. Activations are planned per input shape and
  // reused.
  LossResult run(const Tensor& input, const Tensor& targets, Gradients& grads, const BackwardOptions& options = {});
  // Bytes of activations kept for the backward at the last run's shape.
  std::int64_t activation_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vrwkv
