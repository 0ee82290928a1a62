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

// The ops both paths use, in their fast or plain reference versions (the
// block's other ops differ by path: see Forward).
struct OpSet {
  decltype(&ops::linear) linear;  // the head (the blocks' linears differ by path)
  decltype(&ops::layernorm) layernorm;
  decltype(&ops::patch_embed) patch_embed;
  decltype(&ops::resize_pos_embed) resize_pos_embed;
};
constexpr OpSet kFast = {ops::linear, ops::layernorm, ops::patch_embed, ops::resize_pos_embed};
constexpr OpSet kReference = {ops::linear_ref, ops::layernorm_ref, ops::patch_embed_ref, ops::resize_pos_embed_ref};

}  // namespace

// The activations of one forward pass for one input shape, allocated once and
// reused while the shape stays the same (ENGINEERING.md "Memory"): weights +
// O(T·C), nothing O(T²). Buffers whose lives do not overlap share memory.
// On the bf16 fast path the GEMM inputs xk, xv, xr and hidden hold bf16 values
// in the first half of their bytes.
struct Workspace {
  std::int64_t B = 0, H = 0, W = 0;
  std::vector<float> x, h, h2, xk, xv, xr, k, v, r, hidden, pos, wu;
  // im2col patches (only before block 0) live in `hidden`; the WKV output y
  // lives in xk, which is dead once k is computed; branch outputs live in h;
  // the fast pre-norm block keeps LN2's output in h2.
  Workspace(std::int64_t B_, std::int64_t H_, std::int64_t W_, const Config& c, std::int64_t T)
      : B(B_), H(H_), W(W_) {
    const std::int64_t N = B * T, C = c.embed_dims;
    for (auto* buf : {&x, &h, &h2, &xk, &xv, &xr, &k, &v, &r}) buf->resize(N * C);
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

using ops::Activation;
using ops::Activations;
using ops::Epilogue;

// Token rows [begin, end) of a group's B·T rows.
struct Rows {
  std::int64_t begin, end;
  std::int64_t count() const { return end - begin; }
};

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
  // packed == nullptr: reference path. Else the fast path with the blocks'
  // packed linears in the GEMM dtype `gemm`, run by a team of `team` threads.
  Forward(const Config& c, const TensorMap& p, const OpSet& ops, std::int64_t B, Grid grid, Workspace& work,
          const PackedBlocks* packed, DType gemm, int team)
      : c_(c), p_(p), ops_(ops), B_(B), grid_(grid), N_(B * grid.tokens()), C_(c.embed_dims), work_(work),
        packed_(packed), gemm_(gemm), team_(team) {}

  const float* P(const std::string& name) const { return p_.at(name).f32(); }

  // y ← LayerNorm(x) (y may be x) on rows r (default: all) of width `width`.
  void norm(const std::string& prefix, const float* x, float* y, std::int64_t width) const {
    norm(prefix, x, y, width, {0, N_});
  }
  void norm(const std::string& prefix, const float* x, float* y, std::int64_t width, Rows r) const {
    ops_.layernorm(x + r.begin * width, P(prefix + ".weight"), P(prefix + ".bias"), y + r.begin * width, r.count(),
                   width, ops::kLayerNormEps);
  }

  // Block i (VRWKV.md 1.4), pre-norm or post-norm.
  void block(std::int64_t i, float* x) {
    const std::string l = "backbone.layers." + std::to_string(i) + ".";
    if (!packed_) {
      if (i == 0) norm(l + "ln0", x, x, C_);
      return reference_block(l, x);
    }
    if (c_.post_norm) post_norm_block(i, l, x);
    else pre_norm_block(i, l, x);
  }

 private:
  // ---- fast path ----
  //
  // A block is a few team regions. In each, every thread of the team takes
  // its share of the token rows (of the channel blocks for Bi-WKV) and runs
  // the ops on them itself, one after another; the end of a region is the
  // only synchronisation. A region ends where the next step reads rows other
  // threads wrote: Q-Shift reads neighbouring tokens, Bi-WKV all tokens, and
  // the gate every channel of Bi-WKV's output.

  // f(share, shares) on each thread of the team, in one OpenMP region (ops
  // called inside run on the calling thread).
  template <class F>
  void team(F&& f) {
    if (team_ == 1) return f(0, 1);
    std::vector<std::exception_ptr> errors(team_);
#pragma omp parallel num_threads(team_)
    {
      const int share = omp_get_thread_num();
      try {
        f(share, omp_get_num_threads());
      } catch (...) {
        errors[share] = std::current_exception();
      }
    }
    for (const std::exception_ptr& e : errors)
      if (e) std::rethrow_exception(e);
  }
  // f(rows) with each thread's share of the rows (none for a thread whose share is empty).
  template <class F>
  void team_rows(F&& f) {
    team([&](int share, int shares) {
      const Rows r{N_ * share / shares, N_ * (share + 1) / shares};
      if (r.count() > 0) f(r);
    });
  }

  // Pre-norm: h1 holds LN1(x) on entry (from the previous block's last region,
  // or made here for block 0) and the last region makes the next block's. LN2
  // goes to h2, so no thread overwrites rows another thread's Q-Shift reads.
  void pre_norm_block(std::int64_t i, const std::string& l, float* x) {
    PackedBlock& linears = *(*packed_)[i];
    float *h1 = work_.h.data(), *h2 = work_.h2.data();
    if (i == 0) team_rows([&](Rows r) {
        norm(l + "ln0", x, x, C_, r);
        norm(l + "ln1", x, h1, C_, r);
      });
    team_rows([&](Rows r) { spatial_kv(l, linears, h1, r); });
    wkv(l);
    team_rows([&](Rows r) {
      spatial_out(l, linears, h1, x, true, r);
      norm(l + "ln2", x, h2, C_, r);
    });
    team_rows([&](Rows r) {
      channel_mix(l, linears, h2, x, true, r);
      if (i + 1 < c_.depth) norm("backbone.layers." + std::to_string(i + 1) + ".ln1", x, h1, C_, r);
    });
  }

  // Post-norm: the mixes read x around each row, so x is updated only in
  // regions that do not.
  void post_norm_block(std::int64_t i, const std::string& l, float* x) {
    PackedBlock& linears = *(*packed_)[i];
    float* h = work_.h.data();
    if (i == 0) norm(l + "ln0", x, x, C_);
    team_rows([&](Rows r) { spatial_kv(l, linears, x, r); });
    wkv(l);
    team_rows([&](Rows r) {
      spatial_out(l, linears, x, h, false, r);
      norm(l + "ln1", h, h, C_, r);
      residual(x, h, l + "gamma1", r);
    });
    team_rows([&](Rows r) {
      channel_mix(l, linears, x, h, false, r);
      norm(l + "ln2", h, h, C_, r);
    });
    team_rows([&](Rows r) { residual(x, h, l + "gamma2", r); });
  }

  // Rows r of a [N_, width] buffer of activations.
  static Activations rows_of(Activations a, Rows r, std::int64_t width) {
    return {static_cast<char*>(a.data) + r.begin * width * static_cast<std::int64_t>(dtype_size(a.dtype)), a.dtype};
  }
  static Activations f32_rows(float* base, Rows r, std::int64_t width) { return {base + r.begin * width, DType::F32}; }

  // Mix i of the input x: xk, xv or xr in the GEMM dtype, or x itself
  // (float32) with shift_pixel 0.
  Activations mix(int i, const float* x) const {
    if (c_.shift_pixel == 0) return {const_cast<float*>(x), DType::F32};
    float* bufs[3] = {work_.xk.data(), work_.xv.data(), work_.xr.data()};
    return {bufs[i], gemm_};
  }

  // Q-Shift + mixing (VRWKV.md 1.5) of x into the first `count` mixes, rows r.
  void shift_mix(const float* x, const std::string& prefix, const char* const* names, int count, Rows r) const {
    if (c_.shift_pixel == 0) return;
    const float* mu[3];
    void* out[3];
    for (int i = 0; i < count; ++i) mu[i] = P(prefix + names[i]), out[i] = mix(i, x).data;
    if (gemm_ == DType::BF16)
      ops::q_shift_mix_rows(x, grid_, C_, c_.shift_pixel, c_.channel_gamma, count, mu,
                            reinterpret_cast<ops::Bf16* const*>(out), r.begin, r.end);
    else
      ops::q_shift_mix_rows(x, grid_, C_, c_.shift_pixel, c_.channel_gamma, count, mu,
                            reinterpret_cast<float* const*>(out), r.begin, r.end);
  }

  // Spatial Mix (VRWKV.md 1.6), out (+)= output(σ(r) ⊙ [LN](BiWKV(w/T, u/T, k, v))), in three parts:
  // k and v of rows r;
  void spatial_kv(const std::string& l, PackedBlock& linears, const float* x, Rows r) {
    static const char* const names[] = {"spatial_mix_k", "spatial_mix_v", "spatial_mix_r"};
    shift_mix(x, l + "att.", names, 3, r);
    linears.att_key(rows_of(mix(0, x), r, C_), f32_rows(work_.k.data(), r, C_), r.count());
    linears.att_value(rows_of(mix(1, x), r, C_), f32_rows(work_.v.data(), r, C_), r.count());
  }

  // y = BiWKV(w/T, u/T, k, v) into xk (read by now), the team sharing the (image, channel block) problems;
  void wkv(const std::string& l) {
    set_decay(l);
    const float* w = work_.wu.data();
    team([&](int share, int shares) {
      ops::biwkv_share(w, w + C_, work_.k.data(), work_.v.data(), work_.xk.data(), B_, grid_.tokens(), C_,
                       {c_.wkv, c_.wkv_chunks}, share, shares);
    });
  }

  // then, for rows r, g = σ(xr·Wrᵀ) ⊙ [LN](y) in the GEMM dtype (into xv, read by
  // now) and out = g·Woᵀ, or out += γ1 ⊙ g·Woᵀ with add (γ1 folded into Wo).
  void spatial_out(const std::string& l, PackedBlock& linears, const float* x, float* out, bool add, Rows r) {
    float* y = work_.xk.data();
    if (c_.key_norm) norm(l + "att.key_norm", y, y, C_, r);
    const Activations g = rows_of({work_.xv.data(), gemm_}, r, C_);
    linears.att_receptance(rows_of(mix(2, x), r, C_), g, r.count(), {Activation::Sigmoid, y + r.begin * C_, false});
    linears.att_output(g, f32_rows(out, r, C_), r.count(), {Activation::None, nullptr, add});
  }

  // Channel Mix (VRWKV.md 1.7) of rows r: out (+)= σ(receptance(xr)) ⊙ value([LN](relu(key(xk))²)).
  void channel_mix(const std::string& l, PackedBlock& linears, const float* x, float* out, bool add, Rows r) {
    static const char* const names[] = {"spatial_mix_k", "spatial_mix_r"};
    shift_mix(x, l + "ffn.", names, 2, r);
    const std::int64_t n = r.count(), Hd = c_.hidden_dims;
    float* gate = work_.r.data() + r.begin * C_;
    linears.ffn_receptance(rows_of(mix(1, x), r, C_), {gate, DType::F32}, n, {Activation::Sigmoid, nullptr, false});
    // hidden = relu(xk·Wkᵀ)²; float32 when a key norm follows.
    const Activations hidden = rows_of({work_.hidden.data(), c_.key_norm ? DType::F32 : gemm_}, r, Hd);
    linears.ffn_key(rows_of(mix(0, x), r, C_), hidden, n, {Activation::ReluSquare, nullptr, false});
    if (c_.key_norm) {
      float* h = static_cast<float*>(hidden.data);
      ops_.layernorm(h, P(l + "ffn.key_norm.weight"), P(l + "ffn.key_norm.bias"), h, n, Hd, ops::kLayerNormEps);
    }
    linears.ffn_value(hidden, f32_rows(out, r, C_), n, {Activation::None, gate, add});
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
    ops::linear_ref(in, P(weight), nullptr, out, N_, n, k);
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
    ops::q_shift_mix_ref(x, B_, grid_, C_, c_.shift_pixel, c_.channel_gamma, count, mu, bufs);
  }

  void reference_spatial_mix(const std::string& l, const float* x, float* out) {
    static const char* const names[] = {"spatial_mix_k", "spatial_mix_v", "spatial_mix_r"};
    const float* in[3];
    reference_shift_mix(x, l + "att.", names, 3, in);
    linear(l + "att.key.weight", in[0], work_.k.data(), C_, C_);
    linear(l + "att.value.weight", in[1], work_.v.data(), C_, C_);
    linear(l + "att.receptance.weight", in[2], work_.r.data(), C_, C_);
    float* y = work_.xk.data();
    reference_wkv(l, work_.k.data(), work_.v.data(), y);
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

  // w = spatial_decay / T, u = spatial_first / T for this input's T (VRWKV.md 1.6), into work_.wu.
  void set_decay(const std::string& l) {
    const float T = static_cast<float>(grid_.tokens());
    float *w = work_.wu.data(), *u = w + C_;
    const float *decay = P(l + "att.spatial_decay"), *first = P(l + "att.spatial_first");
    for (std::int64_t c = 0; c < C_; ++c) w[c] = decay[c] / T, u[c] = first[c] / T;
  }

  // y = BiWKV(w/T, u/T, k, v) (reference path).
  void reference_wkv(const std::string& l, const float* k, const float* v, float* y) {
    set_decay(l);
    ops::biwkv_ref_all(work_.wu.data(), work_.wu.data() + C_, k, v, y, B_, grid_.tokens(), C_,
                       {c_.wkv, c_.wkv_chunks});
  }

  // x ← x + g ⊙ branch on rows r (default: all); g absent without layer scale.
  void residual(float* x, const float* branch, const std::string& gamma) const { residual(x, branch, gamma, {0, N_}); }
  void residual(float* x, const float* branch, const std::string& gamma, Rows r) const {
    const std::int64_t C = C_;
    const float* g = c_.layer_scale ? P(gamma) : nullptr;
#pragma omp parallel for schedule(static)
    for (std::int64_t n = r.begin; n < r.end; ++n)
      for (std::int64_t c = 0; c < C; ++c) x[n * C + c] += (g ? g[c] : 1.0f) * branch[n * C + c];
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
  int team_;
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
  // no synchronisation between ops. Otherwise one group, its rows shared by a
  // team of all threads (Forward's team regions).
  const int threads = omp_get_max_threads();
  const bool split = !options.reference && threads > 1 && B >= threads && omp_get_max_active_levels() == 1 &&
                     (B % threads == 0 || B >= 4 * threads);
  const std::int64_t groups = split ? threads : 1;
  const int team = options.reference || split ? 1 : threads;
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
  for (std::size_t i = 0; i < c.out_indices.size(); ++i)
    out.features.emplace_back(DType::F32, std::vector<std::int64_t>{B, C, grid.H, grid.W});

  // Images [b0, b0 + n) through the backbone in workspace `work`.
  const auto backbone = [&](std::int64_t b0, std::int64_t n, Workspace& work) {
    // Patch embedding + position embedding.
    float* xs = work.x.data();
    ops.patch_embed(input.f32() + b0 * c.in_channels * H * W,
                    params_.at("backbone.patch_embed.projection.weight").f32(),
                    params_.at("backbone.patch_embed.projection.bias").f32(), xs, n, c.in_channels, H, W, C,
                    c.patch_size, work.hidden.data());
#pragma omp parallel for schedule(static)
    for (std::int64_t bt = 0; bt < n * T; ++bt)
      for (std::int64_t ch = 0; ch < C; ++ch) xs[bt * C + ch] += pos[(bt % T) * C + ch];
    const auto snapshot = [&](Tensor& t) { std::copy(xs, xs + n * T * C, t.f32() + b0 * T * C); };
    if (options.keep_blocks) snapshot(out.embed);

    Forward fwd(c, params_, ops, n, grid, work, packed, gemm, team);
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
