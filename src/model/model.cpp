// The VRWKV forward pass (VRWKV.md 1.1-1.8): patch embedding, position
// embedding, blocks of Spatial Mix and Channel Mix, final norm, out indices,
// global average pooling and head.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>

#include <omp.h>

#include "ops/biwkv.hpp"
#include "ops/fast_math.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/packed_linear.hpp"
#include "ops/patch_embed.hpp"
#include "ops/pos_embed.hpp"
#include "ops/qshift.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/model.hpp"

namespace vrwkv {

namespace {

using ops::Grid;

// The per-op functions of a forward pass: the fast ones or the plain references.
struct OpSet {
  decltype(&ops::linear) linear;
  decltype(&ops::layernorm) layernorm;
  void (*q_shift_mix)(const float*, std::int64_t, Grid, std::int64_t, int, double, int, const float* const*,
                      float* const*);
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
// On the bf16 fast path the GEMM inputs xk, xv, xr and hidden hold bf16 values
// in the first half of their bytes.
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

// The block linears of the fast path, packed once per GEMM dtype. In a
// pre-norm block with layer scale, γ1 and γ2 are folded into the rows of
// att.output and ffn.value, whose epilogues then add to the residual stream.
struct PackedBlock {
  ops::PackedLinear att_key, att_value, att_receptance, att_output, ffn_key, ffn_value, ffn_receptance;
};
using PackedBlocks = std::vector<std::unique_ptr<PackedBlock>>;

namespace {
PackedBlocks pack_blocks(const Config& c, const TensorMap& p, DType dtype) {
  PackedBlocks blocks;
  const std::int64_t C = c.embed_dims, Hd = c.hidden_dims;
  for (std::int64_t i = 0; i < c.depth; ++i) {
    const std::string l = "backbone.layers." + std::to_string(i) + ".";
    const auto W = [&](const std::string& name) { return p.at(l + name).f32(); };
    const auto gamma = [&](const char* name) {
      return c.layer_scale && !c.post_norm ? p.at(l + name).f32() : nullptr;
    };
    blocks.push_back(std::unique_ptr<PackedBlock>(new PackedBlock{
        {W("att.key.weight"), C, C, dtype},
        {W("att.value.weight"), C, C, dtype},
        {W("att.receptance.weight"), C, C, dtype},
        {W("att.output.weight"), C, C, dtype, gamma("gamma1")},
        {W("ffn.key.weight"), Hd, C, dtype},
        {W("ffn.value.weight"), C, Hd, dtype, gamma("gamma2")},
        {W("ffn.receptance.weight"), C, C, dtype}}));
  }
  return blocks;
}
}  // namespace

namespace {

using ops::Activation;
using ops::Activations;
using ops::Epilogue;

// One forward pass through the blocks. Two implementations of each block, with
// the same arithmetic in a different order:
//  - reference (ForwardOptions::reference): VRWKV.md step by step, one plain
//    op after another (float64 accumulation);
//  - fast: packed oneDNN matmuls whose epilogues carry the element-wise work
//    (σ gates, relu², residual; a pre-norm layer scale folded into the
//    weights), Q-Shift + mixing writing the GEMM inputs directly in the GEMM's
//    dtype, float32 or bf16.
class Forward {
 public:
  // packed == nullptr: reference path; else the blocks' packed linears in the GEMM dtype `gemm`.
  Forward(const Config& c, const TensorMap& p, const OpSet& ops, std::int64_t B, Grid grid, Workspace& work,
          const PackedBlocks* packed, DType gemm)
      : c_(c), p_(p), ops_(ops), B_(B), grid_(grid), N_(B * grid.tokens()), C_(c.embed_dims), work_(work),
        packed_(packed), gemm_(gemm) {}

  const float* P(const std::string& name) const { return p_.at(name).f32(); }

  // y ← LayerNorm(x) (y may be x); rows of width `width`.
  void norm(const std::string& prefix, const float* x, float* y, std::int64_t width) const {
    ops_.layernorm(x, P(prefix + ".weight"), P(prefix + ".bias"), y, N_, width, ops::kLayerNormEps);
  }

  // Block (VRWKV.md 1.4), pre-norm or post-norm.
  void block(std::int64_t i, float* x) {
    const std::string l = "backbone.layers." + std::to_string(i) + ".";
    if (i == 0) norm(l + "ln0", x, x, C_);
    if (!packed_) return reference_block(l, x);
    PackedBlock& linears = *(*packed_)[i];
    float* h = work_.h.data();
    if (!c_.post_norm) {
      norm(l + "ln1", x, h, C_);
      spatial_mix(l, linears, h, x, true);
      norm(l + "ln2", x, h, C_);
      channel_mix(l, linears, h, x, true);
    } else {
      spatial_mix(l, linears, x, h, false);
      norm(l + "ln1", h, h, C_);
      residual(x, h, l + "gamma1");
      channel_mix(l, linears, x, h, false);
      norm(l + "ln2", h, h, C_);
      residual(x, h, l + "gamma2");
    }
  }

 private:
  // ---- fast path ----

  Activations f32(float* p) const { return {p, DType::F32}; }
  Activations gemm_input(float* p) const { return {p, gemm_}; }

  // Q-Shift + mixing of x into the first `count` of xk, xv, xr (GEMM dtype);
  // with shift_pixel 0 every mix is x itself.
  void shift_mix(const float* x, const std::string& prefix, const char* const* names, int count, Activations* outs) {
    float* bufs[3] = {work_.xk.data(), work_.xv.data(), work_.xr.data()};
    if (c_.shift_pixel == 0) {
      for (int i = 0; i < count; ++i) outs[i] = f32(const_cast<float*>(x));
      return;
    }
    const float* mu[3];
    for (int i = 0; i < count; ++i) mu[i] = P(prefix + names[i]), outs[i] = gemm_input(bufs[i]);
    if (gemm_ == DType::BF16) {
      ops::Bf16* b[3] = {reinterpret_cast<ops::Bf16*>(bufs[0]), reinterpret_cast<ops::Bf16*>(bufs[1]),
                         reinterpret_cast<ops::Bf16*>(bufs[2])};
      ops::q_shift_mix(x, B_, grid_, C_, c_.shift_pixel, c_.channel_gamma, count, mu, b);
    } else {
      ops::q_shift_mix(x, B_, grid_, C_, c_.shift_pixel, c_.channel_gamma, count, mu, bufs);
    }
  }

  // Spatial Mix (VRWKV.md 1.6): output(σ(r) ⊙ [LN](BiWKV(w/T, u/T, k, v))).
  // add_to_out: out += γ1 ⊙ result (pre-norm residual), else out = result.
  void spatial_mix(const std::string& l, PackedBlock& linears, const float* x, float* out, bool add_to_out) {
    static const char* const names[] = {"spatial_mix_k", "spatial_mix_v", "spatial_mix_r"};
    Activations in[3];
    shift_mix(x, l + "att.", names, 3, in);
    float *k = work_.k.data(), *v = work_.v.data();
    linears.att_key(in[0], f32(k), N_);
    linears.att_value(in[1], f32(v), N_);
    float* y = work_.xk.data();  // xk is read
    wkv(l, k, v, y);
    if (c_.key_norm) norm(l + "att.key_norm", y, y, C_);
    // g = σ(xr·Wrᵀ) ⊙ y, written in the GEMM dtype into xv (read by now).
    const Activations g = gemm_input(work_.xv.data());
    linears.att_receptance(in[2], g, N_, {Activation::Sigmoid, y, false});
    linears.att_output(g, f32(out), N_, {Activation::None, nullptr, add_to_out});
  }

  // Channel Mix (VRWKV.md 1.7): σ(receptance(xr)) ⊙ value([LN](relu(key(xk))²)).
  void channel_mix(const std::string& l, PackedBlock& linears, const float* x, float* out, bool add_to_out) {
    static const char* const names[] = {"spatial_mix_k", "spatial_mix_r"};
    Activations in[2];
    shift_mix(x, l + "ffn.", names, 2, in);
    const std::int64_t Hd = c_.hidden_dims;
    float* gate = work_.r.data();
    linears.ffn_receptance(in[1], f32(gate), N_, {Activation::Sigmoid, nullptr, false});
    // hidden = relu(xk·Wkᵀ)²; float32 when a key norm follows.
    const Activations hidden = c_.key_norm ? f32(work_.hidden.data()) : gemm_input(work_.hidden.data());
    linears.ffn_key(in[0], hidden, N_, {Activation::ReluSquare, nullptr, false});
    if (c_.key_norm)
      ops_.layernorm(work_.hidden.data(), P(l + "ffn.key_norm.weight"), P(l + "ffn.key_norm.bias"),
                     work_.hidden.data(), N_, Hd, ops::kLayerNormEps);
    linears.ffn_value(hidden, f32(out), N_, {Activation::None, gate, add_to_out});
  }

  // ---- reference path ----

  void reference_block(const std::string& l, float* x) {
    // The branch output overwrites h, which the mixers have finished reading
    // by the time they write it (pre-norm) or never read (post-norm).
    float* h = work_.h.data();
    if (!c_.post_norm) {
      norm(l + "ln1", x, h, C_);
      reference_spatial_mix(l, h, h);
      residual(x, h, l + "gamma1");
      norm(l + "ln2", x, h, C_);
      reference_channel_mix(l, h, h);
      residual(x, h, l + "gamma2");
    } else {
      reference_spatial_mix(l, x, h);
      norm(l + "ln1", h, h, C_);
      residual(x, h, l + "gamma1");
      reference_channel_mix(l, x, h);
      norm(l + "ln2", h, h, C_);
      residual(x, h, l + "gamma2");
    }
  }

  // out[N_, n] = in[N_, k]·Wᵀ for the bias-free block linear `weight` ([n, k]).
  void linear(const std::string& weight, const float* in, float* out, std::int64_t n, std::int64_t k) {
    ops_.linear(in, P(weight), nullptr, out, N_, n, k);
  }

  void reference_shift_mix(const float* x, const std::string& prefix, const char* const* names, int count,
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

  void reference_spatial_mix(const std::string& l, const float* x, float* out) {
    static const char* const names[] = {"spatial_mix_k", "spatial_mix_v", "spatial_mix_r"};
    const float* in[3];
    reference_shift_mix(x, l + "att.", names, 3, in);
    linear(l + "att.key.weight", in[0], work_.k.data(), C_, C_);
    linear(l + "att.value.weight", in[1], work_.v.data(), C_, C_);
    linear(l + "att.receptance.weight", in[2], work_.r.data(), C_, C_);
    float* y = work_.xk.data();
    wkv(l, work_.k.data(), work_.v.data(), y);
    if (c_.key_norm) norm(l + "att.key_norm", y, y, C_);
    const float* r = work_.r.data();
    for (std::int64_t i = 0; i < N_ * C_; ++i) y[i] = static_cast<float>(y[i] / (1.0 + std::exp(-double(r[i]))));
    linear(l + "att.output.weight", y, out, C_, C_);
  }

  void reference_channel_mix(const std::string& l, const float* x, float* out) {
    static const char* const names[] = {"spatial_mix_k", "spatial_mix_r"};
    const float* in[2];
    reference_shift_mix(x, l + "ffn.", names, 2, in);
    const std::int64_t Hd = c_.hidden_dims;
    // r first: with shift_pixel 0, in[1] is the block input, which `out` may overwrite.
    float* r = work_.r.data();
    linear(l + "ffn.receptance.weight", in[1], r, C_, C_);
    float* hidden = work_.hidden.data();
    linear(l + "ffn.key.weight", in[0], hidden, Hd, C_);
    for (std::int64_t i = 0; i < N_ * Hd; ++i) {
      const float a = std::max(hidden[i], 0.0f);
      hidden[i] = a * a;
    }
    if (c_.key_norm) ops_.layernorm(hidden, P(l + "ffn.key_norm.weight"), P(l + "ffn.key_norm.bias"), hidden, N_, Hd,
                                    ops::kLayerNormEps);
    linear(l + "ffn.value.weight", hidden, out, C_, Hd);
    for (std::int64_t i = 0; i < N_ * C_; ++i) out[i] = static_cast<float>(out[i] / (1.0 + std::exp(-double(r[i]))));
  }

  // ---- shared ----

  // y = BiWKV(w/T, u/T, k, v) for this input's T (VRWKV.md 1.6).
  void wkv(const std::string& l, const float* k, const float* v, float* y) {
    const float T = static_cast<float>(grid_.tokens());
    float *w = work_.wu.data(), *u = w + C_;
    const float *decay = P(l + "att.spatial_decay"), *first = P(l + "att.spatial_first");
    for (std::int64_t c = 0; c < C_; ++c) w[c] = decay[c] / T, u[c] = first[c] / T;
    ops_.biwkv(w, u, k, v, y, B_, grid_.tokens(), C_, {c_.wkv, c_.wkv_chunks});
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

  const Config& c_;
  const TensorMap& p_;
  const OpSet& ops_;
  std::int64_t B_;
  Grid grid_;
  std::int64_t N_, C_;
  Workspace& work_;
  const PackedBlocks* packed_;
  DType gemm_;
};

// [B,T,C] tokens to a [B,C,H,W] feature map.
void to_feature_map(const float* x, std::int64_t B, Grid g, std::int64_t C, float* out) {
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < g.tokens(); ++t)
      for (std::int64_t c = 0; c < C; ++c) out[(b * C + c) * g.tokens() + t] = x[(b * g.tokens() + t) * C + c];
}

}  // namespace

struct Model::Cache {
  std::mutex mutex;
  std::vector<std::unique_ptr<Workspace>> workspaces;  // one per image group
  std::map<DType, PackedBlocks> packed;                // the fast path's linears, packed on first use per dtype
};

std::shared_ptr<Model::Cache> Model::new_cache() { return std::make_shared<Cache>(); }

Tensor Model::parameter_storage() {
  parameters_updated();
  return storage_;
}

void Model::parameters_updated() {
  std::lock_guard<std::mutex> lock(cache_->mutex);
  cache_->packed.clear();
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
  std::lock_guard<std::mutex> lock(cache_->mutex);

  // The fast path runs a batch as one group of images per thread when it
  // splits evenly enough: each group's ops then run on their own thread, with
  // no synchronisation between ops. Otherwise one group, every op parallel.
  const std::int64_t threads = omp_get_max_threads();
  const bool split = !options.reference && threads > 1 && B >= threads && omp_get_max_active_levels() == 1 &&
                     (B % threads == 0 || B >= 4 * threads);
  const std::int64_t groups = split ? threads : 1;
  const auto first_image = [&](std::int64_t g) { return B * g / groups; };
  auto& works = cache_->workspaces;
  bool fits = static_cast<std::int64_t>(works.size()) == groups;
  for (std::int64_t g = 0; fits && g < groups; ++g)
    fits = works[g]->B == first_image(g + 1) - first_image(g) && works[g]->H == H && works[g]->W == W;
  if (!fits) {
    works.clear();  // free the old shape's buffers before allocating the new ones
    for (std::int64_t g = 0; g < groups; ++g)
      works.push_back(std::make_unique<Workspace>(first_image(g + 1) - first_image(g), H, W, c, T));
  }
  const DType gemm = options.bf16 ? DType::BF16 : DType::F32;
  const PackedBlocks* packed = nullptr;
  if (!options.reference) {
    PackedBlocks& blocks = cache_->packed[gemm];
    if (blocks.empty()) blocks = pack_blocks(c, params_, gemm);
    packed = &blocks;
  }

  // The position embedding, resized when the grid differs.
  const float* pos = params_.at("backbone.pos_embed").f32();
  if (grid.H != train_grid.H || grid.W != train_grid.W) {
    ops.resize_pos_embed(pos, train_grid, works[0]->pos.data(), grid, C);
    pos = works[0]->pos.data();
  }

  Outputs out;
  if (options.keep_blocks) {
    out.embed = Tensor(DType::F32, {B, T, C});
    for (std::int64_t i = 0; i < c.depth; ++i) out.blocks.emplace_back(DType::F32, std::vector<std::int64_t>{B, T, C});
  }
  for (std::size_t i = 0; i < c.out_indices.size(); ++i) out.features.emplace_back(DType::F32, std::vector<std::int64_t>{B, C, grid.H, grid.W});

  // Images [b0, b0 + n) through the backbone in workspace `work`.
  const auto backbone = [&](std::int64_t b0, std::int64_t n, Workspace& work) {
    // Patch embedding + position embedding.
    float* xs = work.x.data();
    ops.patch_embed(input.f32() + b0 * c.in_channels * H * W, params_.at("backbone.patch_embed.projection.weight").f32(),
                    params_.at("backbone.patch_embed.projection.bias").f32(), xs, n, c.in_channels, H, W, C,
                    c.patch_size, work.hidden.data());
#pragma omp parallel for schedule(static)
    for (std::int64_t bt = 0; bt < n * T; ++bt)
      for (std::int64_t ch = 0; ch < C; ++ch) xs[bt * C + ch] += pos[(bt % T) * C + ch];
    const auto snapshot = [&](Tensor& t) { std::copy(xs, xs + n * T * C, t.f32() + b0 * T * C); };
    if (options.keep_blocks) snapshot(out.embed);

    Forward fwd(c, params_, ops, n, grid, work, packed, gemm);
    for (std::int64_t i = 0; i < c.depth; ++i) {
      fwd.block(i, xs);
      if (options.keep_blocks) snapshot(out.blocks[i]);
      if (i == c.depth - 1 && c.final_norm) fwd.norm("backbone.ln1", xs, xs, C);
      const auto at = std::find(c.out_indices.begin(), c.out_indices.end(), i);
      if (at != c.out_indices.end())
        to_feature_map(xs, n, grid, C, out.features[at - c.out_indices.begin()].f32() + b0 * C * T);
    }
  };
  if (groups == 1) {
    backbone(0, B, *works[0]);
  } else {
    std::exception_ptr error;
#pragma omp parallel for num_threads(groups) schedule(static, 1)
    for (std::int64_t g = 0; g < groups; ++g) {
      try {
        backbone(first_image(g), first_image(g + 1) - first_image(g), *works[g]);
      } catch (...) {
#pragma omp critical(vrwkv_forward_error)
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
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
