// The official optimisation recipe (VRWKV.md 6.2): AdamW with decoupled
// weight decay and the mmcls no-decay rules, gradient clipping by global
// norm, a per-iteration cosine schedule with linear warm-up, and an optional
// exponential moving average of the weights.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vrwkv/model.hpp"

namespace vrwkv::train {

struct AdamWOptions {
  double lr = 1e-3, weight_decay = 0.05, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};

// mmcls paramwise_cfg norm_decay_mult = bias_decay_mult = 0: no weight decay
// on LayerNorm weights and biases or on any bias; everything else (pos_embed,
// spatial_decay/first, spatial_mix_*, gamma1/2, linear and conv weights) is
// decayed. The parameter table's decay column says which; throws
// Error(Input) for a name that is not a parameter of the architecture.
bool is_decayed(const Architecture& arch, const std::string& name);

class AdamW {
 public:
  // Per-element decay mask from the model's parameter table.
  AdamW(const Architecture& arch, AdamWOptions options);
  // ZeRO-1: the state of parameters [begin, end) only (one rank's slice); step() updates only those.
  AdamW(const Architecture& arch, AdamWOptions options, std::int64_t begin, std::int64_t end);
  // One step at learning rate `lr` on params (F32 [P]) with grads (F32 [P]), elements [begin, end):
  //   m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g², θ ← θ − lr·wd·θ (decayed only),
  //   θ ← θ − lr·(m/(1−β1^t)) / (√(v/(1−β2^t)) + eps)            (PyTorch AdamW)
  // Each element's update depends on that element alone: a slice updates exactly as the whole would.
  void step(float* params, const float* grads, double lr);
  std::int64_t steps() const { return t_; }
  std::int64_t begin() const { return begin_; }
  std::int64_t end() const { return begin_ + m_.numel(); }
  // Optimizer state for checkpoints: m, v (F32 [end − begin]) and the step count.
  Tensor& m() { return m_; }
  Tensor& v() { return v_; }
  void set_steps(std::int64_t t) { t_ = t; }

 private:
  AdamWOptions o_;
  std::vector<std::uint8_t> decay_;
  Tensor m_, v_;
  std::int64_t t_ = 0, begin_ = 0;
};

// Scales grads so their global L2 norm is at most max_norm (PyTorch
// clip_grad_norm_: factor max_norm/(norm + 1e-6) when norm > max_norm).
// Returns the norm before clipping. max_norm ≤ 0: no clipping.
double clip_grad_norm(float* grads, std::int64_t n, double max_norm);

struct Schedule {
  double base_lr = 1e-3;
  double min_lr_ratio = 1e-2;     // cosine floor = base_lr·min_lr_ratio
  std::int64_t warmup_iters = 0;  // linear warm-up from warmup_ratio
  double warmup_ratio = 1e-3;
  std::int64_t total_iters = 1;
  // mmcv CosineAnnealingLrUpdaterHook (by_epoch=False) with linear warm-up:
  // lr = min + (base − min)·(1 + cos(π·i/total))/2, times
  // 1 − (1 − i/warmup)·(1 − warmup_ratio) during warm-up.
  double lr(std::int64_t iter) const;
};

// ema ← decay·ema + (1 − decay)·params.
void ema_update(float* ema, const float* params, std::int64_t n, double decay);

}  // namespace vrwkv::train
