// The VRWKV forward pass (VRWKV.md 1.1-1.8) in stages: patch embedding +
// position embedding, blocks (the block kind's fast implementation, or its
// training forward with the reference ops), final norm and feature maps,
// global average pooling and head.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>

#include <omp.h>

#include "model/weights.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/patch_embed.hpp"
#include "ops/pos_embed.hpp"
#include "threads.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/model.hpp"

namespace vrwkv {

namespace model {

Lookup lookup_in(const TensorMap& params) {
  return [&params](const std::string& name) -> float* {
    const auto it = params.find(name);
    if (it == params.end()) runtime_error("parameter '", name, "' is not in the model");
    return const_cast<float*>(it->second.f32());
  };
}

std::shared_ptr<State> bind(const Config& config, const TensorMap& params, const float* base) {
  const Architecture& a = config.arch;
  auto s = std::make_shared<State>();
  const Lookup lookup = lookup_in(params);
  bind_rows(s->backbone, backbone_rows_before_blocks(), a, -1, lookup);
  bind_rows(s->backbone, backbone_rows_after_blocks(), a, -1, lookup);
  bind_rows(s->head, head_rows(), a, -1, lookup);
  const BlockKindEntry& kind = block_kind(a.block);
  s->fast = kind.make_fast(a, lookup);
  s->reference = kind.make_train(a, lookup, base);
  s->base = base;
  return s;
}

}  // namespace model

namespace {

using ops::Grid;

// [B,T,C] tokens to a [B,C,H,W] feature map.
void to_feature_map(const float* x, std::int64_t B, std::int64_t T, std::int64_t C, float* out) {
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t c = 0; c < C; ++c) out[(b * C + c) * T + t] = x[(b * T + t) * C + c];
}

// The first non-finite value of t, reported as an error of `kind`.
void check_finite(const Tensor& t, const char* what, Error::Kind kind) {
  const float* v = t.f32();
  for (std::int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(v[i]))
      throw Error(kind, cat(what, " holds a non-finite value (", v[i], " at element ", i, " of ", shape_str(t.shape()),
                            ")", kind == Error::Kind::Runtime ? ": the computation overflowed" : ""));
}

void check_tokens(const Tokens& tokens, const Architecture& a) {
  const Tensor& x = tokens.x;
  if (x.dtype() != DType::F32 || x.ndim() != 3 || x.dim(0) < 1 || tokens.grid_h < 1 || tokens.grid_w < 1 ||
      x.dim(1) != tokens.grid_h * tokens.grid_w || x.dim(2) != a.embed_dims)
    input_error("tokens have shape ", shape_str(x.shape()), " (", dtype_name(x.dtype()), ") on a ", tokens.grid_h,
                "x", tokens.grid_w, " grid, expected F32 [B,", tokens.grid_h * tokens.grid_w, ",", a.embed_dims, "]");
}

}  // namespace

Tensor Model::parameter_storage() {
  parameters_updated();
  return storage_;
}

void Model::parameters_updated() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->fast->parameters_updated();
}

Tokens Model::embed(const Tensor& input, const ForwardOptions& options, const Context& ctx) const {
  const Architecture& a = config_.arch;
  if (input.dtype() != DType::F32 || input.ndim() != 4 || input.dim(1) != a.in_channels)
    input_error("input has shape ", shape_str(input.shape()), " (", dtype_name(input.dtype()), "), expected F32 [B,",
                a.in_channels, ",H,W]");
  const std::int64_t B = input.dim(0), H = input.dim(2), W = input.dim(3), C = a.embed_dims;
  if (B < 1 || H < 1 || W < 1) input_error("input has shape ", shape_str(input.shape()), ", expected B, H, W >= 1");
  check_finite(input, "input", Error::Kind::Input);
  const ThreadScope threads(ctx);
  const model::BackboneWeights& w = state_->backbone;
  const Grid grid = ops::patch_grid(H, W, a.patch_size), train_grid{a.pos_grid_h, a.pos_grid_w};
  const std::int64_t T = grid.tokens();
  Tokens out{Tensor(DType::F32, {B, T, C}), grid.H, grid.W};
  float* x = out.x.f32();
  if (options.reference) {
    ops::patch_embed_ref(input.f32(), w.patch_weight, w.patch_bias, x, B, a.in_channels, H, W, C, a.patch_size);
  } else {
    std::unique_ptr<float[]> cols(new float[B * T * a.in_channels * a.patch_size * a.patch_size]);
    ops::patch_embed(input.f32(), w.patch_weight, w.patch_bias, x, B, a.in_channels, H, W, C, a.patch_size,
                     cols.get());
  }
  // The position embedding, resized when the grid differs.
  std::vector<float> resized;
  const float* pos = w.pos_embed;
  if (grid.H != train_grid.H || grid.W != train_grid.W) {
    resized.resize(T * C);
    (options.reference ? ops::resize_pos_embed_ref : ops::resize_pos_embed)(pos, train_grid, resized.data(), grid, C);
    pos = resized.data();
  }
#pragma omp parallel for schedule(static)
  for (std::int64_t bt = 0; bt < B * T; ++bt)
    for (std::int64_t ch = 0; ch < C; ++ch) x[bt * C + ch] += pos[(bt % T) * C + ch];
  return out;
}

void Model::run_blocks(Tokens& tokens, std::int64_t begin, std::int64_t end, const ForwardOptions& options,
                       const Context& ctx) const {
  const Architecture& a = config_.arch;
  check_tokens(tokens, a);
  if (begin < 0 || begin > end || end > a.depth)
    input_error("blocks [", begin, ", ", end, ") are not a range of the model's ", a.depth, " blocks");
  if (options.bf16 && options.reference) input_error("bf16 runs on the fast path only, not the reference path");
  if (begin == end) return;
  const ThreadScope scope(ctx);
  const int threads = scope.threads();
  const std::int64_t B = tokens.x.dim(0), T = tokens.x.dim(1), C = a.embed_dims;
  const Grid grid{tokens.grid_h, tokens.grid_w};
  const ops::Wkv wkv{config_.run.wkv, config_.run.wkv_chunks};
  float* x = tokens.x.f32();
  std::lock_guard<std::mutex> lock(state_->mutex);

  if (options.reference) {
    // The training forward with the reference ops, one block at a time, in place.
    model::TrainBlocks& blocks = *state_->reference;
    blocks.plan(B, grid, 1);
    const std::vector<float> ones(B, 1.0f);
    for (std::int64_t i = begin; i < end; ++i)
      blocks.forward(i, x, x, 0, {ones.data(), ones.data()}, model::reference_block_ops(), wkv);
    return;
  }

  // A batch that splits evenly enough runs as one group of images per
  // thread: each group's ops then run on their own thread, with no
  // synchronisation between ops. Otherwise one group, its rows shared by a
  // team of all threads.
  const bool split = threads > 1 && B >= threads && omp_get_max_active_levels() == 1 &&
                     (B % threads == 0 || B >= 4 * threads);
  const std::int64_t groups = split ? threads : 1;
  const auto first_image = [&](std::int64_t g) { return B * g / groups; };
  std::vector<std::int64_t> images;
  for (std::int64_t g = 0; g < groups; ++g) images.push_back(first_image(g + 1) - first_image(g));
  model::FastBlocks& fast = *state_->fast;
  fast.prepare(images, grid, options.bf16 ? DType::BF16 : DType::F32, wkv);
  if (groups == 1) return fast.run(x, B, begin, end, threads, 0);
  std::exception_ptr error;
#pragma omp parallel for num_threads(groups) schedule(static, 1)
  for (std::int64_t g = 0; g < groups; ++g) {
    try {
      fast.run(x + first_image(g) * T * C, images[g], begin, end, 1, static_cast<int>(g));
    } catch (...) {
#pragma omp critical(vrwkv_forward_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

Tensor Model::feature_map(const Tokens& tokens, bool final_norm, const ForwardOptions& options,
                          const Context& ctx) const {
  const Architecture& a = config_.arch;
  check_tokens(tokens, a);
  if (final_norm && !a.final_norm) input_error("the model has no final norm (backbone.ln1)");
  const ThreadScope threads(ctx);
  const std::int64_t B = tokens.x.dim(0), T = tokens.x.dim(1), C = a.embed_dims;
  Tensor out(DType::F32, {B, C, tokens.grid_h, tokens.grid_w});
  const float* x = tokens.x.f32();
  std::vector<float> normed;
  if (final_norm) {
    normed.resize(B * T * C);
    const model::BackboneWeights& w = state_->backbone;
    (options.reference ? ops::layernorm_ref : ops::layernorm)(x, w.norm_weight, w.norm_bias, normed.data(), B * T, C,
                                                              ops::kLayerNormEps);
    x = normed.data();
  }
  to_feature_map(x, B, T, C, out.f32());
  return out;
}

Tensor Model::head(const Tensor& pooled, const ForwardOptions& options, const Context& ctx) const {
  const Architecture& a = config_.arch;
  if (a.head == HeadKind::None) input_error("the model has no classification head");
  if (pooled.dtype() != DType::F32 || pooled.ndim() != 2 || pooled.dim(1) != a.embed_dims || pooled.dim(0) < 1)
    input_error("pooled features have shape ", shape_str(pooled.shape()), ", expected F32 [B,", a.embed_dims, "]");
  const ThreadScope threads(ctx);
  const auto linear = options.reference ? ops::linear_ref : ops::linear;
  const model::HeadWeights& w = state_->head;
  const std::int64_t B = pooled.dim(0), C = a.embed_dims;
  Tensor logits(DType::F32, {B, a.num_classes});
  if (a.head == HeadKind::Linear) {
    linear(pooled.f32(), w.fc_weight, w.fc_bias, logits.f32(), B, a.num_classes, C);
  } else {
    Tensor hidden(DType::F32, {B, a.head_hidden});
    linear(pooled.f32(), w.fc0_weight, w.fc0_bias, hidden.f32(), B, a.head_hidden, C);
    for (std::int64_t i = 0; i < hidden.numel(); ++i) hidden.f32()[i] = std::tanh(hidden.f32()[i]);
    linear(hidden.f32(), w.fc2_weight, w.fc2_bias, logits.f32(), B, a.num_classes, a.head_hidden);
  }
  return logits;
}

Tensor average_pool(const Tensor& f) {
  if (f.dtype() != DType::F32 || f.ndim() != 4)
    input_error("feature map has shape ", shape_str(f.shape()), ", expected F32 [B,C,h,w]");
  const std::int64_t B = f.dim(0), C = f.dim(1), T = f.dim(2) * f.dim(3);
  Tensor pooled(DType::F32, {B, C});
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t ch = 0; ch < C; ++ch) {
      double s = 0;
      for (std::int64_t t = 0; t < T; ++t) s += f.f32()[(b * C + ch) * T + t];
      pooled.f32()[b * C + ch] = static_cast<float>(s / T);
    }
  return pooled;
}

Outputs Model::forward(const Tensor& input, const ForwardOptions& options, const Context& ctx) const {
  const Architecture& a = config_.arch;
  const std::vector<std::int64_t>& out_indices = config_.run.out_indices;
  if (options.bf16 && options.reference) input_error("bf16 runs on the fast path only, not the reference path");
  Tokens x = embed(input, options, ctx);
  Outputs out;
  if (options.keep_blocks) out.embed = x.x.clone();
  // Blocks up to each out index (every block with keep_blocks), one range at a time.
  const std::int64_t last = options.keep_blocks ? a.depth : out_indices.back() + 1;
  std::int64_t done = 0;
  for (std::int64_t i : out_indices) {
    while (done <= i) {
      const std::int64_t to = options.keep_blocks ? done + 1 : i + 1;
      run_blocks(x, done, to, options, ctx);
      if (options.keep_blocks) out.blocks.push_back(x.x.clone());
      done = to;
    }
    out.features.push_back(feature_map(x, i == a.depth - 1 && a.final_norm, options, ctx));
  }
  for (; done < last; ++done) {
    run_blocks(x, done, done + 1, options, ctx);
    out.blocks.push_back(x.x.clone());
  }
  out.pooled = average_pool(out.features.back());
  if (a.head != HeadKind::None) out.logits = head(out.pooled, options, ctx);
  // Never a class or a feature claimed for an overflow.
  for (const Tensor& f : out.features) check_finite(f, "a feature map", Error::Kind::Runtime);
  if (a.head != HeadKind::None) check_finite(out.logits, "the logits", Error::Kind::Runtime);
  return out;
}

}  // namespace vrwkv
