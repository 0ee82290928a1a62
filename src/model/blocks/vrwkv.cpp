// The VRWKV block (VRWKV.md 1.4-1.7): Spatial Mix (Q-Shift, Bi-WKV, σ gate)
// and Channel Mix (Q-Shift, squared-ReLU FFN, σ gate), pre-norm or post-norm,
// with optional layer scale and key norms, and the ablation's variants
// (ABLATION.md B.3): the 1-D shift or none, the uni-directional WKV, RWKV-4's
// decay. This file holds everything of the
// kind: its parameter rows (the only place its names are written), its fast
// inference implementation and its training implementation (forward keeping
// a tape, backward). The reference forward is the training forward with the
// _ref ops (model/block.hpp).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include <omp.h>

#include "model/block.hpp"
#include "model/blocks/parts.hpp"
#include "ops/biwkv.hpp"
#include "ops/fast_math.hpp"
#include "ops/gate.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/packed_linear.hpp"
#include "ops/qshift.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::model {

namespace {

using ops::Grid;

// ---- parameters ----

struct VrwkvWeights {
  float *gamma1, *gamma2;  // layer scale
  float *ln0_weight, *ln0_bias, *ln1_weight, *ln1_bias, *ln2_weight, *ln2_bias;
  // Spatial Mix (att.*)
  float *spatial_decay, *spatial_first, *att_mix_k, *att_mix_v, *att_mix_r;
  float *att_key, *att_value, *att_receptance, *att_output, *att_key_norm_weight, *att_key_norm_bias;
  // Channel Mix (ffn.*)
  float *ffn_mix_k, *ffn_mix_r, *ffn_key, *ffn_receptance, *ffn_value, *ffn_key_norm_weight, *ffn_key_norm_bias;
};

// One block's rows in storage order (the order of the official state dict).
const std::vector<ParamRow<VrwkvWeights>>& rows() {
  using D = Dim;
  using W = VrwkvWeights;
  const std::vector<Dim> c{D::C}, mix{D::One, D::One, D::C}, cc{D::C, D::C};
  static const std::vector<ParamRow<W>> r = {
      {{"gamma1", c, When::LayerScale, Init::LayerScale, Cost::None, true}, &W::gamma1},
      {{"gamma2", c, When::LayerScale, Init::LayerScale, Cost::None, true}, &W::gamma2},
      {{"ln1.weight", c, When::Always, Init::One, Cost::Norm, false}, &W::ln1_weight},
      {{"ln1.bias", c, When::Always, Init::Zero, Cost::None, false}, &W::ln1_bias},
      {{"ln2.weight", c, When::Always, Init::One, Cost::Norm, false}, &W::ln2_weight},
      {{"ln2.bias", c, When::Always, Init::Zero, Cost::None, false}, &W::ln2_bias},
      {{"ln0.weight", c, When::FirstBlock, Init::One, Cost::Norm, false}, &W::ln0_weight},
      {{"ln0.bias", c, When::FirstBlock, Init::Zero, Cost::None, false}, &W::ln0_bias},
      {{"att.spatial_decay", c, When::Always, Init::SpatialDecay, Cost::None, true}, &W::spatial_decay},
      {{"att.spatial_first", c, When::Always, Init::SpatialFirst, Cost::None, true}, &W::spatial_first},
      {{"att.spatial_mix_k", mix, When::Shift, Init::MixK, Cost::None, true}, &W::att_mix_k},
      {{"att.spatial_mix_v", mix, When::Shift, Init::MixV, Cost::None, true}, &W::att_mix_v},
      {{"att.spatial_mix_r", mix, When::Shift, Init::MixR, Cost::None, true}, &W::att_mix_r},
      {{"att.key.weight", cc, When::Always, Init::TruncNormal, Cost::PerToken, true}, &W::att_key},
      {{"att.value.weight", cc, When::Always, Init::TruncNormal, Cost::PerToken, true}, &W::att_value},
      {{"att.receptance.weight", cc, When::Always, Init::TruncNormal, Cost::PerToken, true}, &W::att_receptance},
      {{"att.output.weight", cc, When::Always, Init::TruncNormal, Cost::PerToken, true}, &W::att_output},
      {{"att.key_norm.weight", c, When::KeyNorm, Init::One, Cost::Norm, false}, &W::att_key_norm_weight},
      {{"att.key_norm.bias", c, When::KeyNorm, Init::Zero, Cost::None, false}, &W::att_key_norm_bias},
      {{"ffn.spatial_mix_k", mix, When::Shift, Init::MixK, Cost::None, true}, &W::ffn_mix_k},
      {{"ffn.spatial_mix_r", mix, When::Shift, Init::MixK, Cost::None, true}, &W::ffn_mix_r},
      {{"ffn.key.weight", {D::Hidden, D::C}, When::Always, Init::TruncNormal, Cost::PerToken, true}, &W::ffn_key},
      {{"ffn.receptance.weight", cc, When::Always, Init::TruncNormal, Cost::PerToken, true}, &W::ffn_receptance},
      {{"ffn.value.weight", {D::C, D::Hidden}, When::Always, Init::TruncNormal, Cost::PerToken, true},
       &W::ffn_value},
      {{"ffn.key_norm.weight", {D::Hidden}, When::KeyNorm, Init::One, Cost::Norm, false}, &W::ffn_key_norm_weight},
      {{"ffn.key_norm.bias", {D::Hidden}, When::KeyNorm, Init::Zero, Cost::None, false}, &W::ffn_key_norm_bias},
  };
  return r;
}

std::vector<ParamInfo> row_infos() {
  std::vector<ParamInfo> out;
  for (const auto& r : rows()) out.push_back(r.info);
  return out;
}

// Beyond the linears and norms, by the official convention: 29·T·C per block.
double extra_flops(const Architecture& a, double tokens) { return 29 * tokens * a.embed_dims; }

std::vector<VrwkvWeights> bind_blocks(const Architecture& a, const Lookup& lookup) {
  std::vector<VrwkvWeights> w(a.depth);
  for (std::int64_t i = 0; i < a.depth; ++i) bind_rows(w[i], rows(), a, i, lookup);
  return w;
}

// The attention's operands w (wu[0, C)) and u (wu[C, 2C)) for an input of T
// tokens: w = spatial_decay/T, u = spatial_first/T (VRWKV.md 1.6), or RWKV-4's
// w = exp(spatial_decay), u = spatial_first (ABLATION.md B.3), with the
// exponent held at 80 (w ≤ 5.5e34, a decay e^{−w} of exactly 0 either way),
// so that w and its gradient stay finite in float32.
constexpr float kMaxDecayExponent = 80.0f;
void decay_first(const Architecture& a, const VrwkvWeights& w, std::int64_t T, float* wu) {
  const std::int64_t C = a.embed_dims;
  const float t = static_cast<float>(T);
  for (std::int64_t c = 0; c < C; ++c)
    if (a.wkv_decay == WkvDecay::Rwkv4)
      wu[c] = std::exp(std::min(w.spatial_decay[c], kMaxDecayExponent)), wu[C + c] = w.spatial_first[c];
    else wu[c] = w.spatial_decay[c] / t, wu[C + c] = w.spatial_first[c] / t;
}

// Adds the gradients of spatial_decay and spatial_first from those of the
// operands, gwu = (dL/dw, dL/du); wu as decay_first made it (above the held
// exponent, w does not depend on spatial_decay).
void decay_first_backward(const Architecture& a, const VrwkvWeights& w, const float* wu, const float* gwu,
                          std::int64_t T, const VrwkvWeights& G) {
  const std::int64_t C = a.embed_dims;
  for (std::int64_t c = 0; c < C; ++c)
    if (a.wkv_decay == WkvDecay::Rwkv4) {
      if (w.spatial_decay[c] < kMaxDecayExponent) G.spatial_decay[c] += gwu[c] * wu[c];
      G.spatial_first[c] += gwu[C + c];
    }
    else G.spatial_decay[c] += gwu[c] / T, G.spatial_first[c] += gwu[C + c] / T;
}

// The attention of an architecture: the run's semantics, the model's direction.
ops::Wkv wkv_of(const Architecture& a, ops::Wkv run) {
  run.direction = a.wkv_direction;
  return run;
}

// ---- fast inference ----

// The activations of one image group for one input shape, allocated once and
// reused while the shape stays the same (ENGINEERING.md "Memory"): O(T·C),
// nothing O(T²). Buffers whose lives do not overlap share memory. On the bf16
// path the GEMM inputs xk, xv, xr and hidden hold bf16 values in the first
// half of their bytes. The WKV output y lives in xk, dead once k is made;
// branch outputs live in h; the pre-norm block keeps LN2's output in h2.
struct Workspace {
  std::int64_t B = 0;
  Grid grid;
  std::vector<float> h, h2, xk, xv, xr, k, v, r, hidden, wu;
  Workspace(std::int64_t B_, Grid g, const Architecture& a) : B(B_), grid(g) {
    const std::int64_t N = B * g.tokens(), C = a.embed_dims;
    for (auto* buf : {&h, &h2, &xk, &xv, &xr, &k, &v, &r}) buf->resize(N * C);
    hidden.resize(N * a.hidden_dims);
    wu.resize(2 * C);
  }
};

// The block linears, packed once per GEMM dtype. In a pre-norm block with
// layer scale, γ1 and γ2 are folded into the rows of att.output and
// ffn.value, whose epilogues then add to the residual stream.
struct PackedBlock {
  ops::PackedLinear att_key, att_value, att_receptance, att_output, ffn_key, ffn_value, ffn_receptance;
};

using ops::Activation;
using ops::Activations;

using parts::Rows;

class FastVrwkv final : public FastBlocks {
 public:
  FastVrwkv(const Architecture& a, const Lookup& lookup) : a_(a), w_(bind_blocks(a, lookup)) {}

  void prepare(const std::vector<std::int64_t>& images, Grid grid, DType gemm, ops::Wkv wkv) override {
    bool fits = works_.size() == images.size();
    for (std::size_t g = 0; fits && g < images.size(); ++g)
      fits = works_[g]->B == images[g] && works_[g]->grid.H == grid.H && works_[g]->grid.W == grid.W;
    if (!fits) {
      works_.clear();  // free the old shape's buffers before allocating the new ones
      for (std::int64_t n : images) works_.push_back(std::make_unique<Workspace>(n, grid, a_));
    }
    gemm_ = gemm, wkv_ = wkv_of(a_, wkv);
    std::vector<std::unique_ptr<PackedBlock>>& blocks = packed_[gemm];
    if (blocks.empty()) blocks = pack(gemm);
  }

  void parameters_updated() override { packed_.clear(); }

  void run(float* x, std::int64_t n, std::int64_t begin, std::int64_t end, int team, int group) override {
    Block b{a_, *works_.at(group), packed_.at(gemm_), w_, gemm_, wkv_, team, n, x};
    for (std::int64_t i = begin; i < end; ++i) b.block(i, i == begin, i + 1 < end);
  }

 private:
  std::vector<std::unique_ptr<PackedBlock>> pack(DType dtype) const {
    std::vector<std::unique_ptr<PackedBlock>> blocks;
    const std::int64_t C = a_.embed_dims, Hd = a_.hidden_dims;
    const bool fold = a_.layer_scale && !a_.post_norm;
    for (const VrwkvWeights& w : w_)
      blocks.push_back(std::unique_ptr<PackedBlock>(new PackedBlock{
          {w.att_key, C, C, dtype},
          {w.att_value, C, C, dtype},
          {w.att_receptance, C, C, dtype},
          {w.att_output, C, C, dtype, fold ? w.gamma1 : nullptr},
          {w.ffn_key, Hd, C, dtype},
          {w.ffn_value, C, Hd, dtype, fold ? w.gamma2 : nullptr},
          {w.ffn_receptance, C, C, dtype}}));
    return blocks;
  }

  // Blocks of one group of n images: packed oneDNN matmuls whose epilogues
  // carry the element-wise work (σ gates, relu², residual; a pre-norm layer
  // scale folded into the weights), Q-Shift + mixing writing the GEMM inputs
  // directly in the GEMM's dtype, float32 or bf16.
  //
  // A block is a few team regions. In each, every thread of the team takes
  // its share of the token rows (of the channel blocks for Bi-WKV) and runs
  // the ops on them itself, one after another; the end of a region is the
  // only synchronisation. A region ends where the next step reads rows other
  // threads wrote: Q-Shift reads neighbouring tokens, Bi-WKV all tokens, and
  // the gate every channel of Bi-WKV's output.
  struct Block {
    const Architecture& a;
    Workspace& work;
    const std::vector<std::unique_ptr<PackedBlock>>& packed;
    const std::vector<VrwkvWeights>& weights;
    DType gemm;
    ops::Wkv wkv_semantics;
    int team_size;
    std::int64_t B;
    float* x;
    std::int64_t N = B * work.grid.tokens(), C = a.embed_dims;

    // Block i (parts::run_block). `first`: no earlier block of this run made
    // its LN1 input; `fuse_next`: the next block runs in this range.
    void block(std::int64_t i, bool first, bool fuse_next) {
      parts::run_block(*this, weights, i, first, fuse_next, a.post_norm, x, work.h.data(), work.h2.data(), N, C,
                       team_size);
    }
    // The steps of run_block.
    void spatial_in(std::int64_t i, const float* in, Rows r) { spatial_kv(weights[i], *packed[i], in, r); }
    void wkv(std::int64_t i) { wkv(weights[i]); }
    void spatial_out(std::int64_t i, const float* in, float* out, bool add, Rows r) {
      spatial_out(weights[i], *packed[i], in, out, add, r);
    }
    void channel_mix(std::int64_t i, const float* in, float* out, bool add, Rows r) {
      channel_mix(weights[i], *packed[i], in, out, add, r);
    }

    template <class F>
    void team(F&& f) {
      parts::run_team(team_size, f);
    }

    // y ← LayerNorm(x) (y may be x) on rows r of width `width`.
    void norm(const float* weight, const float* bias, const float* in, float* out, std::int64_t width, Rows r) {
      ops::layernorm(in + r.begin * width, weight, bias, out + r.begin * width, r.count(), width, ops::kLayerNormEps);
    }

    // Rows r of a [N, width] buffer of activations.
    static Activations rows_of(Activations act, Rows r, std::int64_t width) {
      return {static_cast<char*>(act.data) + r.begin * width * static_cast<std::int64_t>(dtype_size(act.dtype)),
              act.dtype};
    }
    static Activations f32_rows(float* base, Rows r, std::int64_t width) {
      return {base + r.begin * width, DType::F32};
    }

    // Mix i of the input in: xk, xv or xr in the GEMM dtype, or `in` itself
    // (float32) with shift_pixel 0.
    Activations mix(int i, const float* in) const {
      if (a.shift_pixel == 0) return {const_cast<float*>(in), DType::F32};
      float* bufs[3] = {work.xk.data(), work.xv.data(), work.xr.data()};
      return {bufs[i], gemm};
    }

    // The token shift (Q-Shift, VRWKV.md 1.5, or the 1-D shift) + mixing of
    // `in` with the mixing weights mu into the first `count` mixes, rows r.
    void shift_mix(const float* in, const float* const* mu, int count, Rows r) const {
      if (a.shift_pixel == 0) return;
      void* out[3];
      for (int i = 0; i < count; ++i) out[i] = mix(i, in).data;
      const parts::Shift s = parts::vrwkv_shift(a, work.grid);
      if (gemm == DType::BF16)
        ops::q_shift_mix_rows(in, s.grid, C, s.pixels, s.gamma, count, mu, reinterpret_cast<ops::Bf16* const*>(out),
                              r.begin, r.end);
      else
        ops::q_shift_mix_rows(in, s.grid, C, s.pixels, s.gamma, count, mu, reinterpret_cast<float* const*>(out),
                              r.begin, r.end);
    }

    // Spatial Mix (VRWKV.md 1.6), out (+)= output(σ(r) ⊙ [LN](BiWKV(w/T, u/T, k, v))), in three parts:
    // k and v of rows r;
    void spatial_kv(const VrwkvWeights& w, PackedBlock& linears, const float* in, Rows r) {
      const float* mu[3] = {w.att_mix_k, w.att_mix_v, w.att_mix_r};
      shift_mix(in, mu, 3, r);
      linears.att_key(rows_of(mix(0, in), r, C), f32_rows(work.k.data(), r, C), r.count());
      linears.att_value(rows_of(mix(1, in), r, C), f32_rows(work.v.data(), r, C), r.count());
    }

    // y = WKV(w, u, k, v) into xk (read by now; the operands of decay_first,
    // the model's direction), the team sharing the (image, channel block) problems;
    void wkv(const VrwkvWeights& w) {
      decay_first(a, w, work.grid.tokens(), work.wu.data());
      const float* wu = work.wu.data();
      team([&](int share, int shares) {
        ops::biwkv_share(wu, wu + C, work.k.data(), work.v.data(), work.xk.data(), B, work.grid.tokens(), C,
                         wkv_semantics, share, shares);
      });
    }

    // then, for rows r, g = σ(xr·Wrᵀ) ⊙ [LN](y) in the GEMM dtype (into xv,
    // read by now) and out = g·Woᵀ, or out += γ1 ⊙ g·Woᵀ with add (γ1 folded
    // into Wo).
    void spatial_out(const VrwkvWeights& w, PackedBlock& linears, const float* in, float* out, bool add, Rows r) {
      float* y = work.xk.data();
      if (a.key_norm) norm(w.att_key_norm_weight, w.att_key_norm_bias, y, y, C, r);
      const Activations g = rows_of({work.xv.data(), gemm}, r, C);
      linears.att_receptance(rows_of(mix(2, in), r, C), g, r.count(),
                             {Activation::Sigmoid, y + r.begin * C, false});
      linears.att_output(g, f32_rows(out, r, C), r.count(), {Activation::None, nullptr, add});
    }

    // Channel Mix (VRWKV.md 1.7) of rows r: out (+)= σ(receptance(xr)) ⊙ value([LN](relu(key(xk))²)).
    void channel_mix(const VrwkvWeights& w, PackedBlock& linears, const float* in, float* out, bool add, Rows r) {
      const float* mu[2] = {w.ffn_mix_k, w.ffn_mix_r};
      shift_mix(in, mu, 2, r);
      const std::int64_t n = r.count(), Hd = a.hidden_dims;
      float* gate = work.r.data() + r.begin * C;
      linears.ffn_receptance(rows_of(mix(1, in), r, C), {gate, DType::F32}, n, {Activation::Sigmoid, nullptr, false});
      // hidden = relu(xk·Wkᵀ)²; float32 when a key norm follows.
      const Activations hidden = rows_of({work.hidden.data(), a.key_norm ? DType::F32 : gemm}, r, Hd);
      linears.ffn_key(rows_of(mix(0, in), r, C), hidden, n, {Activation::ReluSquare, nullptr, false});
      if (a.key_norm) {
        float* h = static_cast<float*>(hidden.data);
        ops::layernorm(h, w.ffn_key_norm_weight, w.ffn_key_norm_bias, h, n, Hd, ops::kLayerNormEps);
      }
      linears.ffn_value(hidden, f32_rows(out, r, C), n, {Activation::None, gate, add});
    }

  };

  Architecture a_;
  std::vector<VrwkvWeights> w_;
  std::vector<std::unique_ptr<Workspace>> works_;  // one per image group
  std::map<DType, std::vector<std::unique_ptr<PackedBlock>>> packed_;
  DType gemm_ = DType::F32;
  ops::Wkv wkv_{};
};


// ---- training ----

using Buf = std::vector<float>;
void zero(Buf& b) { std::fill(b.begin(), b.end(), 0.0f); }

// What the backward of one block needs (names follow VRWKV.md 1.4-1.7).
// s0: ln0(x), the residual stream block 0 starts from (the other blocks start from x).
// Pre-norm: a = ln1(s), b = ln2(x_mid); post-norm mixes the residual stream
// itself and normalises the branch outputs (on, fn).
struct Tape {
  Buf s0, a, xk, xv, xr, k, v, r, y, yn, z, o, on, x_mid;
  parts::ChannelMix::Tape ffn;  // the second half's (b, f, fn, …)
  void allocate(std::int64_t N, std::int64_t C, const Architecture& c, const parts::ChannelMix& cm) {
    for (Buf* p : {&xk, &xv, &xr, &k, &v, &r, &y, &z, &o, &x_mid}) p->resize(N * C);
    (c.post_norm ? on : a).resize(N * C);
    if (c.key_norm) yn.resize(N * C);
    cm.allocate(ffn);
  }
  std::int64_t bytes() const {
    std::int64_t n = 0;
    for (const Buf* p : {&s0, &a, &xk, &xv, &xr, &k, &v, &r, &y, &yn, &z, &o, &on, &x_mid})
      n += static_cast<std::int64_t>(p->size());
    return n * static_cast<std::int64_t>(sizeof(float)) + ffn.bytes();
  }
};

class TrainVrwkv final : public TrainBlocks {
 public:
  TrainVrwkv(const Architecture& a, const Lookup& lookup, const float* params)
      : c(a), w_(bind_blocks(a, lookup)), base_(params) {}

  void plan(std::int64_t B_, Grid grid_, std::int64_t tapes) override {
    if (B_ == B && grid_.H == grid.H && grid_.W == grid.W && tapes == static_cast<std::int64_t>(tapes_.size())) return;
    B = B_, grid = grid_, T = grid.tokens(), N = B * T, C = c.embed_dims, Hd = c.hidden_dims;
    ffn_.emplace(parts::Dims{B, T, N, C}, Hd, parts::vrwkv_shift(c, grid), c.key_norm, c.post_norm);
    tapes_.clear();
    tapes_.resize(tapes);
    for (Tape& t : tapes_) t.allocate(N, C, c, *ffn_);
    if (!tapes_.empty()) tapes_[0].s0.resize(N * C);  // block 0, the one with ln0, always uses tape 0
    for (Buf& s : g) s.resize(N * C);
    wu.resize(2 * C), gwu.resize(2 * C);
  }

  std::int64_t tape_bytes() const override {
    std::int64_t n = 0;
    for (const Tape& t : tapes_) n += t.bytes();
    return n;
  }

  // Block i forward (VRWKV.md 1.4).
  void forward(std::int64_t i, const float* x, float* y, std::int64_t tape, const DropPath& keep,
               const BlockOps& ops, ops::Wkv wkv) override {
    const VrwkvWeights& w = w_[i];
    Tape& t = tapes_.at(tape);
    const bool pre = !c.post_norm;
    const auto norm = [&](const float* weight, const float* bias, const float* in, float* out, std::int64_t width) {
      ops.layernorm(in, weight, bias, out, N, width, ops::kLayerNormEps);
    };
    const auto linear = [&](const float* W, const float* in, float* out, std::int64_t n, std::int64_t k) {
      ops.linear(in, W, nullptr, out, N, n, k);
    };
    if (i == 0) norm(w.ln0_weight, w.ln0_bias, x, t.s0.data(), C), x = t.s0.data();
    // Spatial Mix (1.6).
    if (pre) norm(w.ln1_weight, w.ln1_bias, x, t.a.data(), C);
    shift_mix(ops, pre ? t.a.data() : x, {w.att_mix_k, w.att_mix_v, w.att_mix_r}, {&t.xk, &t.xv, &t.xr});
    linear(w.att_key, t.xk.data(), t.k.data(), C, C);
    linear(w.att_value, t.xv.data(), t.v.data(), C, C);
    linear(w.att_receptance, t.xr.data(), t.r.data(), C, C);
    decay_first(c, w, T, wu.data());
    ops.biwkv(wu.data(), wu.data() + C, t.k.data(), t.v.data(), t.y.data(), B, T, C, wkv_of(c, wkv));
    const float* yn = t.y.data();
    if (c.key_norm) norm(w.att_key_norm_weight, w.att_key_norm_bias, t.y.data(), t.yn.data(), C), yn = t.yn.data();
    ops.sigmoid_gate(t.r.data(), yn, t.z.data(), N * C);
    linear(w.att_output, t.z.data(), t.o.data(), C, C);
    if (!pre) norm(w.ln1_weight, w.ln1_bias, t.o.data(), t.on.data(), C);
    residual(x, pre ? t.o.data() : t.on.data(), keep[0], w.gamma1, t.x_mid.data());
    // Channel Mix (1.7).
    ffn_->forward(ops, parts::channel_mix_of(w), t.x_mid.data(), keep[1], y, t.ffn);
  }

  // Block i backward: dy = dL/d(block output) to dx = dL/d(block input).
  void backward(std::int64_t i, const float* x_in, const float* dy, float* dx, std::int64_t tape,
                const DropPath& keep, ops::Wkv wkv, float* grads) override {
    const VrwkvWeights& w = w_[i];
    const VrwkvWeights G = rebase(w, rows(), base_, grads);
    Tape& t = tapes_.at(tape);
    const float* x = i == 0 ? t.s0.data() : x_in;
    const bool pre = !c.post_norm;
    const auto sig = [](float v) { return ops::sigmoid_fast(v); };
    const auto norm_backward = [&](const float* weight, float* dweight, float* dbias, const float* in,
                                   const float* d_out, float* d_in, std::int64_t width) {
      ops::layernorm_backward(in, weight, d_out, d_in, dweight, dbias, N, width, ops::kLayerNormEps);
    };
    const auto linear_backward = [&](const float* W, float* dW, const float* in, const float* d_out, float* d_in,
                                     std::int64_t n, std::int64_t k) {
      ops::linear_backward(in, W, d_out, d_in, dW, nullptr, N, n, k);
    };
    // ds: dL/ds, the gradient reaching the block's residual stream input.
    float* ds = i == 0 ? g[7].data() : dx;
    std::memcpy(ds, dy, N * C * sizeof(float));

    // Channel Mix (the second half): ds becomes dL/dx_mid.
    ffn_->backward(parts::channel_mix_of(w), parts::channel_mix_of(G), t.x_mid.data(), t.ffn, keep[1], ds);

    // Spatial Mix: x_mid = x + keep1·γ1 ⊙ (pre ? o : ln1(o)).
    residual_backward(pre ? t.o.data() : t.on.data(), keep[0], w.gamma1, G.gamma1, ds, g[0].data());
    float* gO = g[0].data();
    if (!pre)
      zero(g[1]), norm_backward(w.ln1_weight, G.ln1_weight, G.ln1_bias, t.o.data(), g[0].data(), g[1].data(), C),
          gO = g[1].data();
    zero(g[2]);
    linear_backward(w.att_output, G.att_output, t.z.data(), gO, g[2].data(), C, C);
    const float* yn = c.key_norm ? t.yn.data() : t.y.data();
    float *gYn = g[3].data(), *gR = g[4].data();
#pragma omp parallel for schedule(static)
    for (std::int64_t j = 0; j < N * C; ++j) {
      const float s = sig(t.r[j]);
      gYn[j] = g[2][j] * s;
      gR[j] = g[2][j] * yn[j] * s * (1.0f - s);
    }
    float* gY = gYn;
    if (c.key_norm)
      zero(g[5]),
          norm_backward(w.att_key_norm_weight, G.att_key_norm_weight, G.att_key_norm_bias, t.y.data(), gYn,
                        g[5].data(), C),
          gY = g[5].data();
    decay_first(c, w, T, wu.data());
    zero(g[6]), zero(g[1]), std::fill(gwu.begin(), gwu.end(), 0.0f);
    // gk into g[6], gv into g[1] (free by now).
    ops::biwkv_backward(wu.data(), wu.data() + C, t.k.data(), t.v.data(), gY, gwu.data(), gwu.data() + C,
                        g[6].data(), g[1].data(), B, T, C, wkv_of(c, wkv));
    decay_first_backward(c, w, wu.data(), gwu.data(), T, G);
    zero(g[0]), zero(g[2]), zero(g[5]);
    linear_backward(w.att_key, G.att_key, t.xk.data(), g[6].data(), g[0].data(), C, C);
    linear_backward(w.att_value, G.att_value, t.xv.data(), g[1].data(), g[2].data(), C, C);
    linear_backward(w.att_receptance, G.att_receptance, t.xr.data(), gR, g[5].data(), C, C);
    const std::array<const float*, 3> dmix = {g[0].data(), g[2].data(), g[5].data()};
    if (pre) {
      zero(g[3]);
      mix_backward(t.a.data(), {w.att_mix_k, w.att_mix_v, w.att_mix_r}, {G.att_mix_k, G.att_mix_v, G.att_mix_r},
                   {dmix[0], dmix[1], dmix[2]}, g[3].data());
      norm_backward(w.ln1_weight, G.ln1_weight, G.ln1_bias, x, g[3].data(), ds, C);
    } else {
      mix_backward(x, {w.att_mix_k, w.att_mix_v, w.att_mix_r}, {G.att_mix_k, G.att_mix_v, G.att_mix_r},
                   {dmix[0], dmix[1], dmix[2]}, ds);
    }
    // Block 0 starts with ln0: its input gradient is ln0's backward.
    if (i == 0) {
      std::fill(dx, dx + N * C, 0.0f);
      norm_backward(w.ln0_weight, G.ln0_weight, G.ln0_bias, x_in, ds, dx, C);
    }
  }

 private:
  // The token shift + mixing of `x` into the tape buffers `outs` (a copy with shift_pixel 0).
  void shift_mix(const BlockOps& ops, const float* x, std::initializer_list<const float*> mus,
                 std::initializer_list<Buf*> outs) {
    float* bufs[3];
    const float* mu[3];
    int n = 0;
    for (Buf* o : outs) bufs[n++] = o->data();
    if (c.shift_pixel == 0) {
      for (int i = 0; i < n; ++i) std::memcpy(bufs[i], x, N * C * sizeof(float));
      return;
    }
    n = 0;
    for (const float* m : mus) mu[n++] = m;
    const parts::Shift s = parts::vrwkv_shift(c, grid);
    ops.q_shift_mix(x, B, s.grid, C, s.pixels, s.gamma, n, mu, bufs, 0);
  }

  // The mixes' backward: dx += Σ dL/dx through each mix; dμ += (with Q-Shift).
  void mix_backward(const float* x, std::initializer_list<const float*> mus, std::initializer_list<float*> dmus,
                    std::initializer_list<const float*> douts, float* dxo) const {
    const float* mu[3];
    const float* d[3];
    float* dmu[3];
    int n = 0;
    for (const float* p : douts) d[n++] = p;
    if (c.shift_pixel > 0) {
      int m = 0;
      for (const float* p : mus) mu[m++] = p;
      m = 0;
      for (float* p : dmus) dmu[m++] = p;
    }
    const parts::Shift s = parts::vrwkv_shift(c, grid);
    ops::q_shift_mix_backward(x, B, s.grid, C, s.pixels, s.gamma, n, mu, d, dxo, dmu);
  }

  void residual(const float* x, const float* branch, const float* keep, const float* gamma, float* x_out) const {
    parts::residual({B, T, N, C}, x, branch, keep, gamma, x_out);
  }
  void residual_backward(const float* branch, const float* keep, const float* gamma, float* dgamma, const float* dx,
                         float* dbranch) const {
    parts::residual_backward({B, T, N, C}, branch, keep, gamma, dgamma, dx, dbranch);
  }

  const Architecture c;
  std::vector<VrwkvWeights> w_;
  const float* base_;
  std::int64_t B = 0, T = 0, N = 0, C = 0, Hd = 0;
  Grid grid;
  std::vector<Tape> tapes_;
  std::optional<parts::ChannelMix> ffn_;  // made by plan(): it knows the shapes and holds its scratch
  Buf g[8], wu, gwu;
};

}  // namespace

const BlockKindEntry& vrwkv_block_kind() {
  static const BlockKindEntry entry = {
      "vrwkv",
      "att.spatial_decay",
      row_infos,
      extra_flops,
      [](const Architecture& a, const Lookup& lookup) -> std::unique_ptr<FastBlocks> {
        return std::make_unique<FastVrwkv>(a, lookup);
      },
      [](const Architecture& a, const Lookup& lookup, const float* params) -> std::unique_ptr<TrainBlocks> {
        return std::make_unique<TrainVrwkv>(a, lookup, params);
      },
  };
  return entry;
}

}  // namespace vrwkv::model
