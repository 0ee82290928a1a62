// The backward pass: the backbone's training forward (embedding, then the
// block kind's training blocks keeping their tapes, or only their inputs with
// recomputation), its backward from gradients on any block outputs, and the
// classifier's pieces (final norm, pooling, head, label-smoothed
// cross-entropy), each with its backward (VRWKV.md 1.1-1.8, 2.6). Every op's
// backward lives next to its forward in src/ops; the blocks' in their kind's
// file under blocks/.
#include "vrwkv/backward.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "model/weights.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/patch_embed.hpp"
#include "ops/pos_embed.hpp"
#include "threads.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv {

Gradients::Gradients(const Model& model) : storage(DType::F32, {model.parameter_count()}) {
  std::int64_t offset = 0;
  for (const auto& [name, shape] : parameter_shapes(model.architecture())) {
    tensors.emplace(name, storage.view(offset, shape));
    offset += shape_numel(shape);
  }
}

void Gradients::zero() { std::fill(storage.f32(), storage.f32() + storage.numel(), 0.0f); }

Tensor one_hot(const Tensor& labels, std::int64_t K) {
  if (labels.dtype() != DType::I64 || labels.ndim() != 1)
    input_error("labels have shape ", shape_str(labels.shape()), " (", dtype_name(labels.dtype()),
                "), expected I64 [B]");
  Tensor t(DType::F32, {labels.dim(0), K});
  for (std::int64_t b = 0; b < labels.dim(0); ++b) {
    const std::int64_t y = labels.data<std::int64_t>()[b];
    if (y < 0 || y >= K) input_error("label ", y, " of sample ", b, " is outside [0, ", K, ")");
    t.f32()[b * K + y] = 1.0f;
  }
  return t;
}

namespace {

using ops::Grid;

void check_gradients(const Model& model, const Gradients& g) {
  if (g.storage.dtype() != DType::F32 || g.storage.numel() != model.parameter_count())
    input_error("gradients hold ", g.storage.numel(), " values, expected one per parameter (",
                model.parameter_count(), ")");
}

// The gradient buffer's version of a struct of parameter pointers.
template <class S, class Rows>
S grads_of(const Model& model, const S& weights, const Rows& rows, Gradients& g) {
  return model::rebase(weights, rows, model.state().base, g.storage.f32());
}

void check_tokens(const Model& model, const Tensor& t, const char* what) {
  if (t.dtype() != DType::F32 || t.ndim() != 3 || t.dim(2) != model.architecture().embed_dims)
    input_error(what, " have shape ", shape_str(t.shape()), " (", dtype_name(t.dtype()), "), expected F32 [B,T,",
                model.architecture().embed_dims, "]");
}

// splitmix64: the drop-path coin of (seed, block, branch, sample).
std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

// ---- the classifier's pieces ----

Tensor final_norm(const Model& model, const Tensor& tokens, const Context& ctx) {
  check_tokens(model, tokens, "tokens");
  if (!model.architecture().final_norm) input_error("the model has no final norm (backbone.ln1)");
  const ThreadScope threads(ctx);
  const model::BackboneWeights& w = model.state().backbone;
  Tensor out(DType::F32, tokens.shape());
  ops::layernorm(tokens.f32(), w.norm_weight, w.norm_bias, out.f32(), tokens.dim(0) * tokens.dim(1), tokens.dim(2),
                 ops::kLayerNormEps);
  return out;
}

Tensor final_norm_backward(const Model& model, const Tensor& tokens, const Tensor& d_out, Gradients& grads,
                           const Context& ctx) {
  check_tokens(model, tokens, "tokens");
  if (d_out.shape() != tokens.shape()) input_error("gradient has shape ", shape_str(d_out.shape()), ", expected ",
                                                   shape_str(tokens.shape()));
  check_gradients(model, grads);
  const ThreadScope threads(ctx);
  const model::BackboneWeights& w = model.state().backbone;
  const model::BackboneWeights g = grads_of(model, w, model::backbone_rows_after_blocks(), grads);
  Tensor d_in(DType::F32, tokens.shape());
  ops::layernorm_backward(tokens.f32(), w.norm_weight, d_out.f32(), d_in.f32(), g.norm_weight, g.norm_bias,
                          tokens.dim(0) * tokens.dim(1), tokens.dim(2), ops::kLayerNormEps);
  return d_in;
}

Tensor token_pool(const Tensor& tokens) {
  if (tokens.dtype() != DType::F32 || tokens.ndim() != 3)
    input_error("tokens have shape ", shape_str(tokens.shape()), ", expected F32 [B,T,C]");
  const std::int64_t B = tokens.dim(0), T = tokens.dim(1), C = tokens.dim(2);
  Tensor pooled(DType::F32, {B, C});
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t ch = 0; ch < C; ++ch) {
      double s = 0;
      for (std::int64_t t = 0; t < T; ++t) s += tokens.f32()[(b * T + t) * C + ch];
      pooled.f32()[b * C + ch] = static_cast<float>(s / T);
    }
  return pooled;
}

Tensor token_pool_backward(const Tensor& d_pooled, std::int64_t T) {
  if (d_pooled.dtype() != DType::F32 || d_pooled.ndim() != 2 || T < 1)
    input_error("pooled gradient has shape ", shape_str(d_pooled.shape()), ", expected F32 [B,C]");
  const std::int64_t B = d_pooled.dim(0), C = d_pooled.dim(1);
  Tensor d(DType::F32, {B, T, C});
  for (std::int64_t n = 0; n < B * T; ++n)
    for (std::int64_t ch = 0; ch < C; ++ch) d.f32()[n * C + ch] = d_pooled.f32()[(n / T) * C + ch] / T;
  return d;
}

HeadActivations head_forward(const Model& model, const Tensor& pooled, const Context& ctx) {
  const Architecture& a = model.architecture();
  HeadActivations out;
  if (a.head == HeadKind::Mlp) {
    // The hidden activation is kept: the logits are computed from it here.
    if (pooled.dtype() != DType::F32 || pooled.ndim() != 2 || pooled.dim(1) != a.embed_dims)
      input_error("pooled features have shape ", shape_str(pooled.shape()), ", expected F32 [B,", a.embed_dims, "]");
    const ThreadScope threads(ctx);
    const model::HeadWeights& w = model.state().head;
    const std::int64_t B = pooled.dim(0);
    out.hidden = Tensor(DType::F32, {B, a.head_hidden});
    ops::linear(pooled.f32(), w.fc0_weight, w.fc0_bias, out.hidden.f32(), B, a.head_hidden, a.embed_dims);
    for (std::int64_t j = 0; j < out.hidden.numel(); ++j) out.hidden.f32()[j] = std::tanh(out.hidden.f32()[j]);
    out.logits = Tensor(DType::F32, {B, a.num_classes});
    ops::linear(out.hidden.f32(), w.fc2_weight, w.fc2_bias, out.logits.f32(), B, a.num_classes, a.head_hidden);
    return out;
  }
  out.logits = model.head(pooled, {}, ctx);
  return out;
}

Tensor head_backward(const Model& model, const Tensor& pooled, const HeadActivations& head, const Tensor& d_logits,
                     Gradients& grads, const Context& ctx) {
  const Architecture& a = model.architecture();
  if (a.head == HeadKind::None) input_error("the model has no classification head");
  const std::int64_t B = pooled.dim(0), C = a.embed_dims, K = a.num_classes, Hh = a.head_hidden;
  if (d_logits.dtype() != DType::F32 || d_logits.shape() != Shape{B, K})
    input_error("logit gradient has shape ", shape_str(d_logits.shape()), ", expected F32 [", B, ",", K, "]");
  check_gradients(model, grads);
  const ThreadScope threads(ctx);
  const model::HeadWeights& w = model.state().head;
  const model::HeadWeights g = grads_of(model, w, model::head_rows(), grads);
  Tensor d_pooled(DType::F32, {B, C});
  if (a.head == HeadKind::Linear) {
    ops::linear_backward(pooled.f32(), w.fc_weight, d_logits.f32(), d_pooled.f32(), g.fc_weight, g.fc_bias, B, K, C);
  } else {
    Tensor d_hidden(DType::F32, {B, Hh});
    ops::linear_backward(head.hidden.f32(), w.fc2_weight, d_logits.f32(), d_hidden.f32(), g.fc2_weight, g.fc2_bias,
                         B, K, Hh);
    for (std::int64_t j = 0; j < B * Hh; ++j) d_hidden.f32()[j] *= 1.0f - head.hidden.f32()[j] * head.hidden.f32()[j];
    ops::linear_backward(pooled.f32(), w.fc0_weight, d_hidden.f32(), d_pooled.f32(), g.fc0_weight, g.fc0_bias, B, Hh,
                         C);
  }
  return d_pooled;
}

double label_smoothed_cross_entropy(const Tensor& logits, const Tensor& targets, double eps, Tensor* d_logits) {
  if (logits.dtype() != DType::F32 || logits.ndim() != 2 || targets.dtype() != DType::F32 ||
      targets.shape() != logits.shape())
    input_error("targets have shape ", shape_str(targets.shape()), ", expected F32 ", shape_str(logits.shape()));
  const std::int64_t B = logits.dim(0), K = logits.dim(1);
  if (d_logits) *d_logits = Tensor(DType::F32, {B, K});
  double loss = 0;
  for (std::int64_t b = 0; b < B; ++b) {
    const float* z = logits.f32() + b * K;
    const double zmax = *std::max_element(z, z + K);
    double se = 0;
    for (std::int64_t k = 0; k < K; ++k) se += std::exp(z[k] - zmax);
    const double lse = zmax + std::log(se);
    for (std::int64_t k = 0; k < K; ++k) {
      const double target = (1.0 - eps) * targets.f32()[b * K + k] + eps / K;
      loss -= target * (z[k] - lse);
      if (d_logits) d_logits->f32()[b * K + k] = static_cast<float>((std::exp(z[k] - lse) - target) / B);
    }
  }
  return loss / B;
}

// ---- the backbone ----

struct Backprop::Impl {
  const Model& model;
  const Architecture& a;
  std::unique_ptr<model::TrainBlocks> blocks;
  std::int64_t B = 0, H = 0, W = 0, N = 0, C = 0, T = 0, last = -1;
  bool recompute = false;
  Grid grid, train_grid;
  ops::Wkv wkv;
  Tensor input;            // of the last forward
  std::vector<Tensor> xs;  // xs[0]: the embedding; xs[i + 1]: the output of block i
  std::int64_t taped = -1;  // with recompute: the block whose activations the one tape holds
  std::vector<float> cols, pos, dpos, dcur, dnext;
  std::vector<std::array<std::vector<float>, 2>> keep;  // [block][branch][sample] drop-path scale

  explicit Impl(const Model& m)
      : model(m),
        a(m.architecture()),
        blocks(model::block_kind(a.block).make_train(a, model::lookup_in(m.parameters()), m.state().base)) {}

  std::int64_t tape(std::int64_t i) const { return recompute ? 0 : i; }
  model::DropPath scales(std::int64_t i) const { return {keep[i][0].data(), keep[i][1].data()}; }

  void plan(const Tensor& x, std::int64_t last_, bool recompute_) {
    const std::int64_t b = x.dim(0), h = x.dim(2), w = x.dim(3);
    if (b == B && h == H && w == W && recompute_ == recompute && last_ == last) return;
    B = b, H = h, W = w, recompute = recompute_, last = last_;
    grid = ops::patch_grid(H, W, a.patch_size), train_grid = {a.pos_grid_h, a.pos_grid_w};
    T = grid.tokens(), N = B * T, C = a.embed_dims;
    xs.assign(last + 2, Tensor());
    for (Tensor& t : xs) t = Tensor(DType::F32, {B, T, C});
    blocks->plan(B, grid, recompute ? 1 : last + 1);
    pos.resize(T * C), dpos.resize(T * C), dcur.resize(N * C), dnext.resize(N * C);
    cols.resize(N * a.in_channels * a.patch_size * a.patch_size);
  }

  // DropPath (VRWKV.md 1.4): per block, branch and sample, keep with
  // probability 1−p and scale by 1/(1−p).
  void draw_drop_path(const BackwardOptions& o) {
    keep.assign(last + 1, {std::vector<float>(B, 1.0f), std::vector<float>(B, 1.0f)});
    for (std::int64_t i = 0; i <= last; ++i) {
      const double p = i < static_cast<std::int64_t>(o.drop_path.size()) ? o.drop_path[i] : 0.0;
      if (!(p >= 0 && p < 1)) input_error("drop-path rate ", p, " of block ", i, " is outside [0, 1)");
      if (p == 0) continue;
      for (std::uint64_t branch = 0; branch < 2; ++branch)
        for (std::int64_t b = 0; b < B; ++b) {
          const std::uint64_t r = mix64(o.seed ^ mix64((static_cast<std::uint64_t>(i) << 32) ^ (branch << 24) ^
                                                       static_cast<std::uint64_t>(o.sample_offset + b)));
          const double coin = static_cast<double>(r >> 11) * 0x1.0p-53;
          keep[i][branch][b] = coin < p ? 0.0f : static_cast<float>(1.0 / (1.0 - p));
        }
    }
  }

  void forward(const Tensor& x, std::int64_t last_, const BackwardOptions& o) {
    if (x.dtype() != DType::F32 || x.ndim() != 4 || x.dim(1) != a.in_channels || x.dim(0) < 1 || x.dim(2) < 1 ||
        x.dim(3) < 1)
      input_error("input has shape ", shape_str(x.shape()), " (", dtype_name(x.dtype()), "), expected F32 [B,",
                  a.in_channels, ",H,W]");
    if (last_ < 0 || last_ >= a.depth)
      input_error("block ", last_, " is not one of the model's ", a.depth, " blocks");
    plan(x, last_, o.recompute);
    draw_drop_path(o);
    input = x;
    wkv = {model.config().run.wkv, model.config().run.wkv_chunks};

    // Embedding (1.2, 1.3).
    const model::BackboneWeights& w = model.state().backbone;
    float* e = xs[0].f32();
    ops::patch_embed(x.f32(), w.patch_weight, w.patch_bias, e, B, a.in_channels, H, W, C, a.patch_size, cols.data());
    const float* pe = w.pos_embed;
    if (grid.H != train_grid.H || grid.W != train_grid.W)
      ops::resize_pos_embed(pe, train_grid, pos.data(), grid, C), pe = pos.data();
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t ch = 0; ch < C; ++ch) e[n * C + ch] += pe[(n % T) * C + ch];

    for (std::int64_t i = 0; i <= last; ++i)
      blocks->forward(i, xs[i].f32(), xs[i + 1].f32(), tape(i), scales(i), model::fast_block_ops(), wkv);
    taped = last;
  }

  void backward(const std::map<std::int64_t, Tensor>& d_outputs, Gradients& G, Tensor* d_input) {
    if (last < 0) input_error("backward without a forward");
    check_gradients(model, G);
    std::int64_t top = -1;
    for (const auto& [i, d] : d_outputs) {
      if (i < 0 || i > last) input_error("gradient for block ", i, ", but the forward ran blocks 0..", last);
      if (d.dtype() != DType::F32 || d.shape() != Shape{B, T, C})
        input_error("gradient for block ", i, " has shape ", shape_str(d.shape()), ", expected F32 [", B, ",", T,
                    ",", C, "]");
      top = std::max(top, i);
    }
    std::fill(dcur.begin(), dcur.end(), 0.0f);
    // Blocks, last to first (recomputing each block's activations if asked).
    for (std::int64_t i = top; i >= 0; --i) {
      const auto it = d_outputs.find(i);
      if (it != d_outputs.end())
        for (std::int64_t j = 0; j < N * C; ++j) dcur[j] += it->second.f32()[j];
      if (recompute && taped != i) blocks->forward(i, xs[i].f32(), xs[i + 1].f32(), 0, scales(i), model::fast_block_ops(), wkv);
      taped = i;
      blocks->backward(i, xs[i].f32(), dcur.data(), dnext.data(), tape(i), scales(i), wkv, G.storage.f32());
      std::swap(dcur, dnext);
    }
    if (!recompute) taped = last;

    // Position embedding, patch embedding (and the input).
    const model::BackboneWeights& w = model.state().backbone;
    const model::BackboneWeights g = grads_of(model, w, model::backbone_rows_before_blocks(), G);
    const float* de = dcur.data();
    std::fill(dpos.begin(), dpos.end(), 0.0f);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t ch = 0; ch < C; ++ch) dpos[(n % T) * C + ch] += de[n * C + ch];
    if (grid.H != train_grid.H || grid.W != train_grid.W)
      ops::resize_pos_embed_backward(dpos.data(), grid, g.pos_embed, train_grid, C);
    else
      for (std::int64_t j = 0; j < T * C; ++j) g.pos_embed[j] += dpos[j];
    ops::patch_embed_backward(input.f32(), de, g.patch_weight, g.patch_bias, B, a.in_channels, H, W, C, a.patch_size,
                              cols.data());
    if (d_input) {
      *d_input = Tensor(DType::F32, input.shape());
      ops::patch_embed_backward_input(w.patch_weight, de, d_input->f32(), B, a.in_channels, H, W, C, a.patch_size);
    }
  }

  LossResult run(const Tensor& x, const Tensor& targets, Gradients& G, const BackwardOptions& o,
                 const Context& ctx) {
    if (a.head == HeadKind::None) input_error("the model has no classification head, so there is no loss to derive");
    if (!(o.label_smoothing >= 0 && o.label_smoothing <= 1))
      input_error("label smoothing must be in [0, 1], got ", o.label_smoothing);
    for (const double p : o.drop_path)
      if (!(p >= 0 && p < 1)) input_error("drop path rates must be in [0, 1), got ", p);
    const std::int64_t K = a.num_classes;
    if (targets.dtype() != DType::F32 || targets.ndim() != 2 || targets.dim(1) != K ||
        (x.ndim() >= 1 && targets.dim(0) != x.dim(0)))
      input_error("targets have shape ", shape_str(targets.shape()), ", expected F32 [",
                  x.ndim() >= 1 ? x.dim(0) : 0, ",", K, "]");
    check_gradients(model, G);
    forward(x, model.config().run.out_indices.back(), o);
    // Final norm (after the last block only), pooling, head, loss (1.8), and their backward.
    const bool norm = a.final_norm && last == a.depth - 1;
    const Tensor& tokens = xs[last + 1];
    const Tensor feat = norm ? final_norm(model, tokens, ctx) : tokens;
    const Tensor pooled = token_pool(feat);
    const HeadActivations head = head_forward(model, pooled, ctx);
    Tensor d_logits;
    LossResult result;
    result.loss = label_smoothed_cross_entropy(head.logits, targets, o.label_smoothing, &d_logits);
    result.logits = head.logits;
    const Tensor d_feat = token_pool_backward(head_backward(model, pooled, head, d_logits, G, ctx), T);
    backward({{last, norm ? final_norm_backward(model, tokens, d_feat, G, ctx) : d_feat}}, G, nullptr);
    return result;
  }

  std::int64_t activation_bytes() const {
    std::int64_t n = 0;
    for (const Tensor& t : xs) n += static_cast<std::int64_t>(t.nbytes());
    return n + blocks->tape_bytes();
  }
};

Backprop::Backprop(const Model& model) : impl_(std::make_unique<Impl>(model)) {}
Backprop::~Backprop() = default;

void Backprop::forward(const Tensor& input, std::int64_t last, const BackwardOptions& options, const Context& ctx) {
  const ThreadScope threads(ctx);
  impl_->forward(input, last, options);
}

Tensor Backprop::block_output(std::int64_t i) const {
  if (i < 0 || i > impl_->last) input_error("block ", i, " was not run by the last forward (blocks 0..", impl_->last, ")");
  return impl_->xs[i + 1];
}

std::int64_t Backprop::grid_h() const { return impl_->grid.H; }
std::int64_t Backprop::grid_w() const { return impl_->grid.W; }

void Backprop::backward(const std::map<std::int64_t, Tensor>& d_outputs, Gradients& grads, const Context& ctx,
                        Tensor* d_input) {
  const ThreadScope threads(ctx);
  impl_->backward(d_outputs, grads, d_input);
}

LossResult Backprop::run(const Tensor& input, const Tensor& targets, Gradients& grads, const BackwardOptions& options,
                         const Context& ctx) {
  const ThreadScope threads(ctx);
  LossResult r = impl_->run(input, targets, grads, options, ctx);
  impl_->input = Tensor();  // the caller's batch is not kept once its gradient is done
  return r;
}

std::int64_t Backprop::activation_bytes() const { return impl_->activation_bytes(); }

}  // namespace vrwkv
