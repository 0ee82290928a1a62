// One call of the VRWKV-Adapter (DENSE.md (a)), on NHWC maps throughout: the
// spatial prior module, the interactions (injector → blocks → extractor),
// the fusion of the RWKV tokens into four maps at strides 4..32 and their
// BatchNorms.
#include <algorithm>
#include <cstring>

#include "adapter/adapter.hpp"
#include "ops/deform_attn.hpp"
#include "ops/maps.hpp"
#include "threads.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::adapter {

namespace {

constexpr float kAdapterNormEps = 1e-6f;

using Buf = Floats;  // every buffer below is written in full before it is read

Tensor tokens_tensor(const float* x, std::int64_t B, std::int64_t N, std::int64_t C) {
  Tensor t(DType::F32, {B, N, C});
  std::memcpy(t.f32(), x, sizeof(float) * B * N * C);
  return t;
}

// MSDeformAttn: out [B·Lq, C] = attn(query [B·Lq, C], feat [B·len_in, C]).
void deform_attn(Runner& r, const AdapterConfig& c, const DeformAttnW& a, const float* query, const float* feat,
                 const float* ref, float* out, std::int64_t B, std::int64_t Lq,
                 const std::vector<ops::DeformLevel>& levels) {
  const std::int64_t M = c.deform_heads, P = c.deform_points, Cv = c.value_dims;
  const std::int64_t len_in = levels.back().start + levels.back().H * levels.back().W;
  Buf value(B * len_in * Cv), offsets(B * Lq * a.sampling_offsets.out), logits(B * Lq * a.attention_weights.out),
      sampled(B * Lq * Cv);
  r.linear(a.value_proj, feat, value.data(), B * len_in);
  r.linear(a.sampling_offsets, query, offsets.data(), B * Lq);
  r.linear(a.attention_weights, query, logits.data(), B * Lq);
  const ops::DeformShape shape{B, Lq, len_in, M, Cv / M, P, levels, 1};
  (r.reference() ? ops::deform_attn_ref : ops::deform_attn)(value.data(), offsets.data(), logits.data(), ref,
                                                           sampled.data(), shape);
  r.linear(a.output_proj, sampled.data(), out, B * Lq);
}

// The c tokens' three levels (strides 8, 16, 32 of the backbone input).
struct Levels {
  std::vector<ops::DeformLevel> c;  // the injector's values
  std::vector<ops::DeformLevel> x;  // the extractor's values: the RWKV token grid
  std::int64_t n_c() const { return c.back().start + c.back().H * c.back().W; }
};

// Extractor: c += attn(query_norm(c), feat_norm(x)); c += ffn(ffn_norm(c)).
void extractor(Runner& r, const AdapterConfig& cfg, const ExtractorW& e, Buf& c, const Buf& x,
               const std::vector<float>& ref2, const Levels& lv, std::int64_t B, std::int64_t C) {
  const std::int64_t Nc = lv.n_c(), T = lv.x[0].H * lv.x[0].W, hid = cfg.cffn_hidden;
  Buf q(B * Nc * C), f(B * T * C), out(B * Nc * C);
  r.layernorm(e.query_norm, c.data(), q.data(), B * Nc, C, kAdapterNormEps);
  r.layernorm(e.feat_norm, x.data(), f.data(), B * T, C, kAdapterNormEps);
  deform_attn(r, cfg, e.attn, q.data(), f.data(), ref2.data(), out.data(), B, Nc, lv.x);
  for (std::size_t i = 0; i < c.size(); ++i) c[i] += out[i];
  // ConvFFN: fc1, the depthwise 3×3 on each level's map separately, GELU, fc2.
  r.layernorm(e.ffn_norm, c.data(), q.data(), B * Nc, C, kAdapterNormEps);
  Buf h(B * Nc * hid), hd(B * Nc * hid);
  r.linear(e.fc1, q.data(), h.data(), B * Nc);
  for (std::int64_t b = 0; b < B; ++b)
    for (const ops::DeformLevel& l : lv.c) {
      const std::int64_t at = (b * Nc + l.start) * hid;
      r.conv(e.dwconv, h.data() + at, hd.data() + at, 1, l.H, l.W);
    }
  ops::gelu(hd.data(), static_cast<std::int64_t>(hd.size()));
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

std::array<Map, 4> forward(const Model& backbone, const AdapterConfig& cfg, const AdapterW& a, ConvCache& cache,
                           const Tensor& input, const RunOptions& options, const Context& ctx, TensorMap* trace) {
  const std::int64_t C = backbone.config().arch.embed_dims, I = cfg.conv_inplane;
  if (input.dtype() != DType::F32 || input.ndim() != 4 || input.dim(1) != 3 || input.dim(0) < 1)
    input_error("input has shape ", shape_str(input.shape()), " (", dtype_name(input.dtype()),
                "), expected F32 [B,3,H,W]");
  const std::int64_t B = input.dim(0), h = input.dim(2), w = input.dim(3);
  if (h < 32 || w < 32 || h % 32 || w % 32)
    input_error("input is ", h, "x", w, ": one backbone call needs a height and width that are multiples of 32 "
                "(the official backbone's constraint); pad or resize the image");
  if (options.bf16 && options.reference) input_error("bf16 runs on the fast path only, not the reference path");
  const ThreadScope threads(ctx);
  Runner r(cache, options.reference, options.bf16);
  // Stores make() under `name` when tracing; make runs only then.
  const auto keep = [&](const std::string& name, auto&& make) {
    if (trace) (*trace)[name] = make();
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
  keep("backbone.spm.c1", [&] { return to_nchw(c1); });
  for (int l = 0; l < 3; ++l)
    keep("backbone.spm.c" + std::to_string(l + 2), [&] { return tokens_tensor(cl[l].data(), B, cl[l].H * cl[l].W, C); });

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
  if (trace) {
    Tensor t1(DType::F32, {1, T, 1, 2}), t2(DType::F32, {1, Nc, 1, 2});
    std::copy(ref1.begin(), ref1.end(), t1.f32());
    std::copy(ref2.begin(), ref2.end(), t2.f32());
    keep("deform.ref1", [&] { return std::move(t1); });
    keep("deform.ref2", [&] { return std::move(t2); });
  }

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
  Tokens x = backbone.embed(input, fo, ctx);
  if (x.grid_h != Hx || x.grid_w != Wx) runtime_error("patch grid ", x.grid_h, "x", x.grid_w, " for a ", h, "x", w, " input");
  Buf xb(x.x.f32(), x.x.f32() + B * T * C);

  // Interactions.
  std::vector<Buf> outs;
  for (std::size_t i = 0; i < a.interactions.size(); ++i) {
    const InteractionW& it = a.interactions[i];
    {  // Injector: x += gamma · attn(query_norm(x), feat_norm(c)).
      Buf q(B * T * C), f(B * Nc * C), out(B * T * C);
      r.layernorm(it.query_norm, xb.data(), q.data(), B * T, C, kAdapterNormEps);
      r.layernorm(it.feat_norm, c.data(), f.data(), B * Nc, C, kAdapterNormEps);
      deform_attn(r, cfg, it.attn, q.data(), f.data(), ref1.data(), out.data(), B, T, lv.c);
      for (std::int64_t k = 0; k < B * T; ++k)
        for (std::int64_t ch = 0; ch < C; ++ch) xb[k * C + ch] += it.gamma[ch] * out[k * C + ch];
    }
    const BlockRange range = cfg.interactions[i];
    std::copy(xb.begin(), xb.end(), x.x.f32());
    backbone.run_blocks(x, range.first, range.second + 1, fo, ctx);
    std::copy(x.x.f32(), x.x.f32() + B * T * C, xb.begin());
    extractor(r, cfg, it.extractor, c, xb, ref2, lv, B, C);
    for (const ExtractorW& e : it.extra) extractor(r, cfg, e, c, xb, ref2, lv, B, C);
    keep("backbone.interactions." + std::to_string(i) + ".x", [&] { return tokens_tensor(xb.data(), B, T, C); });
    keep("backbone.interactions." + std::to_string(i) + ".c", [&] { return tokens_tensor(c.data(), B, Nc, C); });
    if (options.fusion == AdapterFusion::PerInteraction || i + 1 == a.interactions.size()) outs.push_back(xb);
  }

  // Split c back into maps; c1 = up(c2) + c1; the RWKV tokens join each scale:
  // segmentation's interaction k to scale k, detection's last interaction to all four.
  std::array<Map, 4> f = {std::move(c1), Map(B, lv.c[0].H, lv.c[0].W, C), Map(B, Hx, Wx, C),
                          Map(B, lv.c[2].H, lv.c[2].W, C)};
  for (std::int64_t b = 0; b < B; ++b)
    for (int l = 0; l < 3; ++l) {
      const std::int64_t n = lv.c[l].H * lv.c[l].W;
      std::copy_n(c.data() + (b * Nc + lv.c[l].start) * C, n * C, f[l + 1].data() + b * n * C);
    }
  {
    const Map up = r.conv_transpose(a.up, f[1]);
    keep("backbone.up", [&] { return to_nchw(up); });
    for (std::size_t k = 0; k < up.v.size(); ++k) f[0].v[k] += up.v[k];
  }
  const auto stage = [&](int k) -> const Buf& { return outs[options.fusion == AdapterFusion::PerInteraction ? k : 0]; };
  add_resized(stage(0).data(), B, Hx, Wx, C, f[0].data(), f[0].H, f[0].W, 0.25, 0.25);  // scale_factor 4
  add_resized(stage(1).data(), B, Hx, Wx, C, f[1].data(), f[1].H, f[1].W, 0.5, 0.5);    // scale_factor 2
  for (std::size_t k = 0; k < f[2].v.size(); ++k) f[2].v[k] += stage(2)[k];
  add_resized(stage(3).data(), B, Hx, Wx, C, f[3].data(), f[3].H, f[3].W, 2.0, 2.0);  // scale_factor 0.5
  for (int k = 0; k < 4; ++k) {
    keep("backbone.norm" + std::to_string(k + 1) + ".in", [&] { return to_nchw(f[k]); });
    const BatchNormW& bn = a.norm[k];
    (r.reference() ? ops::batch_norm_ref : ops::batch_norm)(f[k].data(), f[k].data(), B * f[k].H * f[k].W, C, bn.weight,
                                                             bn.bias, bn.mean, bn.var, false);
  }
  return f;
}

}  // namespace vrwkv::adapter
