// The segmentor's forward (DENSE.md (c)): the adapter backbone
// (adapter/forward.cpp, per-interaction fusion), then UPerHead and FCNHead on
// its four NHWC maps. The fast path runs oneDNN convolutions with the
// BatchNorms folded in; the reference path runs the plain ops with separate
// BatchNorms.
#include <algorithm>
#include <cmath>

#include "adapter/adapter.hpp"
#include "ops/maps.hpp"
#include "seg/state.hpp"
#include "threads.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::seg {

namespace {

using adapter::Map;
using adapter::to_nchw;

// A resize of x (an H×W map) added into y (Ho×Wo), scale as PyTorch's.
void add_resized(const float* x, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C, float* y,
                 std::int64_t Ho, std::int64_t Wo, double scale_h, double scale_w) {
  adapter::Floats tmp(B * Ho * Wo * C);  // written in full by the resize
  ops::resize_bilinear(x, B, H, W, C, tmp.data(), Ho, Wo, scale_h, scale_w);
  for (std::size_t i = 0; i < tmp.size(); ++i) y[i] += tmp[i];
}

}  // namespace

SegOutputs run(const Segmentor& seg, State& st, const Tensor& input, const SegmentOptions& options,
               const Context& ctx, TensorMap* trace) {
  const SegmentorConfig& cfg = seg.config();
  const std::int64_t C = cfg.backbone.arch.embed_dims;
  // bf16 runs the heads' convolutions but the classifiers (at 512², 93 % of the FLOPs) in bfloat16. The
  // backbone and the classifiers stay float32: in bfloat16 the adapter's convolutions and the blocks' linears
  // move the goldens' class map on 1-1.5 % of the pixels, against 0.2-0.4 % for the heads alone.
  const adapter::RunOptions ro{AdapterFusion::PerInteraction, options.reference, false};
  std::array<Map, 4> f = adapter::forward(seg.backbone(), cfg.adapter, st.w.adapter, st.convs, input, ro, ctx, trace);
  const ThreadScope threads(ctx);
  adapter::Runner r(st.convs, options.reference, options.bf16), classifier(st.convs, options.reference, false);
  const SegWeights& W = st.w;
  const std::int64_t B = f[0].B;
  SegOutputs out;
  for (int k = 0; k < 4; ++k) out.features.push_back(to_nchw(f[k]));

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
    logits = classifier.conv(u.conv_seg, r.conv(u.fpn_bottleneck, cat));
  }
  // Never a class claimed for an overflow.
  for (float v : logits.v)
    if (!std::isfinite(v)) runtime_error("the segmentation logits hold a non-finite value: the computation overflowed");
  out.decode_logits = to_nchw(logits);
  if (hc.auxiliary) out.aux_logits = to_nchw(classifier.conv(W.aux.conv_seg, r.conv(W.aux.conv, f[2])));
  return out;
}

}  // namespace vrwkv::seg
