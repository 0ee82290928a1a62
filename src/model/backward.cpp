// The VRWKV backward pass: a forward that keeps what the backward needs (per
// block, or only block inputs with recomputation), the label-smoothed
// cross-entropy, and the reverse pass through head, final norm, blocks and
// embedding (VRWKV.md 1.1-1.8; the Bi-WKV gradient of either semantics, 2.6).
// Every op's backward lives next to its forward in src/ops; this file only
// wires them together.
#include "vrwkv/backward.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "ops/biwkv.hpp"
#include "ops/fast_math.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/patch_embed.hpp"
#include "ops/pos_embed.hpp"
#include "ops/qshift.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv {

Gradients::Gradients(const Model& model) : storage(DType::F32, {model.parameter_count()}) {
  std::int64_t offset = 0;
  for (const auto& [name, shape] : parameter_shapes(model.config())) {
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
using Buf = std::vector<float>;

void zero(Buf& b) { std::fill(b.begin(), b.end(), 0.0f); }

// What the backward of one block needs (names follow VRWKV.md 1.4-1.7).
// Pre-norm: a = ln1(x), b = ln2(x_mid); post-norm mixes the residual stream
// itself and normalises the branch outputs (on, fn).
struct BlockTape {
  Buf a, xk, xv, xr, k, v, r, y, yn, z, o, on, x_mid, b, fk, fr, hk, sq, sqn, kv, r2, f, fn;
  void allocate(std::int64_t N, std::int64_t C, std::int64_t Hd, const Config& c) {
    for (Buf* p : {&xk, &xv, &xr, &k, &v, &r, &y, &z, &o, &x_mid, &fk, &fr, &kv, &r2, &f}) p->resize(N * C);
    for (Buf* p : {&hk, &sq}) p->resize(N * Hd);
    if (!c.post_norm) a.resize(N * C), b.resize(N * C);
    if (c.post_norm) on.resize(N * C), fn.resize(N * C);
    if (c.key_norm) yn.resize(N * C), sqn.resize(N * Hd);
  }
  std::int64_t bytes() const {
    std::int64_t n = 0;
    for (const Buf* p : {&a, &xk, &xv, &xr, &k, &v, &r, &y, &yn, &z, &o, &on, &x_mid, &b, &fk, &fr, &hk, &sq, &sqn,
                         &kv, &r2, &f, &fn})
      n += static_cast<std::int64_t>(p->size());
    return n * static_cast<std::int64_t>(sizeof(float));
  }
};

// splitmix64: the drop-path coin of (seed, block, branch, sample).
std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

struct Backprop::Impl {
  const Model& model;
  const Config& c;
  std::int64_t B = 0, H = 0, W = 0, N = 0, C = 0, Hd = 0, T = 0, last = 0;
  bool recompute = false;
  Grid grid, train_grid;
  // xs[i]: input of block i (xs[0] is the embedding, before ln0); xs[last+1]: output of the last block used.
  std::vector<Buf> xs;
  Buf x0;  // ln0(embedding): block 0's residual stream
  std::vector<BlockTape> tapes;  // one per block, or a single one reused when recomputing
  Buf feat, pooled, head_hidden, pos, cols, wu;
  Buf g[8], gh[2], dx, dpos, dpooled, dhidden, dlogits, gwu;

  Impl(const Model& m) : model(m), c(m.config()) {}

  const float* P(const std::string& name) const { return model.parameters().at(name).f32(); }

  void plan(const Tensor& input, bool recompute_) {
    const std::int64_t b = input.dim(0), h = input.dim(2), w = input.dim(3);
    if (b == B && h == H && w == W && recompute_ == recompute && !xs.empty()) return;
    B = b, H = h, W = w, recompute = recompute_;
    grid = ops::patch_grid(H, W, c.patch_size), train_grid = {c.pos_grid_h, c.pos_grid_w};
    T = grid.tokens(), N = B * T, C = c.embed_dims, Hd = c.hidden_dims;
    last = c.out_indices.back();
    xs.assign(last + 2, Buf(N * C));
    x0.resize(N * C);
    tapes.clear();
    tapes.resize(recompute ? 1 : last + 1);
    for (BlockTape& t : tapes) t.allocate(N, C, Hd, c);
    feat.resize(N * C), pooled.resize(B * C), pos.resize(T * C), wu.resize(2 * C), gwu.resize(2 * C);
    cols.resize(N * c.in_channels * c.patch_size * c.patch_size);
    for (Buf& s : g) s.resize(N * C);
    for (Buf& s : gh) s.resize(N * Hd);
    dx.resize(N * C), dpos.resize(T * C), dpooled.resize(B * C);
    head_hidden.resize(B * std::max<std::int64_t>(c.head_hidden, 1));
    dhidden.resize(head_hidden.size());
    dlogits.resize(B * c.num_classes);
  }

  BlockTape& tape(std::int64_t i) { return tapes[recompute ? 0 : i]; }
  float* block_input(std::int64_t i) { return i == 0 ? x0.data() : xs[i].data(); }

  void norm(const std::string& prefix, const float* x, float* y, std::int64_t width) const {
    ops::layernorm(x, P(prefix + ".weight"), P(prefix + ".bias"), y, N, width, ops::kLayerNormEps);
  }
  void linear(const std::string& weight, const float* x, float* y, std::int64_t n, std::int64_t k) const {
    ops::linear(x, P(weight), nullptr, y, N, n, k);
  }

  // Q-Shift + mixing of `x` into the tape buffers `outs` (a copy with shift_pixel 0).
  void shift_mix(const float* x, const std::string& prefix, std::initializer_list<const char*> names,
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
    for (const char* name : names) mu[n++] = P(prefix + name);
    ops::q_shift_mix(x, B, grid, C, c.shift_pixel, c.channel_gamma, n, mu, bufs);
  }

  // w = spatial_decay/T, u = spatial_first/T for this input (VRWKV.md 1.6).
  void decay_first(const std::string& l) {
    const float Tf = static_cast<float>(T);
    const float *decay = P(l + "att.spatial_decay"), *first = P(l + "att.spatial_first");
    for (std::int64_t ch = 0; ch < C; ++ch) wu[ch] = decay[ch] / Tf, wu[C + ch] = first[ch] / Tf;
  }

  // x_out = x + keep·γ ⊙ branch (γ = 1 without layer scale).
  void residual(const float* x, const float* branch, const std::vector<float>& keep, const std::string& gamma,
                float* x_out) const {
    const float* gm = c.layer_scale ? P(gamma) : nullptr;
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n) {
      const float s = keep[n / T];
      for (std::int64_t ch = 0; ch < C; ++ch)
        x_out[n * C + ch] = x[n * C + ch] + s * (gm ? gm[ch] : 1.0f) * branch[n * C + ch];
    }
  }

  // Block i forward (VRWKV.md 1.4), keeping its activations in `t`.
  void block_forward(std::int64_t i, BlockTape& t) {
    const std::string l = "backbone.layers." + std::to_string(i) + ".";
    const float* x = block_input(i);
    const bool pre = !c.post_norm;
    // Spatial Mix (1.6).
    if (pre) norm(l + "ln1", x, t.a.data(), C);
    shift_mix(pre ? t.a.data() : x, l + "att.", {"spatial_mix_k", "spatial_mix_v", "spatial_mix_r"},
              {&t.xk, &t.xv, &t.xr});
    linear(l + "att.key.weight", t.xk.data(), t.k.data(), C, C);
    linear(l + "att.value.weight", t.xv.data(), t.v.data(), C, C);
    linear(l + "att.receptance.weight", t.xr.data(), t.r.data(), C, C);
    decay_first(l);
    ops::biwkv(wu.data(), wu.data() + C, t.k.data(), t.v.data(), t.y.data(), B, T, C, {c.wkv, c.wkv_chunks});
    const float* yn = t.y.data();
    if (c.key_norm) norm(l + "att.key_norm", t.y.data(), t.yn.data(), C), yn = t.yn.data();
#pragma omp parallel for schedule(static)
    for (std::int64_t j = 0; j < N * C; ++j) t.z[j] = ops::sigmoid_fast(t.r[j]) * yn[j];
    linear(l + "att.output.weight", t.z.data(), t.o.data(), C, C);
    if (!pre) norm(l + "ln1", t.o.data(), t.on.data(), C);
    residual(x, pre ? t.o.data() : t.on.data(), keep[i][0], l + "gamma1", t.x_mid.data());
    // Channel Mix (1.7).
    if (pre) norm(l + "ln2", t.x_mid.data(), t.b.data(), C);
    shift_mix(pre ? t.b.data() : t.x_mid.data(), l + "ffn.", {"spatial_mix_k", "spatial_mix_r"}, {&t.fk, &t.fr});
    linear(l + "ffn.receptance.weight", t.fr.data(), t.r2.data(), C, C);
    linear(l + "ffn.key.weight", t.fk.data(), t.hk.data(), Hd, C);
#pragma omp parallel for schedule(static)
    for (std::int64_t j = 0; j < N * Hd; ++j) {
      const float a = std::max(t.hk[j], 0.0f);
      t.sq[j] = a * a;
    }
    const float* sqn = t.sq.data();
    if (c.key_norm)
      ops::layernorm(t.sq.data(), P(l + "ffn.key_norm.weight"), P(l + "ffn.key_norm.bias"), t.sqn.data(), N, Hd),
          sqn = t.sqn.data();
    linear(l + "ffn.value.weight", sqn, t.kv.data(), C, Hd);
#pragma omp parallel for schedule(static)
    for (std::int64_t j = 0; j < N * C; ++j) t.f[j] = ops::sigmoid_fast(t.r2[j]) * t.kv[j];
    if (!pre) norm(l + "ln2", t.f.data(), t.fn.data(), C);
    residual(t.x_mid.data(), pre ? t.f.data() : t.fn.data(), keep[i][1], l + "gamma2", xs[i + 1].data());
  }

  // The gradient of x + keep·γ⊙branch: dbranch = keep·γ⊙dx, dγ += Σ keep·dx⊙branch.
  void residual_backward(const float* branch, const std::vector<float>& keep, const std::string& gamma, Gradients& G,
                         float* dbranch) const {
    const float* gm = c.layer_scale ? P(gamma) : nullptr;
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n) {
      const float s = keep[n / T];
      for (std::int64_t ch = 0; ch < C; ++ch) dbranch[n * C + ch] = s * (gm ? gm[ch] : 1.0f) * dx[n * C + ch];
    }
    if (!gm) return;
    float* dg = G.tensors.at(gamma).f32();
    for (std::int64_t ch = 0; ch < C; ++ch) {
      float acc = 0;
      for (std::int64_t n = 0; n < N; ++n) acc += keep[n / T] * dx[n * C + ch] * branch[n * C + ch];
      dg[ch] += acc;
    }
  }

  void norm_backward(const std::string& prefix, const float* x, const float* dy, float* dxo, Gradients& G,
                     std::int64_t width) const {
    ops::layernorm_backward(x, P(prefix + ".weight"), dy, dxo, G.tensors.at(prefix + ".weight").f32(),
                            G.tensors.at(prefix + ".bias").f32(), N, width, ops::kLayerNormEps);
  }
  void linear_backward(const std::string& weight, const float* x, const float* dy, float* dxo, Gradients& G,
                       std::int64_t n, std::int64_t k) const {
    ops::linear_backward(x, P(weight), dy, dxo, G.tensors.at(weight).f32(), nullptr, N, n, k);
  }
  void mix_backward(const float* x, const std::string& prefix, std::initializer_list<const char*> names,
                    std::initializer_list<const float*> douts, float* dxo, Gradients& G) const {
    const float* mu[3];
    const float* d[3];
    float* dmu[3];
    int n = 0;
    for (const float* p : douts) d[n++] = p;
    int m = 0;
    if (c.shift_pixel > 0)
      for (const char* name : names) mu[m] = P(prefix + name), dmu[m] = G.tensors.at(prefix + name).f32(), ++m;
    ops::q_shift_mix_backward(x, B, grid, C, c.shift_pixel, c.channel_gamma, n, mu, d, dxo, dmu);
  }

  // Block i backward: dx holds dL/d(block output) and becomes dL/d(block input).
  void block_backward(std::int64_t i, BlockTape& t, Gradients& G) {
    const std::string l = "backbone.layers." + std::to_string(i) + ".";
    const float* x = block_input(i);
    const bool pre = !c.post_norm;
    const auto sig = [](float v) { return ops::sigmoid_fast(v); };

    // Channel Mix: x_out = x_mid + keep2·γ2 ⊙ (pre ? f : ln2(f)).
    residual_backward(pre ? t.f.data() : t.fn.data(), keep[i][1], l + "gamma2", G, g[0].data());
    float* gF = g[0].data();
    if (!pre) zero(g[1]), norm_backward(l + "ln2", t.f.data(), g[0].data(), g[1].data(), G, C), gF = g[1].data();
    float *gKv = g[2].data(), *gR2 = g[3].data();
#pragma omp parallel for schedule(static)
    for (std::int64_t j = 0; j < N * C; ++j) {
      const float s = sig(t.r2[j]);
      gKv[j] = gF[j] * s;
      gR2[j] = gF[j] * t.kv[j] * s * (1.0f - s);
    }
    zero(gh[0]);
    linear_backward(l + "ffn.value.weight", c.key_norm ? t.sqn.data() : t.sq.data(), gKv, gh[0].data(), G, C, Hd);
    float* gSq = gh[0].data();
    if (c.key_norm) {
      zero(gh[1]);
      ops::layernorm_backward(t.sq.data(), P(l + "ffn.key_norm.weight"), gh[0].data(), gh[1].data(),
                              G.tensors.at(l + "ffn.key_norm.weight").f32(),
                              G.tensors.at(l + "ffn.key_norm.bias").f32(), N, Hd);
      gSq = gh[1].data();
    }
    // d relu(h)² / dh = 2·relu(h) (0 at the kink).
#pragma omp parallel for schedule(static)
    for (std::int64_t j = 0; j < N * Hd; ++j) gSq[j] *= 2.0f * std::max(t.hk[j], 0.0f);
    zero(g[4]), zero(g[5]);
    linear_backward(l + "ffn.key.weight", t.fk.data(), gSq, g[4].data(), G, Hd, C);
    linear_backward(l + "ffn.receptance.weight", t.fr.data(), gR2, g[5].data(), G, C, C);
    if (pre) {
      zero(g[0]);
      mix_backward(t.b.data(), l + "ffn.", {"spatial_mix_k", "spatial_mix_r"}, {g[4].data(), g[5].data()},
                   g[0].data(), G);
      norm_backward(l + "ln2", t.x_mid.data(), g[0].data(), dx.data(), G, C);
    } else {
      mix_backward(t.x_mid.data(), l + "ffn.", {"spatial_mix_k", "spatial_mix_r"}, {g[4].data(), g[5].data()},
                   dx.data(), G);
    }

    // Spatial Mix: x_mid = x + keep1·γ1 ⊙ (pre ? o : ln1(o)).
    residual_backward(pre ? t.o.data() : t.on.data(), keep[i][0], l + "gamma1", G, g[0].data());
    float* gO = g[0].data();
    if (!pre) zero(g[1]), norm_backward(l + "ln1", t.o.data(), g[0].data(), g[1].data(), G, C), gO = g[1].data();
    zero(g[2]);
    linear_backward(l + "att.output.weight", t.z.data(), gO, g[2].data(), G, C, C);
    const float* yn = c.key_norm ? t.yn.data() : t.y.data();
    float *gYn = g[3].data(), *gR = g[4].data();
#pragma omp parallel for schedule(static)
    for (std::int64_t j = 0; j < N * C; ++j) {
      const float s = sig(t.r[j]);
      gYn[j] = g[2][j] * s;
      gR[j] = g[2][j] * yn[j] * s * (1.0f - s);
    }
    float* gY = gYn;
    if (c.key_norm) zero(g[5]), norm_backward(l + "att.key_norm", t.y.data(), gYn, g[5].data(), G, C), gY = g[5].data();
    decay_first(l);
    zero(g[6]), zero(g[7]), std::fill(gwu.begin(), gwu.end(), 0.0f);
    ops::biwkv_backward(wu.data(), wu.data() + C, t.k.data(), t.v.data(), gY, gwu.data(), gwu.data() + C,
                        g[6].data(), g[7].data(), B, T, C, {c.wkv, c.wkv_chunks});
    // w = spatial_decay/T, u = spatial_first/T.
    float *gd = G.tensors.at(l + "att.spatial_decay").f32(), *gf = G.tensors.at(l + "att.spatial_first").f32();
    for (std::int64_t ch = 0; ch < C; ++ch) gd[ch] += gwu[ch] / T, gf[ch] += gwu[C + ch] / T;
    zero(g[0]), zero(g[1]), zero(g[2]);
    linear_backward(l + "att.key.weight", t.xk.data(), g[6].data(), g[0].data(), G, C, C);
    linear_backward(l + "att.value.weight", t.xv.data(), g[7].data(), g[1].data(), G, C, C);
    linear_backward(l + "att.receptance.weight", t.xr.data(), gR, g[2].data(), G, C, C);
    const std::initializer_list<const char*> mixes = {"spatial_mix_k", "spatial_mix_v", "spatial_mix_r"};
    if (pre) {
      zero(g[3]);
      mix_backward(t.a.data(), l + "att.", mixes, {g[0].data(), g[1].data(), g[2].data()}, g[3].data(), G);
      norm_backward(l + "ln1", x, g[3].data(), dx.data(), G, C);
    } else {
      mix_backward(x, l + "att.", mixes, {g[0].data(), g[1].data(), g[2].data()}, dx.data(), G);
    }
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
                                                       static_cast<std::uint64_t>(b)));
          const double coin = static_cast<double>(r >> 11) * 0x1.0p-53;
          keep[i][branch][b] = coin < p ? 0.0f : static_cast<float>(1.0 / (1.0 - p));
        }
    }
  }
  std::vector<std::array<std::vector<float>, 2>> keep;  // [block][branch][sample] drop-path scale

  LossResult run(const Tensor& input, const Tensor& targets, Gradients& G, const BackwardOptions& o) {
    if (c.head == HeadKind::None) input_error("the model has no classification head, so there is no loss to derive");
    if (input.dtype() != DType::F32 || input.ndim() != 4 || input.dim(1) != c.in_channels || input.dim(0) < 1 ||
        input.dim(2) < 1 || input.dim(3) < 1)
      input_error("input has shape ", shape_str(input.shape()), " (", dtype_name(input.dtype()), "), expected F32 [B,",
                  c.in_channels, ",H,W]");
    const std::int64_t K = c.num_classes;
    if (targets.dtype() != DType::F32 || targets.shape() != Shape{input.dim(0), K})
      input_error("targets have shape ", shape_str(targets.shape()), ", expected F32 [", input.dim(0), ",", K, "]");
    plan(input, o.recompute);
    draw_drop_path(o);

    // Embedding (1.2, 1.3) and ln0.
    float* e = xs[0].data();
    ops::patch_embed(input.f32(), P("backbone.patch_embed.projection.weight"),
                     P("backbone.patch_embed.projection.bias"), e, B, c.in_channels, H, W, C, c.patch_size,
                     cols.data());
    const bool resized = grid.H != train_grid.H || grid.W != train_grid.W;
    const float* pe = P("backbone.pos_embed");
    if (resized) ops::resize_pos_embed(pe, train_grid, pos.data(), grid, C), pe = pos.data();
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t ch = 0; ch < C; ++ch) e[n * C + ch] += pe[(n % T) * C + ch];
    norm("backbone.layers.0.ln0", e, x0.data(), C);

    for (std::int64_t i = 0; i <= last; ++i) block_forward(i, tape(i));

    // Final norm (after the last block only), pooling, head, loss (1.8).
    const bool final_norm = c.final_norm && last == c.depth - 1;
    const float* xl = xs[last + 1].data();
    if (final_norm) norm("backbone.ln1", xl, feat.data(), C);
    else std::memcpy(feat.data(), xl, N * C * sizeof(float));
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t ch = 0; ch < C; ++ch) {
        double s = 0;
        for (std::int64_t t = 0; t < T; ++t) s += feat[(b * T + t) * C + ch];
        pooled[b * C + ch] = static_cast<float>(s / T);
      }
    LossResult result;
    result.logits = Tensor(DType::F32, {B, K});
    float* logits = result.logits.f32();
    const std::int64_t Hh = c.head_hidden;
    if (c.head == HeadKind::Linear) {
      ops::linear(pooled.data(), P("head.fc.weight"), P("head.fc.bias"), logits, B, K, C);
    } else {
      ops::linear(pooled.data(), P("head.0.weight"), P("head.0.bias"), head_hidden.data(), B, Hh, C);
      for (std::int64_t j = 0; j < B * Hh; ++j) head_hidden[j] = std::tanh(head_hidden[j]);
      ops::linear(head_hidden.data(), P("head.2.weight"), P("head.2.bias"), logits, B, K, Hh);
    }
    // mmcls LabelSmoothLoss, mode 'original': target' = (1−ε)·target + ε/K,
    // loss = mean_b −Σ_k target'·log_softmax(logits); dlogits = (softmax − target')/B.
    const double eps = o.label_smoothing;
    double loss = 0;
    for (std::int64_t b = 0; b < B; ++b) {
      const float* z = logits + b * K;
      const double zmax = *std::max_element(z, z + K);
      double se = 0;
      for (std::int64_t k = 0; k < K; ++k) se += std::exp(z[k] - zmax);
      const double lse = zmax + std::log(se);
      for (std::int64_t k = 0; k < K; ++k) {
        const double target = (1.0 - eps) * targets.f32()[b * K + k] + eps / K;
        loss -= target * (z[k] - lse);
        dlogits[b * K + k] = static_cast<float>((std::exp(z[k] - lse) - target) / B);
      }
    }
    result.loss = loss / B;

    // Backward: head, pooling, final norm.
    std::fill(dpooled.begin(), dpooled.end(), 0.0f);
    const auto grad = [&](const char* name) { return G.tensors.at(name).f32(); };
    if (c.head == HeadKind::Linear) {
      ops::linear_backward(pooled.data(), P("head.fc.weight"), dlogits.data(), dpooled.data(), grad("head.fc.weight"),
                           grad("head.fc.bias"), B, K, C);
    } else {
      std::fill(dhidden.begin(), dhidden.end(), 0.0f);
      ops::linear_backward(head_hidden.data(), P("head.2.weight"), dlogits.data(), dhidden.data(),
                           grad("head.2.weight"), grad("head.2.bias"), B, K, Hh);
      for (std::int64_t j = 0; j < B * Hh; ++j) dhidden[j] *= 1.0f - head_hidden[j] * head_hidden[j];
      ops::linear_backward(pooled.data(), P("head.0.weight"), dhidden.data(), dpooled.data(), grad("head.0.weight"),
                           grad("head.0.bias"), B, Hh, C);
    }
    float* dfeat = g[0].data();
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t ch = 0; ch < C; ++ch) dfeat[n * C + ch] = dpooled[(n / T) * C + ch] / T;
    if (final_norm) zero(dx), norm_backward("backbone.ln1", xl, dfeat, dx.data(), G, C);
    else std::memcpy(dx.data(), dfeat, N * C * sizeof(float));

    // Blocks, last to first (recomputing each block's activations if asked).
    for (std::int64_t i = last; i >= 0; --i) {
      if (recompute) block_forward(i, tapes[0]);
      block_backward(i, tape(i), G);
    }

    // ln0, position embedding, patch embedding.
    zero(g[1]);
    norm_backward("backbone.layers.0.ln0", e, dx.data(), g[1].data(), G, C);
    const float* de = g[1].data();
    std::fill(dpos.begin(), dpos.end(), 0.0f);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t ch = 0; ch < C; ++ch) dpos[(n % T) * C + ch] += de[n * C + ch];
    float* dpe = grad("backbone.pos_embed");
    if (resized) ops::resize_pos_embed_backward(dpos.data(), grid, dpe, train_grid, C);
    else
      for (std::int64_t j = 0; j < T * C; ++j) dpe[j] += dpos[j];
    ops::patch_embed_backward(input.f32(), de, grad("backbone.patch_embed.projection.weight"),
                              grad("backbone.patch_embed.projection.bias"), B, c.in_channels, H, W, C, c.patch_size,
                              cols.data());
    return result;
  }

  std::int64_t activation_bytes() const {
    std::int64_t n = 0;
    for (const Buf& b : xs) n += static_cast<std::int64_t>(b.size());
    n += static_cast<std::int64_t>(x0.size());
    n *= sizeof(float);
    for (const BlockTape& t : tapes) n += t.bytes();
    return n;
  }
};

Backprop::Backprop(const Model& model) : impl_(std::make_unique<Impl>(model)) {}
Backprop::~Backprop() = default;

LossResult Backprop::run(const Tensor& input, const Tensor& targets, Gradients& grads, const BackwardOptions& options) {
  return impl_->run(input, targets, grads, options);
}

std::int64_t Backprop::activation_bytes() const { return impl_->activation_bytes(); }

}  // namespace vrwkv
