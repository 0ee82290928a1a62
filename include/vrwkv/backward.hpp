// Gradients of a VRWKV model (VRWKV.md 1.4-1.8, 2.6): a forward that keeps
// what the backward needs, and a hand-written backward through every layer.
//
// Classification (the label-smoothed cross-entropy of the head):
//   vrwkv::Gradients grads(model);
//   vrwkv::Backprop backprop(model);
//   vrwkv::LossResult r = backprop.run(input, vrwkv::one_hot(labels, K), grads);
//   grads.tensors.at("backbone.layers.0.att.key.weight")   // dL/dW
//
// Any other loss on block outputs (dense heads, features):
//   backprop.forward(input, 11);                  // embedding + blocks 0..11
//   Tensor y = backprop.block_output(11);         // F32 [B,T,C]
//   backprop.backward({{11, dL_dy}}, grads);      // dL/dθ (+ dL/dinput if asked)
//
// The Bi-WKV gradient is the exact gradient of the model's own forward, in
// either semantics (VRWKV.md 2.2 paper, 2.3 official with S chunks), by O(T·C)
// scans — not the official CUDA kernel's backward, whose gk and gv use the
// paper weights (2.6).
#pragma once

#include <cstdint>
#include <map>
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
  // The batch's first sample in the whole batch (a rank's shard in data-parallel training): a sample's
  // drop-path mask is a function of (seed, block, branch, sample_offset + its row), whatever the split.
  std::int64_t sample_offset = 0;
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

  // Embedding and blocks [0, last] of input F32 [B,Cin,H,W], keeping what
  // the backward needs. Activations are planned per input shape and reused.
  void forward(const Tensor& input, std::int64_t last, const BackwardOptions& options = {}, const Context& ctx = {});
  // The output of block i (i <= last) of the last forward: F32 [B,T,C], valid until the next forward.
  Tensor block_output(std::int64_t i) const;
  // The grid of the last forward's tokens.
  std::int64_t grid_h() const;
  std::int64_t grid_w() const;
  // From dL/d(output of block i) for any set of blocks i <= last (each F32
  // [B,T,C]) back through the blocks and the embedding: adds dL/dθ to
  // `grads`; with d_input, also returns dL/dinput (F32 [B,Cin,H,W]).
  void backward(const std::map<std::int64_t, Tensor>& d_outputs, Gradients& grads, const Context& ctx = {},
                Tensor* d_input = nullptr);

  // Classification: forward to the last out index, final norm (after the
  // last block), pooling, head and the label-smoothed loss of targets F32
  // [B,K], then the backward of it all; adds dL/dθ to `grads`.
  LossResult run(const Tensor& input, const Tensor& targets, Gradients& grads, const BackwardOptions& options = {},
                 const Context& ctx = {});
  // Bytes of activations kept for the backward at the last run's shape.
  std::int64_t activation_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The pieces after the backbone, each with its backward (which returns the
// gradient of its input and adds its parameters' gradients to `grads`).
//
// Final norm (backbone.ln1) of tokens F32 [B,T,C].
Tensor final_norm(const Model& model, const Tensor& tokens, const Context& ctx = {});
Tensor final_norm_backward(const Model& model, const Tensor& tokens, const Tensor& d_out, Gradients& grads,
                           const Context& ctx = {});
// Global average pooling of tokens F32 [B,T,C] to F32 [B,C].
Tensor token_pool(const Tensor& tokens);
Tensor token_pool_backward(const Tensor& d_pooled, std::int64_t tokens);
// The head on pooled features F32 [B,C]; `hidden` keeps what its backward needs (MLP head).
struct HeadActivations {
  Tensor logits;  // F32 [B,K]
  Tensor hidden;  // F32 [B,head_hidden]: tanh(head.0(pooled)), MLP head only
};
HeadActivations head_forward(const Model& model, const Tensor& pooled, const Context& ctx = {});
Tensor head_backward(const Model& model, const Tensor& pooled, const HeadActivations& head, const Tensor& d_logits,
                     Gradients& grads, const Context& ctx = {});
// mmcls LabelSmoothLoss, mode 'original': target' = (1−ε)·target + ε/K,
// loss = mean_b −Σ_k target'·log_softmax(logits); d_logits = (softmax − target')/B.
double label_smoothed_cross_entropy(const Tensor& logits, const Tensor& targets, double label_smoothing,
                                    Tensor* d_logits);

// The effective receptive field (Luo et al. 2016, as the paper measures it):
// for each image b of input F32 [B,Cin,H,W], |∂ s_b / ∂ input_b| summed over
// the input channels, where s_b is the backbone's output at the central token
// (row grid_h/2, column grid_w/2) summed over its channels; the output is the
// last out index's block, after the final norm when that block is the last.
// Returns F32 [H,W], the sum over the batch (divide by the image count for
// the mean). Eval mode: no drop path.
Tensor receptive_field(const Model& model, const Tensor& input, const Context& ctx = {});

}  // namespace vrwkv
