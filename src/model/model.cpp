// The VRWKV forward pass (VRWKV.md 1.1-1.8): patch embedding, position
// embedding, blocks of Spatial Mix and Channel Mix, final norm, out indices,
// global average pooling and head.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include "ops/biwkv.hpp"
#include "ops/fast_math.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/linear_bf16.hpp"
#include "ops/patch_embed.hpp"
#include "ops/pos_embed.hpp"
#include "ops/qshift.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/model.hpp"

namespace vrwkv {

namespace {

using ops::Grid;

// The ops a forward pass uses: the fast ones or the plain references.
struct OpSet {
  decltype(&ops::linear) linear;
  decltype(&ops::layernorm) layernorm;
  decltype(&ops::q_shift_mix) q_shift_mix;
  decltype(&ops::biwkv) biwkv;
  decltype(&ops::patch_embed) patch_embed;
  decltype(&ops::resize_pos_embed) resize_pos_embed;
};
constexpr OpSet kFast = {ops::linear, ops::layernorm, ops::q_shift_mix, ops::biwkv, ops::patch_embed,
                         ops::resize_pos_embed};
constexpr OpSet kReference = {ops::linear_ref, ops::layernorm_ref, ops::q_shift_mix_ref, ops::biwkv_ref_all,
                              ops::patch_embed_ref, ops::resize_pos_embed_ref};

}  // namespace

// The activations of one forward pass for one input shape, allocated once and
// reused while the shape stays the same (ENGINEERING.md "Memory"): weights +
// O(T·C), nothing O(T²). Buffers whose lives do not overlap share memory.
struct Workspace {
  std::int64_t B = 0, H = 0, W = 0;
  std::vector<float> x, h, xk, xv, xr, k, v, r, hidden, pos, wu;
  // im2col patches (only before block 0) live in `hidden`; the WKV output y
  // lives in xk, which is dead once k is computed; branch outputs live in h.
  Workspace(std::int64_t B_, std::int64_t H_, std::int64_t W_, const Config& c, std::int64_t T)
      : B(B_), H(H_), W(W_) {
    const std::int64_t N = B * T, C = c.embed_dims;
    for (auto* buf : {&x, &h, &xk, &xv, &xr, &k, &v, &r}) buf->resize(N * C);
    hidden.resize(N * std::max(c.hidden_dims, c.in_channels * c.patch_size * c.patch_size));
    pos.resize(T * C);
    wu.resize(2 * C);
  }
};

namespace {

class Forward {
 public:
  // bf16: the block linears in bfloat16 (their converted weights live in `bf16`); else float32.
  Forward(const Config& c, const TensorMap& p, const OpSet& ops, std::int64_t B, Grid grid, Workspace& work,
          std::map<std::string, ops::LinearBf16>* bf16)
      : c_(c), p_(p), ops_(ops), B_(B), grid_(grid), N_(B * grid.tokens()), C_(c.embed_dims), work_(work),
        bf16_(bf16) {}

  const float* P(const std::string& name) const { return p_.at(name).f32(); }

  // out[N_, n] = in[N_, k]·Wᵀ for the bias-free block linear `weight` ([n, k]).
  void linear(const std::string& weight, const float* in, float* out, std::int64_t n, std::int64_t k) {
    if (!bf16_) return ops_.linear(in, P(weight), nullptr, out, N_, n, k);
    auto it = bf16_->find(weight);
    if (it == bf16_->end()) it = bf16_->try_emplace(weight, P(weight), n, k).first;
    it->second(in, out, N_);
  }

  // x ← LayerNorm(x) (or y ← LayerNorm(x)); rows of width `width`.
  void norm(const std::string& prefix, const float* x, float* y, std::int64_t width) const {
    ops_.layernorm(x, P(prefix + ".weight"), P(prefix + ".bias"), y, N_, width, ops::kLayerNormEps);
  }

  // Q-Shift + mixing for `count` mixes; shift_pixel 0 means the input itself.
  void shift_mix(const float* x, const std::string& prefix, const char* const* names, int count,
                 const float** outs) {
    float* bufs[3] = {work_.xk.data(), work_.xv.data(), work_.xr.data()};
    if (c_.shift_pixel == 0) {
      for (int i = 0; i < count; ++i) outs[i] = x;
      return;
    }
    const float* mu[3];
    for (int i = 0; i < count; ++i) mu[i] = P(prefix + names[i]), outs[i] = bufs[i];
    ops_.q_shift_mix(x, B_, grid_, C_, c_.shift_pixel, c_.channel_gamma, count, mu, bufs);
  }

  // Spatial Mix (VRWKV.md 1.6): out = output(σ(r) ⊙ [LN](BiWKV(w/T, u/T, k, v))).
  void spatial_mix(const std::string& l, const float* x, float* out) {
    static const char* const names[] = {"spatial_mix_k", "spatial_mix_v", "spatial_mix_r"};
    const float* in[3];
    shift_mix(x, l + "att.", names, 3, in);
    linear(l + "att.key.weight", in[0], work_.k.data(), C_, C_);
    linear(l + "att.value.weight", in[1], work_.v.data(), C_, C_);
    linear(l + "att.receptance.weight", in[2], work_.r.data(), C_, C_);
    // w = spatial_decay / T, u = spatial_first / T for this input's T (VRWKV.md 1.6).
    const float T = static_cast<float>(grid_.tokens());
    float *w = work_.wu.data(), *u = w + C_;
    const float *decay = P(l + "att.spatial_decay"), *first = P(l + "att.spatial_first");
    for (std::int64_t c = 0; c < C_; ++c) w[c] = decay[c] / T, u[c] = first[c] / T;
    float* y = work_.xk.data();
    ops_.biwkv(w, u, work_.k.data(), work_.v.data(), y, B_, grid_.tokens(), C_, {c_.wkv, c_.wkv_chunks});
    if (c_.key_norm) norm(l + "att.key_norm", y, y, C_);
    const float* r = work_.r.data();
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < N_ * C_; ++i) y[i] *= ops::sigmoid_fast(r[i]);
    linear(l + "att.output.weight", y, out, C_, C_);
  }

  // Channel Mix (VRWKV.md 1.7): out = σ(receptance(xr)) ⊙ value([LN](relu(key(xk))²)).
  void channel_mix(const std::string& l, const float* x, float* out) {
    static const char* const names[] = {"spatial_mix_k", "spatial_mix_r"};
    const float* in[2];
    shift_mix(x, l + "ffn.", names, 2, in);
    const std::int64_t Hd = c_.hidden_dims;
    // r first: with shift_pixel 0, in[1] is the block input, which `out` may overwrite.
    float* r = work_.r.data();
    linear(l + "ffn.receptance.weight", in[1], r, C_, C_);
    float* hidden = work_.hidden.data();
    linear(l + "ffn.key.weight", in[0], hidden, Hd, C_);
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < N_ * Hd; ++i) {
      const float a = std::max(hidden[i], 0.0f);
      hidden[i] = a * a;
    }
    if (c_.key_norm) ops_.layernorm(hidden, P(l + "ffn.key_norm.weight"), P(l + "ffn.key_norm.bias"), hidden, N_, Hd,
                                    ops::kLayerNormEps);
    linear(l + "ffn.value.weight", hidden, out, C_, Hd);
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < N_ * C_; ++i) out[i] *= ops::sigmoid_fast(r[i]);
  }

  // x ← x + g ⊙ branch (g absent without layer scale).
  void residual(float* x, const float* branch, const std::string& gamma) const {
    const std::int64_t C = C_;
    if (!c_.layer_scale) {
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < N_ * C; ++i) x[i] += branch[i];
      return;
    }
    const float* g = P(gamma);
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N_; ++n)
      for (std::int64_t c = 0; c < C; ++c) x[n * C + c] += g[c] * branch[n * C + c];
  }

  // Block (VRWKV.md 1.4), pre-norm or post-norm.
  void block(std::int64_t i, float* x) {
    const std::string l = "backbone.layers." + std::to_string(i) + ".";
    if (i == 0) norm(l + "ln0", x, x, C_);
    // The branch output overwrites h, which the mixers have finished reading
    // by the time they write it (pre-norm) or never read (post-norm).
    float* h = work_.h.data();
    if (!c_.post_norm) {
      norm(l + "ln1", x, h, C_);
      spatial_mix(l, h, h);
      residual(x, h, l + "gamma1");
      norm(l + "ln2", x, h, C_);
      channel_mix(l, h, h);
      residual(x, h, l + "gamma2");
    } else {
      spatial_mix(l, x, h);
      norm(l + "ln1", h, h, C_);
      residual(x, h, l + "gamma1");
      channel_mix(l, x, h);
      norm(l + "ln2", h, h, C_);
      residual(x, h, l + "gamma2");
    }
  }

 private:
  const Config& c_;
  const TensorMap& p_;
  const OpSet& ops_;
  std::int64_t B_;
  Grid grid_;
  std::int64_t N_, C_;
  Workspace& work_;
  std::map<std::string, ops::LinearBf16>* bf16_;
};

// [B,T,C] tokens to a [B,C,H,W] feature map.
Tensor to_feature_map(const float* x, std::int64_t B, Grid g, std::int64_t C) {
  Tensor f(DType::F32, {B, C, g.H, g.W});
  float* out = f.f32();
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < g.tokens(); ++t)
      for (std::int64_t c = 0; c < C; ++c) out[(b * C + c) * g.tokens() + t] = x[(b * g.tokens() + t) * C + c];
  return f;
}

}  // namespace

struct Model::Cache {
  std::mutex mutex;
  std::unique_ptr<Workspace> workspace;
  std::map<std::string, ops::LinearBf16> bf16;  // converted weights, made on first bf16 use
};

std::shared_ptr<Model::Cache> Model::new_cache() { return std::make_shared<Cache>(); }

Tensor Model::parameter_storage() {
  std::lock_guard<std::mutex> lock(cache_->mutex);
  cache_->bf16.clear();
  return storage_;
}

Outputs Model::forward(const Tensor& input, const ForwardOptions& options) const {
  const Config& c = config_;
  if (input.dtype() != DType::F32 || input.ndim() != 4 || input.dim(1) != c.in_channels)
    input_error("input has shape ", shape_str(input.shape()), " (", dtype_name(input.dtype()), "), expected F32 [B,",
                c.in_channels, ",H,W]");
  const std::int64_t B = input.dim(0), H = input.dim(2), W = input.dim(3), C = c.embed_dims;
  if (B < 1 || H < 1 || W < 1) input_error("input has shape ", shape_str(input.shape()), ", expected B, H, W >= 1");
  if (options.bf16 && options.reference) input_error("bf16 runs on the fast path only, not the reference path");
  const OpSet& ops = options.reference ? kReference : kFast;
  const Grid grid = ops::patch_grid(H, W, c.patch_size), train_grid{c.pos_grid_h, c.pos_grid_w};
  const std::int64_t T = grid.tokens();
  Outputs out;

  std::lock_guard<std::mutex> lock(cache_->mutex);
  std::unique_ptr<Workspace>& work = cache_->workspace;
  if (!work || work->B != B || work->H != H || work->W != W) {
    work.reset();  // free the old shape's buffers before allocating the new ones
    work = std::make_unique<Workspace>(B, H, W, c, T);
  }

  // Patch embedding + position embedding (resized when the grid differs).
  float* xs = work->x.data();
  ops.patch_embed(input.f32(), params_.at("backbone.patch_embed.projection.weight").f32(),
                  params_.at("backbone.patch_embed.projection.bias").f32(), xs, B, c.in_channels, H, W, C,
                  c.patch_size, work->hidden.data());
  const float* pos = params_.at("backbone.pos_embed").f32();
  if (grid.H != train_grid.H || grid.W != train_grid.W) {
    ops.resize_pos_embed(pos, train_grid, work->pos.data(), grid, C);
    pos = work->pos.data();
  }
#pragma omp parallel for schedule(static)
  for (std::int64_t bt = 0; bt < B * T; ++bt)
    for (std::int64_t ch = 0; ch < C; ++ch) xs[bt * C + ch] += pos[(bt % T) * C + ch];
  const auto snapshot = [&] {
    Tensor t(DType::F32, {B, T, C});
    std::copy(xs, xs + B * T * C, t.f32());
    return t;
  };
  if (options.keep_blocks) out.embed = snapshot();

  Forward fwd(c, params_, ops, B, grid, *work, options.bf16 ? &cache_->bf16 : nullptr);
  for (std::int64_t i = 0; i < c.depth; ++i) {
    fwd.block(i, xs);
    if (options.keep_blocks) out.blocks.push_back(snapshot());
    if (i == c.depth - 1 && c.final_norm) fwd.norm("backbone.ln1", xs, xs, C);
    if (std::find(c.out_indices.begin(), c.out_indices.end(), i) != c.out_indices.end())
      out.features.push_back(to_feature_map(xs, B, grid, C));
  }

  // Global average pooling of the last feature map, then the head.
  const Tensor& last = out.features.back();
  out.pooled = Tensor(DType::F32, {B, C});
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t ch = 0; ch < C; ++ch) {
      double s = 0;
      for (std::int64_t t = 0; t < T; ++t) s += last.f32()[(b * C + ch) * T + t];
      out.pooled.f32()[b * C + ch] = static_cast<float>(s / T);
    }
  if (c.head == HeadKind::Linear) {
    out.logits = Tensor(DType::F32, {B, c.num_classes});
    ops.linear(out.pooled.f32(), params_.at("head.fc.weight").f32(), params_.at("head.fc.bias").f32(),
               out.logits.f32(), B, c.num_classes, C);
  } else if (c.head == HeadKind::Mlp) {
    Tensor hidden(DType::F32, {B, c.head_hidden});
    ops.linear(out.pooled.f32(), params_.at("head.0.weight").f32(), params_.at("head.0.bias").f32(), hidden.f32(), B,
               c.head_hidden, C);
    for (std::int64_t i = 0; i < hidden.numel(); ++i) hidden.f32()[i] = std::tanh(hidden.f32()[i]);
    out.logits = Tensor(DType::F32, {B, c.num_classes});
    ops.linear(hidden.f32(), params_.at("head.2.weight").f32(), params_.at("head.2.bias").f32(), out.logits.f32(), B,
               c.num_classes, c.head_hidden);
  }
  return out;
}

}  // namespace vrwkv
