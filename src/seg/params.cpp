#include "seg/params.hpp"

namespace vrwkv::seg {

namespace {

struct Table {
  std::vector<TensorSlot>& out;
  void add(const std::string& name, Shape shape, float** slot, Init init) {
    out.push_back({name, std::move(shape), slot, init});
  }
  void bn(const std::string& p, std::int64_t C, BatchNormW& b) {
    add(p + ".weight", {C}, &b.weight, Init::One);
    add(p + ".bias", {C}, &b.bias, Init::Zero);
    add(p + ".running_mean", {C}, &b.mean, Init::Zero);
    add(p + ".running_var", {C}, &b.var, Init::One);
  }
  // A bias-free conv named `conv` followed by the BatchNorm `norm`, and a ReLU.
  void conv_bn(const std::string& conv, const std::string& norm, ops::ConvShape s, ConvW& c, Init init) {
    c.shape = s;
    c.relu = true;
    add(conv + ".weight", {s.Co, s.Ci / s.groups, s.k, s.k}, &c.weight, init);
    bn(norm, s.Co, c.bn);
  }
  // mmcv ConvModule: PREFIX.conv, PREFIX.bn.
  void conv_module(const std::string& p, ops::ConvShape s, ConvW& c) {
    conv_bn(p + ".conv", p + ".bn", s, c, Init::KaimingConv);
  }
  void conv(const std::string& p, ops::ConvShape s, ConvW& c, Init init, Init bias_init = Init::Zero) {
    c.shape = s;
    add(p + ".weight", {s.Co, s.Ci / s.groups, s.k, s.k}, &c.weight, init);
    add(p + ".bias", {s.Co}, &c.bias, bias_init);
  }
  void linear(const std::string& p, std::int64_t out, std::int64_t in, LinearW& l, Init init = Init::TruncNormal,
              Init bias_init = Init::Zero) {
    l.out = out;
    l.in = in;
    add(p + ".weight", {out, in}, &l.weight, init);
    add(p + ".bias", {out}, &l.bias, bias_init);
  }
  void norm(const std::string& p, std::int64_t C, NormW& n) {
    add(p + ".weight", {C}, &n.weight, Init::One);
    add(p + ".bias", {C}, &n.bias, Init::Zero);
  }
  void deform_attn(const std::string& p, const SegmentorConfig& c, std::int64_t levels, DeformAttnW& a) {
    const std::int64_t C = c.backbone.arch.embed_dims, M = c.adapter.deform_heads, P = c.adapter.deform_points;
    a.levels = levels;
    // The offsets start at the official direction grid, the weights at a uniform attention.
    linear(p + ".sampling_offsets", M * levels * P * 2, C, a.sampling_offsets, Init::Zero, Init::OffsetBias);
    linear(p + ".attention_weights", M * levels * P, C, a.attention_weights, Init::Zero);
    linear(p + ".value_proj", c.adapter.value_dims, C, a.value_proj, Init::XavierUniform);
    linear(p + ".output_proj", C, c.adapter.value_dims, a.output_proj, Init::XavierUniform);
  }
  void extractor(const std::string& p, const SegmentorConfig& c, ExtractorW& e) {
    const std::int64_t C = c.backbone.arch.embed_dims, hid = c.adapter.cffn_hidden;
    norm(p + ".query_norm", C, e.query_norm);
    norm(p + ".feat_norm", C, e.feat_norm);
    deform_attn(p + ".attn", c, 1, e.attn);
    linear(p + ".ffn.fc1", hid, C, e.fc1);
    conv(p + ".ffn.dwconv.dwconv", {hid, hid, 3, 1, 1, hid}, e.dwconv, Init::ConvFanOut);
    linear(p + ".ffn.fc2", C, hid, e.fc2);
    norm(p + ".ffn_norm", C, e.ffn_norm);
  }
};

}  // namespace

std::vector<TensorSlot> tensor_slots(const SegmentorConfig& c, SegWeights& w) {
  std::vector<TensorSlot> slots;
  Table t{slots};
  const std::int64_t C = c.backbone.arch.embed_dims, i = c.adapter.conv_inplane;
  AdapterW& a = w.adapter;
  const std::string bb = "backbone.";
  t.add(bb + "level_embed", {3, C}, &a.level_embed, Init::Normal);
  // Spatial prior module: stem (3 conv-BN-ReLU, max pool), conv2..4 (stride 2), fc1..4 (1×1 with bias).
  const std::string spm = bb + "spm.";
  t.conv_bn(spm + "stem.0", spm + "stem.1", {i, 3, 3, 2, 1}, a.stem[0], Init::ConvFanOut);
  t.conv_bn(spm + "stem.3", spm + "stem.4", {i, i, 3, 1, 1}, a.stem[1], Init::ConvFanOut);
  t.conv_bn(spm + "stem.6", spm + "stem.7", {i, i, 3, 1, 1}, a.stem[2], Init::ConvFanOut);
  t.conv_bn(spm + "conv2.0", spm + "conv2.1", {2 * i, i, 3, 2, 1}, a.conv2, Init::ConvFanOut);
  t.conv_bn(spm + "conv3.0", spm + "conv3.1", {4 * i, 2 * i, 3, 2, 1}, a.conv3, Init::ConvFanOut);
  t.conv_bn(spm + "conv4.0", spm + "conv4.1", {4 * i, 4 * i, 3, 2, 1}, a.conv4, Init::ConvFanOut);
  const std::int64_t fc_in[4] = {i, 2 * i, 4 * i, 4 * i};
  for (int k = 0; k < 4; ++k)
    t.conv(spm + "fc" + std::to_string(k + 1), {C, fc_in[k], 1}, a.fc[k], Init::ConvFanOut);
  // Interactions: injector (3 levels), extractor (1 level), the last one's extra extractors.
  a.interactions.assign(c.adapter.interactions.size(), {});
  for (std::size_t k = 0; k < a.interactions.size(); ++k) {
    InteractionW& it = a.interactions[k];
    const std::string p = bb + "interactions." + std::to_string(k) + ".";
    t.add(p + "injector.gamma", {C}, &it.gamma, Init::Zero);
    t.norm(p + "injector.query_norm", C, it.query_norm);
    t.norm(p + "injector.feat_norm", C, it.feat_norm);
    t.deform_attn(p + "injector.attn", c, 3, it.attn);
    t.extractor(p + "extractor", c, it.extractor);
    if (k + 1 == a.interactions.size()) {
      it.extra.assign(2, {});
      for (int e = 0; e < 2; ++e) t.extractor(p + "extra_extractors." + std::to_string(e), c, it.extra[e]);
    }
  }
  a.up.shape = {C, C, 2, 2};
  t.add(bb + "up.weight", {C, C, 2, 2}, &a.up.weight, Init::DeconvUniform);
  t.add(bb + "up.bias", {C}, &a.up.bias, Init::DeconvUniform);
  for (int k = 0; k < 4; ++k) t.bn(bb + "norm" + std::to_string(k + 1), C, a.norm[k]);

  // UPerHead.
  const SegHeadConfig& h = c.head;
  const std::int64_t ch = h.channels, K = h.num_classes;
  UperW& u = w.decode;
  t.conv("decode_head.conv_seg", {K, ch, 1}, u.conv_seg, Init::SegNormal);
  for (std::size_t k = 0; k < h.pool_scales.size(); ++k)
    t.conv_module("decode_head.psp_modules." + std::to_string(k) + ".1", {ch, C, 1}, u.psp[k]);
  t.conv_module("decode_head.bottleneck", {ch, C + static_cast<std::int64_t>(h.pool_scales.size()) * ch, 3, 1, 1},
                u.bottleneck);
  for (int k = 0; k < 3; ++k) t.conv_module("decode_head.lateral_convs." + std::to_string(k), {ch, C, 1}, u.lateral[k]);
  for (int k = 0; k < 3; ++k) t.conv_module("decode_head.fpn_convs." + std::to_string(k), {ch, ch, 3, 1, 1}, u.fpn[k]);
  t.conv_module("decode_head.fpn_bottleneck", {ch, 4 * ch, 3, 1, 1}, u.fpn_bottleneck);
  // FCNHead (in_index 2).
  if (h.auxiliary) {
    t.conv("auxiliary_head.conv_seg", {K, h.aux_channels, 1}, w.aux.conv_seg, Init::SegNormal);
    t.conv_module("auxiliary_head.convs.0", {h.aux_channels, C, 3, 1, 1}, w.aux.conv);
  }
  return slots;
}

}  // namespace vrwkv::seg
