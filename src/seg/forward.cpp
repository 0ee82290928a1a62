// One backbone call of the segmentor and its heads (DENSE.md (a)-(c)), on
// NHWC maps throughout (token sequences [B,H·W,C] are maps already): the
// spatial prior module, the interactions (injector → blocks → extractor),
// the fusion into four maps at strides 4..32 and their BatchNorms, UPerHead
// and FCNHead. The fast path runs oneDNN convolutions with the BatchNorms
// folded in; the reference path runs the plain ops with separate BatchNorms.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops/deform_attn.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/maps.hpp"
#include "seg/state.hpp"
#include "threads.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::seg {

ops::Conv2d& State::conv(const ConvW& c) {
  std::lock_guard<std::mutex> lock(mutex);
  std::unique_ptr<ops::Conv2d>& slot = convs[&c];
  if (!slot) {
    if (c.bn.weight) {
      std::vector<float> scale(c.shape.Co), shift(c.shape.Co);
      ops::batch_norm_affine(c.shape.Co, c.bn.weight, c.bn.bias, c.bn.mean, c.bn.var, scale.data(), shift.data());
      slot = std::make_unique<ops::Conv2d>(c.weight, c.bias, c.shape, scale.data(), shift.data(), c.relu);
    } else {
      slot = std::make_unique<ops::Conv2d>(c.weight, c.bias, c.shape, nullptr, nullptr, c.relu);
    }
  }
  return *slot;
}

ops::ConvTranspose2d& State::up_conv() {
  std::lock_guard<std::mutex> lock(mutex);
  if (!up) up = std::make_unique<ops::ConvTranspose2d>(w.adapter.up.weight, w.adapter.up.bias, w.adapter.up.shape);
  return *up;
}

namespace {

constexpr float kAdapterNormEps = 1e-6f;

using Buf = std::vector<float>;

// An NHWC map of B images.
struct Map {
  Buf v;
  std::int64_t B = 0, H = 0, W = 0, C = 0;
  Map() = default;
  Map(std::int64_t b, std::int64_t h, std::int64_t w, std::int64_t c) : v(b * h * w * c), B(b), H(h), W(w), C(c) {}
  float* data() { return v.data(); }
  const float* data() const { return v.data(); }
};

// NHWC [B,H,W,C] ↔ NCHW [B,C,H,W].
Tensor to_nchw(const float* x, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C) {
  Tensor t(DType::F32, {B, C, H, W});
  float* o = t.f32();
  // In tiles of 64 pixels × 64 channels, so that reads and writes both stay in cache lines.
  const std::int64_t P = H * W;
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t p0 = 0; p0 < P; p0 += 64)
      for (std::int64_t c0 = 0; c0 < C; c0 += 64)
        for (std::int64_t c = c0; c < std::min(C, c0 + 64); ++c)
          for (std::int64_t p = p0; p < std::min(P, p0 + 64); ++p) o[(b * C + c) * P + p] = x[(b * P + p) * C + c];
  return t;
}
Tensor to_nchw(const Map& m) { return to_nchw(m.data(), m.B, m.H, m.W, m.C); }
Tensor tokens_tensor(const float* x, std::int64_t B, std::int64_t N, std::int64_t C) {
  Tensor t(DType::F32, {B, N, C});
  std::memcpy(t.f32(), x, sizeof(float) * B * N * C);
  return t;
}

// The ops of one path.
class Runner {
 public:
  Runner(State& state, const SegmentorConfig& config, bool reference, bool bf16)
      : s_(state), c_(config), reference_(reference), compute_(bf16 ? DType::BF16 : DType::F32) {}
  bool reference() const { return reference_; }

  // y = ConvModule / conv of x; y's pixels y_stride floats apart (0: Co).
  void conv(const ConvW& cw, const float* x, float* y, std::int64_t B, std::int64_t H, std::int64_t W,
            std::int64_t y_stride = 0) {
    const ops::ConvShape& sh = cw.shape;
    const std::int64_t n = B * sh.out(H) * sh.out(W), ys = y_stride ? y_stride : sh.Co;
    if (!reference_ && ys == sh.Co) return s_.conv(cw)(x, y, B, H, W, compute_);
    Buf tmp(n * sh.Co);
    if (!reference_) {
      s_.conv(cw)(x, tmp.data(), B, H, W, compute_);
    } else {
      ops::conv2d_ref(x, cw.weight, cw.bias, tmp.data(), B, H, W, sh);
      if (cw.bn.weight)
        ops::batch_norm_ref(tmp.data(), tmp.data(), n, sh.Co, cw.bn.weight, cw.bn.bias, cw.bn.mean, cw.bn.var,
                            cw.relu);
      else if (cw.relu)
        ops::relu(tmp.data(), tmp.size());
    }
    for (std::int64_t i = 0; i < n; ++i) std::copy_n(tmp.data() + i * sh.Co, sh.Co, y + i * ys);
  }
  Map conv(const ConvW& cw, const Map& x) {
    Map y(x.B, cw.shape.out(x.H), cw.shape.out(x.W), cw.shape.Co);
    conv(cw, x.data(), y.data(), x.B, x.H, x.W);
    return y;
  }
  void linear(const LinearW& l, const float* x, float* y, std::int64_t M) {
    (reference_ ? ops::linear_ref : ops::linear)(x, l.weight, l.bias, y, M, l.out, l.in);
  }
  void layernorm(const NormW& n, const float* x, float* y, std::int64_t N, std::int64_t C) {
    (reference_ ? ops::layernorm_ref : ops::layernorm)(x, n.weight, n.bias, y, N, C, kAdapterNormEps);
  }
  // MSDeformAttn: out [B·Lq, C] = attn(query [B·Lq, C], feat [B·len_in, C]).
  void deform_attn(const DeformAttnW& a, const float* query, const float* feat, const float* ref, float* out,
                   std::int64_t B, std::int64_t Lq, const std::vector<ops::DeformLevel>& levels) {
    const std::int64_t M = c_.adapter.deform_heads, P = c_.adapter.deform_points, Cv = c_.adapter.value_dims;
    const std::int64_t len_in = levels.back().start + levels.back().H * levels.back().W;
    Buf value(B * len_in * Cv), offsets(B * Lq * a.sampling_offsets.out), logits(B * Lq * a.attention_weights.out),
        sampled(B * Lq * Cv);
    linear(a.value_proj, feat, value.data(), B * len_in);
    linear(a.sampling_offsets, query, offsets.data(), B * Lq);
    linear(a.attention_weights, query, logits.data(), B * Lq);
    const ops::DeformShape shape{B, Lq, len_in, M, Cv / M, P, levels, 1};
    (reference_ ? ops::deform_attn_ref : ops::deform_attn)(value.data(), offsets.data(), logits.data(), ref,
                                                          sampled.data(), shape);
    linear(a.output_proj, sampled.data(), out, B * Lq);
  }

 private:
  State& s_;
  const SegmentorConfig& c_;
  bool reference_;
  DType compute_;
};

// The c tokens' three levels (strides 8, 16, 32 of the backbone input).
struct Levels {
  std::vector<ops::DeformLevel> c;  // the injector's values
  std::vector<ops::DeformLevel> x;  // the extractor's values: the RWKV token grid
  std::int64_t n_c() const { return c.back().start + c.back().H * c.back().W; }
};

// Extractor: c += attn(query_norm(c), feat_norm(x)); c += ffn(ffn_norm(c)).
void extractor(Runner& r, const ExtractorW& e, Buf& c, const Buf& x, const std::vector<float>& ref2,
               const Levels& lv, std::int64_t B, std::int64_t C, std::int64_t hid) {
  const std::int64_t Nc = lv.n_c(), T = lv.x[0].H * lv.x[0].W;
  Buf q(B * Nc * C), f(B * T * C), out(B * Nc * C);
  r.layernorm(e.query_norm, c.data(), q.data(), B * Nc, C);
  r.layernorm(e.feat_norm, x.data(), f.data(), B * T, C);
  r.deform_attn(e.attn, q.data(), f.data(), ref2.data(), out.data(), B, Nc, lv.x);
  for (std::size_t i = 0; i < c.size(); ++i) c[i] += out[i];
  // ConvFFN: fc1, the depthwise 3×3 on each level's map separately, GELU, fc2.
  r.layernorm(e.ffn_norm, c.data(), q.data(), B * Nc, C);
  Buf h(B * Nc * hid), hd(B * Nc * hid);
  r.linear(e.fc1, q.data(), h.data(), B * Nc);
  for (std::int64_t b = 0; b < B; ++b)
    for (const ops::DeformLevel& l : lv.c) {
      const std::int64_t at = (b * Nc + l.start) * hid;
      r.conv(e.dwconv, h.data() + at, hd.data() + at, 1, l.H, l.W);
    }
  ops::gelu(hd.data(), hd.size());
  r.linear(e.fc2, hd.data(), out.data(), B * Nc);
  for (std::size_t i = 0; i < c.size(); ++i) c[i] += out[i];
}

// A resize of the tokens x (an H×W map) added into y (Ho×Wo), scale as PyTorch's.
void add_resized(const float* x, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C, float* y,
                 std::int64_t Ho, std::int64_t Wo, double scale_h, double scale_w) {
  Buf tmp(B * Ho * Wo * C);
  ops::resize_bilinear(x, B, H, W, C, tmp.data(), Ho, Wo, scale_h, scale_w);
  for (std::size_t i = 0; i < tmp.size(); ++i) y[i] += tmp[i];
}

}  // namespace

SegOutputs run(const Segmentor& seg, State& st, const Tensor& input, const SegmentOptions& options,
               const Context& ctx, TensorMap* trace) {
  const SegmentorConfig& cfg = seg.config();
  const std::int64_t C = cfg.backbone.arch.embed_dims, I = cfg.adapter.conv_inplane;
  if (input.dtype() != DType::F32 || input.ndim() != 4 || input.dim(1) != 3 || input.dim(0) < 1)
    input_error("input has shape ", shape_str(input.shape()), " (", dtype_name(input.dtype()),
                "), expected F32 [B,3,H,W]");
  const std::int64_t B = input.dim(0), h = input.dim(2), w = input.dim(3);
  if (h < 32 || w < 32 || h % 32 || w % 32)
    input_error("input is ", h, "x", w, ": one segmentor call needs a height and width that are multiples of 32 "
                "(the official backbone's constraint); use slide inference or resize the image");
  if (options.bf16 && options.reference) input_error("bf16 runs on the fast path only, not the reference path");
  const ThreadScope threads(ctx);
  Runner r(st, cfg, options.reference, options.bf16);
  const SegWeights& W = st.w;
  const AdapterW& a = W.adapter;
  const auto keep = [&](const std::string& name, Tensor t) {
    if (trace) (*trace)[name] = std::move(t);
  };

  // The input as an NHWC map.
  Map img(B, h, w, 3);
  const float* in = input.f32();
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t c = 0; c < 3; ++c)
      for (std::int64_t p = 0; p < h * w; ++p) img.v[(b * h * w + p) * 3 + c] = in[(b * 3 + c) * h * w + p];

  // Spatial prior module.
  Map s = r.conv(a.stem[2], r.conv(a.stem[1], r.conv(a.stem[0], img)));
  Map pooled(B, h / 4, w / 4, I);
  ops::max_pool(s.data(), pooled.data(), B, s.H, s.W, I, 3, 2, 1);
  Map c2p = r.conv(a.conv2, pooled);
  Map c3p = r.conv(a.conv3, c2p);
  Map c4p = r.conv(a.conv4, c3p);
  Map c1 = r.conv(a.fc[0], pooled);
  const Map cl[3] = {r.conv(a.fc[1], c2p), r.conv(a.fc[2], c3p), r.conv(a.fc[3], c4p)};
  keep("backbone.spm.c1", to_nchw(c1));
  for (int l = 0; l < 3; ++l)
    keep("backbone.spm.c" + std::to_string(l + 2), tokens_tensor(cl[l].data(), B, cl[l].H * cl[l].W, C));

  // deform_inputs: the levels and reference points.
  Levels lv;
  std::int64_t start = 0;
  for (int l = 0; l < 3; ++l) {
    lv.c.push_back({cl[l].H, cl[l].W, start});
    start += cl[l].H * cl[l].W;
  }
  const std::int64_t Hx = h / 16, Wx = w / 16, T = Hx * Wx, Nc = start;
  lv.x = {{Hx, Wx, 0}};
  const std::vector<float> ref1 = ops::reference_points(lv.x), ref2 = ops::reference_points(lv.c);
  keep("deform.ref1", [&] {
    Tensor t(DType::F32, {1, T, 1, 2});
    std::copy(ref1.begin(), ref1.end(), t.f32());
    return t;
  }());
  keep("deform.ref2", [&] {
    Tensor t(DType::F32, {1, Nc, 1, 2});
    std::copy(ref2.begin(), ref2.end(), t.f32());
    return t;
  }());

  // c = cat(c2, c3, c4) + level_embed, per image.
  Buf c(B * Nc * C);
  for (std::int64_t b = 0; b < B; ++b)
    for (int l = 0; l < 3; ++l) {
      const std::int64_t n = lv.c[l].H * lv.c[l].W;
      for (std::int64_t t = 0; t < n; ++t)
        for (std::int64_t ch = 0; ch < C; ++ch)
          c[((b * Nc) + lv.c[l].start + t) * C + ch] = cl[l].v[(b * n + t) * C + ch] + a.level_embed[l * C + ch];
    }

  // The RWKV tokens.
  ForwardOptions fo;
  fo.reference = options.reference;
  fo.bf16 = options.bf16;
  Tokens x = seg.backbone().embed(input, fo, ctx);
  if (x.grid_h != Hx || x.grid_w != Wx) runtime_error("patch grid ", x.grid_h, "x", x.grid_w, " for a ", h, "x", w, " input");
  Buf xb(x.x.f32(), x.x.f32() + B * T * C);

  // Interactions.
  std::vector<Buf> outs;
  const std::int64_t hid = cfg.adapter.cffn_hidden;
  for (std::size_t i = 0; i < a.interactions.size(); ++i) {
    const InteractionW& it = a.interactions[i];
    {  // Injector: x += gamma · attn(query_norm(x), feat_norm(c)).
      Buf q(B * T * C), f(B * Nc * C), out(B * T * C);
      r.layernorm(it.query_norm, xb.data(), q.data(), B * T, C);
      r.layernorm(it.feat_norm, c.data(), f.data(), B * Nc, C);
      r.deform_attn(it.attn, q.data(), f.data(), ref1.data(), out.data(), B, T, lv.c);
      for (std::int64_t k = 0; k < B * T; ++k)
        for (std::int64_t ch = 0; ch < C; ++ch) xb[k * C + ch] += it.gamma[ch] * out[k * C + ch];
    }
    const BlockRange range = cfg.adapter.interactions[i];
    std::copy(xb.begin(), xb.end(), x.x.f32());
    seg.backbone().run_blocks(x, range.first, range.second + 1, fo, ctx);
    std::copy(x.x.f32(), x.x.f32() + B * T * C, xb.begin());
    extractor(r, it.extractor, c, xb, ref2, lv, B, C, hid);
    for (const ExtractorW& e : it.extra) extractor(r, e, c, xb, ref2, lv, B, C, hid);
    keep("backbone.interactions." + std::to_string(i) + ".x", tokens_tensor(xb.data(), B, T, C));
    keep("backbone.interactions." + std::to_string(i) + ".c", tokens_tensor(c.data(), B, Nc, C));
    outs.push_back(xb);
  }

  // Split c back into maps; c1 = up(c2) + c1; each scale gets its interaction's tokens.
  Map f[4] = {std::move(c1), Map(B, lv.c[0].H, lv.c[0].W, C), Map(B, Hx, Wx, C), Map(B, lv.c[2].H, lv.c[2].W, C)};
  for (std::int64_t b = 0; b < B; ++b)
    for (int l = 0; l < 3; ++l) {
      const std::int64_t n = lv.c[l].H * lv.c[l].W;
      std::copy_n(c.data() + (b * Nc + lv.c[l].start) * C, n * C, f[l + 1].data() + b * n * C);
    }
  {
    Map up(B, f[0].H, f[0].W, C);
    if (options.reference)
      ops::conv_transpose2d_ref(f[1].data(), a.up.weight, a.up.bias, up.data(), B, f[1].H, f[1].W, a.up.shape);
    else
      st.up_conv()(f[1].data(), up.data(), B, f[1].H, f[1].W);
    keep("backbone.up", to_nchw(up));
    for (std::size_t k = 0; k < up.v.size(); ++k) f[0].v[k] += up.v[k];
  }
  add_resized(outs[0].data(), B, Hx, Wx, C, f[0].data(), f[0].H, f[0].W, 0.25, 0.25);  // scale_factor 4
  add_resized(outs[1].data(), B, Hx, Wx, C, f[1].data(), f[1].H, f[1].W, 0.5, 0.5);    // scale_factor 2
  for (std::size_t k = 0; k < f[2].v.size(); ++k) f[2].v[k] += outs[2][k];
  add_resized(outs[3].data(), B, Hx, Wx, C, f[3].data(), f[3].H, f[3].W, 2.0, 2.0);  // scale_factor 0.5
  SegOutputs out;
  for (int k = 0; k < 4; ++k) {
    keep("backbone.norm" + std::to_string(k + 1) + ".in", to_nchw(f[k]));
    const BatchNormW& bn = a.norm[k];
    ops::batch_norm_ref(f[k].data(), f[k].data(), B * f[k].H * f[k].W, C, bn.weight, bn.bias, bn.mean, bn.var);
    out.features.push_back(to_nchw(f[k]));
  }

  // UPerHead. PPM on f4: cat(f4, resize(ConvModule(pool_s(f4)))) → bottleneck = lat[3].
  const SegHeadConfig& hc = cfg.head;
  const UperW& u = W.decode;
  const std::int64_t ch = hc.channels, S = static_cast<std::int64_t>(hc.pool_scales.size());
  const Map& f4 = f[3];
  Map lat[4];
  {
    const std::int64_t wide = C + S * ch;
    Map cat(B, f4.H, f4.W, wide);
    for (std::int64_t p = 0; p < B * f4.H * f4.W; ++p) std::copy_n(f4.data() + p * C, C, cat.data() + p * wide);
    for (std::int64_t k = 0; k < S; ++k) {
      const std::int64_t sc = hc.pool_scales[k];
      Map pool(B, sc, sc, C);
      ops::adaptive_avg_pool(f4.data(), pool.data(), B, f4.H, f4.W, C, sc);
      const Map pc = r.conv(u.psp[k], pool);
      ops::resize_bilinear(pc.data(), B, sc, sc, ch, cat.data() + C + k * ch, f4.H, f4.W,
                           ops::bilinear_scale(sc, f4.H), ops::bilinear_scale(sc, f4.W), wide);
    }
    lat[3] = r.conv(u.bottleneck, cat);
  }
  for (int i = 0; i < 3; ++i) lat[i] = r.conv(u.lateral[i], f[i]);
  for (int i = 3; i > 0; --i)
    add_resized(lat[i].data(), B, lat[i].H, lat[i].W, ch, lat[i - 1].data(), lat[i - 1].H, lat[i - 1].W,
                ops::bilinear_scale(lat[i].H, lat[i - 1].H), ops::bilinear_scale(lat[i].W, lat[i - 1].W));
  Map logits;
  {
    const std::int64_t H4 = lat[0].H, W4 = lat[0].W, wide = 4 * ch;
    Map cat(B, H4, W4, wide);
    r.conv(u.fpn[0], lat[0].data(), cat.data(), B, H4, W4, wide);
    for (int i = 1; i < 4; ++i) {
      const Map o = i < 3 ? r.conv(u.fpn[i], lat[i]) : std::move(lat[3]);
      ops::resize_bilinear(o.data(), B, o.H, o.W, ch, cat.data() + i * ch, H4, W4, ops::bilinear_scale(o.H, H4),
                           ops::bilinear_scale(o.W, W4), wide);
    }
    logits = r.conv(u.conv_seg, r.conv(u.fpn_bottleneck, cat));
  }
  // Never a class claimed for an overflow.
  for (float v : logits.v)
    if (!std::isfinite(v)) runtime_error("the segmentation logits hold a non-finite value: the computation overflowed");
  out.decode_logits = to_nchw(logits);
  if (hc.auxiliary) out.aux_logits = to_nchw(r.conv(W.aux.conv_seg, r.conv(W.aux.conv, f[2])));
  return out;
}

}  // namespace vrwkv::seg
