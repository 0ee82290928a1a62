// The VRWKV6 block (VRWKV6.md A.3, A.4): the RWKV-6 Spatial Mix (per-head
// Q-Shift, ddlerp through five LoRAs, a data-dependent decay through a sixth,
// Bi-WKV6, GroupNorm ln_x, SiLU gate) and VRWKV's Channel Mix with the
// per-head shift; pre-norm or post-norm, optional layer scale and key norms.
// Like blocks/vrwkv.cpp this file holds everything of the kind: its rows, its
// fast inference and its training implementation; the reference forward is
// the training forward with the _ref ops.
//
// The LoRA matrices are stored as the official code multiplies them (x·W1,
// W1 [C, 5·32]); the linears here take PyTorch's [out, in] layout, so the
// implementations keep transposed copies of them.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <optional>

#include <omp.h>

#include "model/block.hpp"
#include "model/blocks/parts.hpp"
#include "ops/fast_math.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/packed_linear.hpp"
#include "ops/qshift.hpp"
#include "ops/wkv6.hpp"

namespace vrwkv::model {

namespace {

using ops::Grid;

// ---- parameters ----

struct Vrwkv6Weights {
  float *gamma1, *gamma2;  // layer scale
  float *ln0_weight, *ln0_bias, *ln1_weight, *ln1_bias, *ln2_weight, *ln2_bias;
  // Spatial Mix (att.*): maa in the order of time_maa_w2's blocks is w, k, v, r, g.
  float *maa_x, *maa_w, *maa_k, *maa_v, *maa_r, *maa_g, *maa_w1, *maa_w2;
  float *decay, *decay_w1, *decay_w2, *faaaa;
  float *att_key, *att_value, *att_receptance, *att_gate, *att_key_norm_weight, *att_key_norm_bias, *att_output;
  float *ln_x_weight, *ln_x_bias;
  // Channel Mix (ffn.*)
  float *ffn_mix_k, *ffn_mix_r, *ffn_key, *ffn_receptance, *ffn_value, *ffn_key_norm_weight, *ffn_key_norm_bias;
};

// One block's rows in storage order (the official state dict's).
const std::vector<ParamRow<Vrwkv6Weights>>& rows() {
  using D = Dim;
  using W = Vrwkv6Weights;
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
      {{"att.time_maa_x", mix, When::Always, Init::MaaShift, Cost::None, true}, &W::maa_x},
      {{"att.time_maa_w", mix, When::Always, Init::MaaShift, Cost::None, true}, &W::maa_w},
      {{"att.time_maa_k", mix, When::Always, Init::MaaShift, Cost::None, true}, &W::maa_k},
      {{"att.time_maa_v", mix, When::Always, Init::MaaValue, Cost::None, true}, &W::maa_v},
      {{"att.time_maa_r", mix, When::Always, Init::MaaHalf, Cost::None, true}, &W::maa_r},
      {{"att.time_maa_g", mix, When::Always, Init::MaaHalf, Cost::None, true}, &W::maa_g},
      {{"att.time_maa_w1", {D::C, D::MixLora}, When::Always, Init::LoraUniform, Cost::PerToken, true}, &W::maa_w1},
      {{"att.time_maa_w2", {D::Five, D::MixRank, D::C}, When::Always, Init::LoraUniform, Cost::PerToken, true},
       &W::maa_w2},
      {{"att.time_decay", mix, When::Always, Init::Decay6, Cost::None, true}, &W::decay},
      {{"att.time_decay_w1", {D::C, D::DecayRank}, When::Always, Init::LoraUniform, Cost::PerToken, true},
       &W::decay_w1},
      {{"att.time_decay_w2", {D::DecayRank, D::C}, When::Always, Init::LoraUniform, Cost::PerToken, true},
       &W::decay_w2},
      {{"att.time_faaaa", {D::Heads, D::HeadSize}, When::Always, Init::Bonus6, Cost::None, true}, &W::faaaa},
      {{"att.key.weight", cc, When::Always, Init::TruncNormal, Cost::PerToken, true}, &W::att_key},
      {{"att.value.weight", cc, When::Always, Init::TruncNormal, Cost::PerToken, true}, &W::att_value},
      {{"att.receptance.weight", cc, When::Always, Init::TruncNormal, Cost::PerToken, true}, &W::att_receptance},
      {{"att.gate.weight", cc, When::Always, Init::TruncNormal, Cost::PerToken, true}, &W::att_gate},
      {{"att.key_norm.weight", c, When::KeyNorm, Init::One, Cost::Norm, false}, &W::att_key_norm_weight},
      {{"att.key_norm.bias", c, When::KeyNorm, Init::Zero, Cost::None, false}, &W::att_key_norm_bias},
      {{"att.output.weight", cc, When::Always, Init::TruncNormal, Cost::PerToken, true}, &W::att_output},
      {{"att.ln_x.weight", c, When::Always, Init::One, Cost::Norm, false}, &W::ln_x_weight},
      {{"att.ln_x.bias", c, When::Always, Init::Zero, Cost::None, false}, &W::ln_x_bias},
      {{"ffn.spatial_mix_k", mix, When::Always, Init::MixK, Cost::None, true}, &W::ffn_mix_k},
      {{"ffn.spatial_mix_r", mix, When::Always, Init::MixK, Cost::None, true}, &W::ffn_mix_r},
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

// Beyond the rows: the Bi-WKV6 scans' multiply-adds (two passes; per token and
// head N² for the output and N² for the state update: 4·N·C per token) and
// the element-wise work counted as for VRWKV (29·C per token).
double extra_flops(const Architecture& a, double tokens) {
  return tokens * a.embed_dims * (4.0 * static_cast<double>(a.head_size) + 29.0);
}

std::vector<Vrwkv6Weights> bind_blocks(const Architecture& a, const Lookup& lookup) {
  std::vector<Vrwkv6Weights> w(a.depth);
  for (std::int64_t i = 0; i < a.depth; ++i) bind_rows(w[i], rows(), a, i, lookup);
  return w;
}

// out [cols, rows] = in [rows, cols]ᵀ.
void transpose(const float* in, std::int64_t rows_, std::int64_t cols, float* out) {
  for (std::int64_t r = 0; r < rows_; ++r)
    for (std::int64_t c = 0; c < cols; ++c) out[c * rows_ + r] = in[r * cols + c];
}

// The LoRA matrices in [out, in] layout for the linears: W1ᵀ [5R, C], W2[j]ᵀ
// [C, R] for each of the five blocks, decay W1ᵀ [D, C] and W2ᵀ [C, D].
struct LoraT {
  std::vector<float> maa_w1, maa_w2, decay_w1, decay_w2;
  void make(const Vrwkv6Weights& w, const Architecture& a) {
    const std::int64_t C = a.embed_dims, R = a.mix_rank, D = a.decay_rank;
    maa_w1.resize(5 * R * C), maa_w2.resize(5 * C * R), decay_w1.resize(D * C), decay_w2.resize(C * D);
    transpose(w.maa_w1, C, 5 * R, maa_w1.data());
    for (int j = 0; j < 5; ++j) transpose(w.maa_w2 + j * R * C, R, C, maa_w2.data() + j * C * R);
    transpose(w.decay_w1, C, D, decay_w1.data());
    transpose(w.decay_w2, D, C, decay_w2.data());
  }
};

// in [rows, cols] transposed and added to out [cols, rows]: a gradient of a
// transposed copy back onto the stored layout.
void add_transposed(const float* in, std::int64_t rows_, std::int64_t cols, float* out) {
  for (std::int64_t r = 0; r < rows_; ++r)
    for (std::int64_t c = 0; c < cols; ++c) out[c * rows_ + r] += in[r * cols + c];
}

inline float sigmoid(float v) { return ops::sigmoid_fast(v); }

// ---- fast inference ----

// The activations of one image group for one input shape, allocated once and
// reused while the shape stays. h: LN1 output (pre-norm) or the branch output
// (post-norm); h2: LN2 output (pre-norm); d: shift(in) − in; xj: one ddlerp
// mix at a time; m: its LoRA term; z, zs: the mix LoRA's tanh output as
// [N, 5R] and as five [N, R] blocks; dz: the decay LoRA's tanh output.
struct Workspace {
  std::int64_t B = 0;
  Grid grid;
  std::vector<float> h, h2, d, xj, m, r, k, v, g, w, y, z, zs, dz, hidden;
  Workspace(std::int64_t B_, Grid grid_, const Architecture& a) : B(B_), grid(grid_) {
    const std::int64_t N = B * grid.tokens(), C = a.embed_dims;
    for (auto* buf : {&h, &h2, &d, &xj, &m, &r, &k, &v, &g, &w, &y}) buf->resize(N * C);
    z.resize(N * 5 * a.mix_rank), zs.resize(N * 5 * a.mix_rank), dz.resize(N * a.decay_rank);
    hidden.resize(N * a.hidden_dims);
  }
};

// The block's linears packed once per GEMM dtype; the LoRA matrices from
// their transposed copies (lora), time_decay as the bias of the decay LoRA's
// second matrix. A pre-norm layer scale is folded into att.output and
// ffn.value, whose epilogues then add to the residual stream.
struct PackedBlock {
  LoraT lora;
  std::unique_ptr<ops::PackedLinear> maa_w1, maa_w2[5], decay_w1, decay_w2;
  std::unique_ptr<ops::PackedLinear> att_key, att_value, att_receptance, att_gate, att_output;
  std::unique_ptr<ops::PackedLinear> ffn_key, ffn_value, ffn_receptance;
};

using ops::Activation;
using ops::Activations;

using parts::Rows;

class FastVrwkv6 final : public FastBlocks {
 public:
  FastVrwkv6(const Architecture& a, const Lookup& lookup) : a_(a), w_(bind_blocks(a, lookup)) {}

  void prepare(const std::vector<std::int64_t>& images, Grid grid, DType gemm, ops::Wkv) override {
    bool fits = works_.size() == images.size();
    for (std::size_t g = 0; fits && g < images.size(); ++g)
      fits = works_[g]->B == images[g] && works_[g]->grid.H == grid.H && works_[g]->grid.W == grid.W;
    if (!fits) {
      works_.clear();
      for (std::int64_t n : images) works_.push_back(std::make_unique<Workspace>(n, grid, a_));
    }
    gemm_ = gemm;
    std::vector<std::unique_ptr<PackedBlock>>& blocks = packed_[gemm];
    if (blocks.empty()) blocks = pack(gemm);
  }

  void parameters_updated() override { packed_.clear(); }

  void run(float* x, std::int64_t n, std::int64_t begin, std::int64_t end, int team, int group) override {
    Block b{a_, *works_.at(group), packed_.at(gemm_), w_, team, n, x};
    for (std::int64_t i = begin; i < end; ++i) b.block(i, i == begin, i + 1 < end);
  }

 private:
  std::vector<std::unique_ptr<PackedBlock>> pack(DType dtype) const {
    std::vector<std::unique_ptr<PackedBlock>> blocks;
    const std::int64_t C = a_.embed_dims, Hd = a_.hidden_dims, R = a_.mix_rank, D = a_.decay_rank;
    const bool fold = a_.layer_scale && !a_.post_norm;
    for (const Vrwkv6Weights& w : w_) {
      auto p = std::make_unique<PackedBlock>();
      p->lora.make(w, a_);
      const auto linear = [&](const float* W, std::int64_t out, std::int64_t in, const float* scale = nullptr,
                              const float* bias = nullptr) {
        return std::make_unique<ops::PackedLinear>(W, out, in, dtype, scale, bias);
      };
      p->maa_w1 = linear(p->lora.maa_w1.data(), 5 * R, C);
      for (int j = 0; j < 5; ++j) p->maa_w2[j] = linear(p->lora.maa_w2.data() + j * C * R, C, R);
      p->decay_w1 = linear(p->lora.decay_w1.data(), D, C);
      p->decay_w2 = linear(p->lora.decay_w2.data(), C, D, nullptr, w.decay);
      p->att_key = linear(w.att_key, C, C);
      p->att_value = linear(w.att_value, C, C);
      p->att_receptance = linear(w.att_receptance, C, C);
      p->att_gate = linear(w.att_gate, C, C);
      p->att_output = linear(w.att_output, C, C, fold ? w.gamma1 : nullptr);
      p->ffn_key = linear(w.ffn_key, Hd, C);
      p->ffn_value = linear(w.ffn_value, C, Hd, fold ? w.gamma2 : nullptr);
      p->ffn_receptance = linear(w.ffn_receptance, C, C);
      blocks.push_back(std::move(p));
    }
    return blocks;
  }

  // Blocks of one group of n images, as team regions (parts::run_block):
  // every thread runs the ops on its share of the token rows (of the (image,
  // head) problems for Bi-WKV6).
  struct Block {
    const Architecture& a;
    Workspace& work;
    const std::vector<std::unique_ptr<PackedBlock>>& packed;
    const std::vector<Vrwkv6Weights>& weights;
    int team_size;
    std::int64_t B;
    float* x;
    std::int64_t N = B * work.grid.tokens(), C = a.embed_dims;

    // Block i (parts::run_block), as blocks/vrwkv.cpp's.
    void block(std::int64_t i, bool first, bool fuse_next) {
      parts::run_block(*this, weights, i, first, fuse_next, a.post_norm, x, work.h.data(), work.h2.data(), N, C,
                       team_size);
    }
    // The steps of run_block.
    void spatial_in(std::int64_t i, const float* in, Rows r) { spatial_in(weights[i], *packed[i], in, r); }
    void wkv(std::int64_t i) { wkv(weights[i]); }
    void spatial_out(std::int64_t i, const float*, float* out, bool add, Rows r) {
      spatial_out(weights[i], *packed[i], out, add, r);
    }
    void channel_mix(std::int64_t i, const float* in, float* out, bool add, Rows r) {
      channel_mix(weights[i], *packed[i], in, out, add, r);
    }

    template <class F>
    void team(F&& f) {
      parts::run_team(team_size, f);
    }

    void norm(const float* weight, const float* bias, const float* in, float* out, std::int64_t width, Rows r) {
      ops::layernorm(in + r.begin * width, weight, bias, out + r.begin * width, r.count(), width, ops::kLayerNormEps);
    }
    static Activations f32(float* base, Rows r, std::int64_t width) { return {base + r.begin * width, DType::F32}; }

    // The shifted rows of `in`, minus `in`: d = shift(in) − in (0 without a shift).
    void shift_difference(const float* in, Rows r) {
      float* d = work.d.data();
      if (a.shift_pixel == 0) {
        std::fill(d + r.begin * C, d + r.end * C, 0.0f);
        return;
      }
      const float* no_mix[1] = {nullptr};  // μ = 0: the shifted values themselves
      float* out[1] = {d};
      ops::q_shift_mix_rows(in, work.grid, C, a.shift_pixel, 0.25, 1, no_mix, out, r.begin, r.end, a.head_size);
      for (std::int64_t j = r.begin * C; j < r.end * C; ++j) d[j] -= in[j];
    }

    // Spatial Mix up to Bi-WKV6 (VRWKV6.md A.4 steps 1-6) for rows r: the
    // ddlerp mixes one at a time, each straight into its linear.
    void spatial_in(const Vrwkv6Weights& w, PackedBlock& p, const float* in, Rows r) {
      shift_difference(in, r);
      const std::int64_t n = r.count(), R = a.mix_rank;
      const float* d = work.d.data();
      float *xj = work.xj.data(), *m = work.m.data();
      // xxx = in + d⊙maa_x; z = tanh(xxx·W1), then its five [n, R] blocks.
      for (std::int64_t t = r.begin; t < r.end; ++t)
        for (std::int64_t c = 0; c < C; ++c) xj[t * C + c] = in[t * C + c] + d[t * C + c] * w.maa_x[c];
      (*p.maa_w1)(f32(xj, r, C), f32(work.z.data(), r, 5 * R), n, {Activation::Tanh, nullptr, false});
      for (std::int64_t t = r.begin; t < r.end; ++t)
        for (int j = 0; j < 5; ++j)
          std::memcpy(work.zs.data() + (j * N + t) * R, work.z.data() + (t * 5 + j) * R, R * sizeof(float));
      const float* maa[5] = {w.maa_w, w.maa_k, w.maa_v, w.maa_r, w.maa_g};
      for (int j = 0; j < 5; ++j) {
        // x_j = in + d⊙(maa_j + z_j·W2[j]).
        (*p.maa_w2[j])({work.zs.data() + (j * N + r.begin) * R, DType::F32}, f32(m, r, C), n);
        for (std::int64_t t = r.begin; t < r.end; ++t)
          for (std::int64_t c = 0; c < C; ++c)
            xj[t * C + c] = in[t * C + c] + d[t * C + c] * (maa[j][c] + m[t * C + c]);
        switch (j) {
          case 0:  // w = time_decay + tanh(x_w·Dw1)·Dw2 (time_decay is the bias)
            (*p.decay_w1)(f32(xj, r, C), f32(work.dz.data(), r, a.decay_rank), n, {Activation::Tanh, nullptr, false});
            (*p.decay_w2)(f32(work.dz.data(), r, a.decay_rank), f32(work.w.data(), r, C), n);
            ops::wkv6_decays(work.w.data() + r.begin * C, work.w.data() + r.begin * C, n * C);  // w ← δ
            break;
          case 1: (*p.att_key)(f32(xj, r, C), f32(work.k.data(), r, C), n); break;
          case 2: (*p.att_value)(f32(xj, r, C), f32(work.v.data(), r, C), n); break;
          case 3: (*p.att_receptance)(f32(xj, r, C), f32(work.r.data(), r, C), n); break;
          case 4: (*p.att_gate)(f32(xj, r, C), f32(work.g.data(), r, C), n, {Activation::Silu, nullptr, false}); break;
        }
      }
    }

    void wkv(const Vrwkv6Weights& w) {
      team([&](int share, int shares) {
        ops::wkv6_share(work.r.data(), work.k.data(), work.v.data(), work.w.data() /* δ */, w.faaaa, work.y.data(), B,
                        work.grid.tokens(), C, a.head_size, share, shares);
      });
    }

    // Then for rows r: y ← ln_x([key_norm](y)) ⊙ g and out = y·Woᵀ, or
    // out += γ1 ⊙ y·Woᵀ with add (γ1 folded into Wo).
    void spatial_out(const Vrwkv6Weights& w, PackedBlock& p, float* out, bool add, Rows r) {
      float* y = work.y.data();
      const float* g = work.g.data();
      if (a.key_norm) norm(w.att_key_norm_weight, w.att_key_norm_bias, y, y, C, r);
      ops::group_norm_rows(y, w.ln_x_weight, w.ln_x_bias, y, r.begin, r.end, C, C / a.head_size);
      for (std::int64_t e = r.begin * C; e < r.end * C; ++e) y[e] *= g[e];
      (*p.att_output)(f32(y, r, C), f32(out, r, C), r.count(), {Activation::None, nullptr, add});
    }

    // Channel Mix of rows r: out (+)= σ(receptance(xr)) ⊙ value([LN](relu(key(xk))²)), per-head shift.
    void channel_mix(const Vrwkv6Weights& w, PackedBlock& p, const float* in, float* out, bool add, Rows r) {
      const float* mu[2] = {w.ffn_mix_k, w.ffn_mix_r};
      float* mixed[2] = {work.xj.data(), work.m.data()};
      ops::q_shift_mix_rows(in, work.grid, C, a.shift_pixel, 0.25, 2, mu, mixed, r.begin, r.end, a.head_size);
      const std::int64_t n = r.count(), Hd = a.hidden_dims;
      float* gate = work.r.data() + r.begin * C;
      (*p.ffn_receptance)(f32(mixed[1], r, C), {gate, DType::F32}, n, {Activation::Sigmoid, nullptr, false});
      const Activations hidden = f32(work.hidden.data(), r, Hd);
      (*p.ffn_key)(f32(mixed[0], r, C), hidden, n, {Activation::ReluSquare, nullptr, false});
      if (a.key_norm) {
        float* hp = static_cast<float*>(hidden.data);
        ops::layernorm(hp, w.ffn_key_norm_weight, w.ffn_key_norm_bias, hp, n, Hd, ops::kLayerNormEps);
      }
      (*p.ffn_value)(hidden, f32(out, r, C), n, {Activation::None, gate, add});
    }

  };

  Architecture a_;
  std::vector<Vrwkv6Weights> w_;
  std::vector<std::unique_ptr<Workspace>> works_;
  std::map<DType, std::vector<std::unique_ptr<PackedBlock>>> packed_;
  DType gemm_ = DType::F32;
};

// ---- training ----

using Buf = std::vector<float>;
void zero(Buf& b) { std::fill(b.begin(), b.end(), 0.0f); }

// What the backward of one block needs (VRWKV6.md A.4 names).
// s0: ln0(x) (block 0); a: ln1(s) (pre-norm); d = shift(in) − in; xxx = in + d⊙maa_x;
// z = tanh(xxx·W1) [N, 5R]; m[j] = z_j·W2[j]; xm[j] = in + d⊙(maa_j + m_j) for j = w, k, v, r, g;
// r, k, v; gl = x_g·Wgᵀ (g = SiLU(gl)); dz = tanh(x_w·Dw1) [N, D]; w (raw decay);
// y (Bi-WKV6), yk (key_norm(y)), yn = ln_x(yk), z2 = yn⊙g, o = z2·Woᵀ, on (post-norm ln1(o)),
// x_mid, and the second half's (parts::ChannelMix).
struct Tape {
  Buf s0, a, d, xxx, z, zs, m[5], xm[5], r, k, v, gl, dz, w, y, yk, yn, z2, o, on, x_mid;
  parts::ChannelMix::Tape ffn;  // the second half's (b, f, fn, …)
  void allocate(std::int64_t N, std::int64_t C, const Architecture& c, const parts::ChannelMix& cm) {
    for (Buf* p : {&d, &xxx, &r, &k, &v, &gl, &w, &y, &yn, &z2, &o, &x_mid}) p->resize(N * C);
    for (int j = 0; j < 5; ++j) m[j].resize(N * C), xm[j].resize(N * C);
    z.resize(N * 5 * c.mix_rank), zs.resize(N * 5 * c.mix_rank), dz.resize(N * c.decay_rank);
    (c.post_norm ? on : a).resize(N * C);
    if (c.key_norm) yk.resize(N * C);
    cm.allocate(ffn);
  }
  std::int64_t bytes() const {
    std::int64_t n = 0;
    for (const Buf* p : {&s0, &a, &d, &xxx, &z, &zs, &r, &k, &v, &gl, &dz, &w, &y, &yk, &yn, &z2, &o, &on, &x_mid})
      n += static_cast<std::int64_t>(p->size());
    for (int j = 0; j < 5; ++j) n += static_cast<std::int64_t>(m[j].size() + xm[j].size());
    return n * static_cast<std::int64_t>(sizeof(float)) + ffn.bytes();
  }
};

class TrainVrwkv6 final : public TrainBlocks {
 public:
  TrainVrwkv6(const Architecture& a, const Lookup& lookup, const float* params)
      : c(a), w_(bind_blocks(a, lookup)), base_(params), lora_(a.depth) {}

  void plan(std::int64_t B_, Grid grid_, std::int64_t tapes) override {
    if (B_ == B && grid_.H == grid.H && grid_.W == grid.W && tapes == static_cast<std::int64_t>(tapes_.size())) return;
    B = B_, grid = grid_, T = grid.tokens(), N = B * T, C = c.embed_dims, Hd = c.hidden_dims;
    R = c.mix_rank, D = c.decay_rank;
    ffn_.emplace(parts::Dims{B, T, N, C}, Hd, parts::Shift{grid, c.shift_pixel, 0.25, c.head_size},
                 c.key_norm, c.post_norm);
    tapes_.clear();
    tapes_.resize(tapes);
    for (Tape& t : tapes_) t.allocate(N, C, c, *ffn_);
    if (!tapes_.empty()) tapes_[0].s0.resize(N * C);
    for (Buf& s : g) s.resize(N * C);
    gz.resize(N * 5 * R), gzs.resize(N * 5 * R), gdz.resize(N * D);
    glora.resize(std::max(5 * R, D) * C);
  }

  std::int64_t tape_bytes() const override {
    std::int64_t n = 0;
    for (const Tape& t : tapes_) n += t.bytes();
    return n;
  }

  // Block i forward (VRWKV6.md A.4).
  void forward(std::int64_t i, const float* x, float* y, std::int64_t tape, const DropPath& keep,
               const BlockOps& ops, ops::Wkv) override {
    const Vrwkv6Weights& w = w_[i];
    LoraT& lt = lora_[i];
    lt.make(w, c);  // the weights may have changed since the last step
    Tape& t = tapes_.at(tape);
    const bool pre = !c.post_norm;
    const auto norm = [&](const float* weight, const float* bias, const float* in, float* out, std::int64_t width) {
      ops.layernorm(in, weight, bias, out, N, width, ops::kLayerNormEps);
    };
    const auto linear = [&](const float* W, const float* in, float* out, std::int64_t n, std::int64_t k,
                            std::int64_t M = -1) { ops.linear(in, W, nullptr, out, M < 0 ? N : M, n, k); };
    if (i == 0) norm(w.ln0_weight, w.ln0_bias, x, t.s0.data(), C), x = t.s0.data();
    // Spatial Mix.
    if (pre) norm(w.ln1_weight, w.ln1_bias, x, t.a.data(), C);
    const float* in = pre ? t.a.data() : x;
    shift(ops, in, t.d.data());
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t ch = 0; ch < C; ++ch) {
        const std::int64_t e = n * C + ch;
        t.d[e] -= in[e];
        t.xxx[e] = in[e] + t.d[e] * w.maa_x[ch];
      }
    linear(lt.maa_w1.data(), t.xxx.data(), t.z.data(), 5 * R, C);
    ops.tanh(t.z.data(), N * 5 * R);
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n)
      for (int j = 0; j < 5; ++j)
        std::memcpy(t.zs.data() + (j * N + n) * R, t.z.data() + (n * 5 + j) * R, R * sizeof(float));
    const float* maa[5] = {w.maa_w, w.maa_k, w.maa_v, w.maa_r, w.maa_g};
    for (int j = 0; j < 5; ++j) {
      linear(lt.maa_w2.data() + j * C * R, t.zs.data() + j * N * R, t.m[j].data(), C, R);
#pragma omp parallel for schedule(static)
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t ch = 0; ch < C; ++ch) {
          const std::int64_t e = n * C + ch;
          t.xm[j][e] = in[e] + t.d[e] * (maa[j][ch] + t.m[j][e]);
        }
    }
    linear(w.att_receptance, t.xm[3].data(), t.r.data(), C, C);
    linear(w.att_key, t.xm[1].data(), t.k.data(), C, C);
    linear(w.att_value, t.xm[2].data(), t.v.data(), C, C);
    linear(w.att_gate, t.xm[4].data(), t.gl.data(), C, C);
    linear(lt.decay_w1.data(), t.xm[0].data(), t.dz.data(), D, C);
    ops.tanh(t.dz.data(), N * D);
    linear(lt.decay_w2.data(), t.dz.data(), t.w.data(), C, D);
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t ch = 0; ch < C; ++ch) t.w[n * C + ch] += w.decay[ch];
    ops.wkv6(t.r.data(), t.k.data(), t.v.data(), t.w.data(), w.faaaa, t.y.data(), B, T, C, c.head_size);
    const float* yk = t.y.data();
    if (c.key_norm) norm(w.att_key_norm_weight, w.att_key_norm_bias, t.y.data(), t.yk.data(), C), yk = t.yk.data();
    ops.group_norm(yk, w.ln_x_weight, w.ln_x_bias, t.yn.data(), N, C, C / c.head_size, ops::kLayerNormEps);
    ops.silu_gate(t.gl.data(), t.yn.data(), t.z2.data(), N * C);
    linear(w.att_output, t.z2.data(), t.o.data(), C, C);
    if (!pre) norm(w.ln1_weight, w.ln1_bias, t.o.data(), t.on.data(), C);
    residual(x, pre ? t.o.data() : t.on.data(), keep[0], w.gamma1, t.x_mid.data());
    // Channel Mix.
    ffn_->forward(ops, parts::channel_mix_of(w), t.x_mid.data(), keep[1], y, t.ffn);
  }

  void backward(std::int64_t i, const float* x_in, const float* dy, float* dx, std::int64_t tape,
                const DropPath& keep, ops::Wkv, float* grads) override {
    const Vrwkv6Weights& w = w_[i];
    const Vrwkv6Weights G = rebase(w, rows(), base_, grads);
    const LoraT& lt = lora_[i];
    Tape& t = tapes_.at(tape);
    const float* x = i == 0 ? t.s0.data() : x_in;
    const bool pre = !c.post_norm;
    const auto norm_backward = [&](const float* weight, float* dweight, float* dbias, const float* in,
                                   const float* d_out, float* d_in, std::int64_t width) {
      ops::layernorm_backward(in, weight, d_out, d_in, dweight, dbias, N, width, ops::kLayerNormEps);
    };
    const auto linear_backward = [&](const float* W, float* dW, const float* in, const float* d_out, float* d_in,
                                     std::int64_t n, std::int64_t k) {
      ops::linear_backward(in, W, d_out, d_in, dW, nullptr, N, n, k);
    };
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
    linear_backward(w.att_output, G.att_output, t.z2.data(), gO, g[2].data(), C, C);  // g[2] = dL/dz2
    // z2 = yn ⊙ SiLU(gl): gYn into g[3], dL/dgl into g[4].
    float *gYn = g[3].data(), *gGl = g[4].data();
#pragma omp parallel for schedule(static)
    for (std::int64_t j = 0; j < N * C; ++j) {
      const float gl = t.gl[j], s = sigmoid(gl);
      gYn[j] = g[2][j] * gl * s;
      gGl[j] = g[2][j] * t.yn[j] * s * (1.0f + gl * (1.0f - s));
    }
    zero(g[5]);
    const float* yk = c.key_norm ? t.yk.data() : t.y.data();
    ops::group_norm_backward(yk, w.ln_x_weight, gYn, g[5].data(), G.ln_x_weight, G.ln_x_bias, N, C,
                             C / c.head_size, ops::kLayerNormEps);
    float* gY = g[5].data();
    if (c.key_norm)
      zero(g[3]),
          norm_backward(w.att_key_norm_weight, G.att_key_norm_weight, G.att_key_norm_bias, t.y.data(), g[5].data(),
                        g[3].data(), C),
          gY = g[3].data();
    // Bi-WKV6: gr → g[6], gk → g[1], gv → g[2], gw → g[8].
    float *gr = g[6].data(), *gk = g[1].data(), *gv = g[2].data(), *gw = g[8].data();
    zero(g[6]), zero(g[1]), zero(g[2]), zero(g[8]);
    ops::wkv6_backward(t.r.data(), t.k.data(), t.v.data(), t.w.data(), w.faaaa, gY, gr, gk, gv, gw, G.faaaa, B, T,
                       C, c.head_size);
    // w = time_decay + dz·Dw2 with dz = tanh(x_w·Dw1).
    column_sums(gw, nullptr, G.decay);
    std::fill(gdz.begin(), gdz.end(), 0.0f);
    std::fill(glora.begin(), glora.begin() + C * D, 0.0f);
    linear_backward(lt.decay_w2.data(), glora.data(), t.dz.data(), gw, gdz.data(), C, D);
    add_transposed(glora.data(), C, D, G.decay_w2);
#pragma omp parallel for schedule(static)
    for (std::int64_t j = 0; j < N * D; ++j) gdz[j] *= 1.0f - t.dz[j] * t.dz[j];
    // dL/dx_j for j = w, k, v, r, g into gx[j] (g[9..13]).
    float* gx[5] = {g[9].data(), g[10].data(), g[11].data(), g[12].data(), g[13].data()};
    for (float* p : gx) std::fill(p, p + N * C, 0.0f);
    std::fill(glora.begin(), glora.begin() + D * C, 0.0f);
    linear_backward(lt.decay_w1.data(), glora.data(), t.xm[0].data(), gdz.data(), gx[0], D, C);
    add_transposed(glora.data(), D, C, G.decay_w1);
    linear_backward(w.att_key, G.att_key, t.xm[1].data(), gk, gx[1], C, C);
    linear_backward(w.att_value, G.att_value, t.xm[2].data(), gv, gx[2], C, C);
    linear_backward(w.att_receptance, G.att_receptance, t.xm[3].data(), gr, gx[3], C, C);
    linear_backward(w.att_gate, G.att_gate, t.xm[4].data(), gGl, gx[4], C, C);
    // x_j = in + d⊙(maa_j + m_j): dIn (g[3]) += gx_j; dd (g[5]) += gx_j⊙(maa_j + m_j);
    // dmaa_j += Σ gx_j⊙d; dm_j = gx_j⊙d, through m_j = z_j·W2[j] to dz_j.
    float *gIn = g[3].data(), *gD = g[5].data();
    zero(g[3]), zero(g[5]);
    std::fill(gzs.begin(), gzs.end(), 0.0f);
    float* maa_grad[5] = {G.maa_w, G.maa_k, G.maa_v, G.maa_r, G.maa_g};
    const float* maa[5] = {w.maa_w, w.maa_k, w.maa_v, w.maa_r, w.maa_g};
    float* gm = g[6].data();  // gr is consumed
    for (int j = 0; j < 5; ++j) {
#pragma omp parallel for schedule(static)
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t ch = 0; ch < C; ++ch) {
          const std::int64_t e = n * C + ch;
          gIn[e] += gx[j][e];
          gD[e] += gx[j][e] * (maa[j][ch] + t.m[j][e]);
          gm[e] = gx[j][e] * t.d[e];
        }
      column_sums(gx[j], t.d.data(), maa_grad[j]);
      std::fill(glora.begin(), glora.begin() + C * R, 0.0f);
      linear_backward(lt.maa_w2.data() + j * C * R, glora.data(), t.zs.data() + j * N * R, gm, gzs.data() + j * N * R,
                      C, R);
      add_transposed(glora.data(), C, R, G.maa_w2 + j * R * C);
    }
    // z = tanh(xxx·W1): back to [N, 5R] rows, through tanh, to xxx (g[9], free again).
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n)
      for (int j = 0; j < 5; ++j)
        for (std::int64_t q = 0; q < R; ++q) {
          const std::int64_t e = (n * 5 + j) * R + q;
          gz[e] = gzs[(j * N + n) * R + q] * (1.0f - t.z[e] * t.z[e]);
        }
    float* gXxx = g[9].data();
    zero(g[9]);
    std::fill(glora.begin(), glora.begin() + 5 * R * C, 0.0f);
    linear_backward(lt.maa_w1.data(), glora.data(), t.xxx.data(), gz.data(), gXxx, 5 * R, C);
    add_transposed(glora.data(), 5 * R, C, G.maa_w1);
    // xxx = in + d⊙maa_x; d = shift(in) − in.
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t ch = 0; ch < C; ++ch) {
        const std::int64_t e = n * C + ch;
        gD[e] += gXxx[e] * w.maa_x[ch];
        gIn[e] += gXxx[e] - gD[e];
      }
    column_sums(gXxx, t.d.data(), G.maa_x);
    const float* in = pre ? t.a.data() : x;
    if (c.shift_pixel > 0) {
      const float* no_mix[1] = {nullptr};
      const float* dd[1] = {gD};
      float* no_dmu[1] = {nullptr};
      ops::q_shift_mix_backward(in, B, grid, C, c.shift_pixel, 0.25, 1, no_mix, dd, gIn, no_dmu, c.head_size);
    } else {
      add_to(gIn, gD);  // d = 0: shift(in) is in itself
    }
    if (pre) norm_backward(w.ln1_weight, G.ln1_weight, G.ln1_bias, x, gIn, ds, C);
    else
      add_to(ds, gIn);
    if (i == 0) {
      std::fill(dx, dx + N * C, 0.0f);
      norm_backward(w.ln0_weight, G.ln0_weight, G.ln0_bias, x_in, ds, dx, C);
    }
  }

 private:
  // out = the per-head Q-Shift of x (x itself with shift_pixel 0).
  void shift(const BlockOps& ops, const float* x, float* out) const {
    const float* no_mix[1] = {nullptr};
    float* outs[1] = {out};
    if (c.shift_pixel == 0) std::memcpy(out, x, N * C * sizeof(float));
    else ops.q_shift_mix(x, B, grid, C, c.shift_pixel, 0.25, 1, no_mix, outs, c.head_size);
  }

  // y += x over [N, C].
  void add_to(float* y, const float* x) const {
#pragma omp parallel for schedule(static)
    for (std::int64_t j = 0; j < N * C; ++j) y[j] += x[j];
  }

  // sums[ch] += Σ_n a[n,ch]·b[n,ch] (b null: 1), by channel ranges, each summing the rows in order (the
  // result does not depend on the thread count).
  void column_sums(const float* a, const float* b, float* sums) const {
    constexpr std::int64_t kRange = 64;
#pragma omp parallel for schedule(static)
    for (std::int64_t c0 = 0; c0 < C; c0 += kRange) {
      const std::int64_t c1 = std::min(C, c0 + kRange);
      float acc[kRange] = {};
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t ch = c0; ch < c1; ++ch) acc[ch - c0] += a[n * C + ch] * (b ? b[n * C + ch] : 1.0f);
      for (std::int64_t ch = c0; ch < c1; ++ch) sums[ch] += acc[ch - c0];
    }
  }

  void residual(const float* x, const float* branch, const float* keep, const float* gamma, float* x_out) const {
    parts::residual({B, T, N, C}, x, branch, keep, gamma, x_out);
  }
  void residual_backward(const float* branch, const float* keep, const float* gamma, float* dgamma, const float* dx,
                         float* dbranch) const {
    parts::residual_backward({B, T, N, C}, branch, keep, gamma, dgamma, dx, dbranch);
  }

  const Architecture c;
  std::vector<Vrwkv6Weights> w_;
  const float* base_;
  std::vector<LoraT> lora_;
  std::int64_t B = 0, T = 0, N = 0, C = 0, Hd = 0, R = 0, D = 0;
  Grid grid;
  std::vector<Tape> tapes_;
  std::optional<parts::ChannelMix> ffn_;  // made by plan()
  Buf g[14], gz, gzs, gdz, glora;
};

}  // namespace

const BlockKindEntry& vrwkv6_block_kind() {
  static const BlockKindEntry entry = {
      "vrwkv6",
      "att.time_maa_w1",
      row_infos,
      extra_flops,
      [](const Architecture& a, const Lookup& lookup) -> std::unique_ptr<FastBlocks> {
        return std::make_unique<FastVrwkv6>(a, lookup);
      },
      [](const Architecture& a, const Lookup& lookup, const float* params) -> std::unique_ptr<TrainBlocks> {
        return std::make_unique<TrainVrwkv6>(a, lookup, params);
      },
  };
  return entry;
}

}  // namespace vrwkv::model
