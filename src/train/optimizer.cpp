#include "vrwkv/optimizer.hpp"

#include <cmath>
#include <numbers>

#include "model/params.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::train {

bool is_decayed(const Architecture& arch, const std::string& name) {
  for (const model::Param& p : model::parameter_list(arch))
    if (p.name == name) return p.info->decay;
  input_error("'", name, "' is not a parameter of the model");
}

AdamW::AdamW(const Architecture& arch, AdamWOptions options) : AdamW(arch, options, 0, -1) {}

AdamW::AdamW(const Architecture& arch, AdamWOptions options, std::int64_t begin, std::int64_t end) : o_(options) {
  for (const model::Param& p : model::parameter_list(arch))
    decay_.insert(decay_.end(), static_cast<std::size_t>(shape_numel(p.shape)), p.info->decay ? 1 : 0);
  const std::int64_t P = static_cast<std::int64_t>(decay_.size());
  if (end < 0) end = P;
  if (begin < 0 || begin > end || end > P)
    input_error("AdamW: parameters ", begin, "..", end, " of ", P, ", expected 0 <= begin <= end <= ", P);
  decay_.erase(decay_.begin() + end, decay_.end());
  decay_.erase(decay_.begin(), decay_.begin() + begin);
  begin_ = begin;
  m_ = Tensor(DType::F32, {end - begin});
  v_ = Tensor(DType::F32, {end - begin});
}

void AdamW::step(float* params, const float* grads, double lr) {
  ++t_;
  const double bc1 = 1.0 - std::pow(o_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(o_.beta2, static_cast<double>(t_));
  const float b1 = static_cast<float>(o_.beta1), b2 = static_cast<float>(o_.beta2);
  const float step_size = static_cast<float>(lr / bc1), decay = static_cast<float>(1.0 - lr * o_.weight_decay);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2)), eps = static_cast<float>(o_.eps);
  float *m = m_.f32(), *v = v_.f32();
  params += begin_, grads += begin_;
  const std::uint8_t* mask = decay_.data();
  const std::int64_t n = m_.numel();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float g = grads[i];
    m[i] = b1 * m[i] + (1.0f - b1) * g;
    v[i] = b2 * v[i] + (1.0f - b2) * g * g;
    float p = mask[i] ? params[i] * decay : params[i];
    p -= step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
    params[i] = p;
  }
}

double clip_grad_norm(float* grads, std::int64_t n, double max_norm) {
  // Partial sums in a fixed number of blocks, so the norm does not depend on the thread count.
  constexpr std::int64_t kBlocks = 64;
  double part[kBlocks] = {};
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < kBlocks; ++b) {
    const std::int64_t lo = n * b / kBlocks, hi = n * (b + 1) / kBlocks;
    double s = 0;
    for (std::int64_t i = lo; i < hi; ++i) s += static_cast<double>(grads[i]) * grads[i];
    part[b] = s;
  }
  double sum = 0;
  for (double p : part) sum += p;
  const double norm = std::sqrt(sum);
  if (max_norm > 0 && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / (norm + 1e-6));
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) grads[i] *= scale;
  }
  return norm;
}

double Schedule::lr(std::int64_t iter) const {
  const double min_lr = base_lr * min_lr_ratio;
  const double progress = static_cast<double>(iter) / static_cast<double>(std::max<std::int64_t>(total_iters, 1));
  double lr = min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  if (iter < warmup_iters)
    lr *= 1.0 - (1.0 - static_cast<double>(iter) / static_cast<double>(warmup_iters)) * (1.0 - warmup_ratio);
  return lr;
}

void ema_update(float* ema, const float* params, std::int64_t n, double decay) {
  const float d = static_cast<float>(decay), e = static_cast<float>(1.0 - decay);
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) ema[i] = d * ema[i] + e * params[i];
}

}  // namespace vrwkv::train
