// The adapter's rows of the name table, the table helpers, binding a state
// dict to the slots, and the official initialisation of a slot.
#include <cmath>
#include <cstring>
#include <random>

#include "adapter/weights.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::adapter {

void SlotTable::add(const std::string& name, Shape shape, float** slot, Init init) {
  out.push_back({name, std::move(shape), slot, init});
}
void SlotTable::bn(const std::string& p, std::int64_t C, BatchNormW& b) {
  add(p + ".weight", {C}, &b.weight, Init::One);
  add(p + ".bias", {C}, &b.bias, Init::Zero);
  add(p + ".running_mean", {C}, &b.mean, Init::Zero);
  add(p + ".running_var", {C}, &b.var, Init::One);
}
void SlotTable::conv_bn(const std::string& conv, const std::string& norm, ops::ConvShape s, ConvW& c, Init init) {
  c.shape = s;
  c.relu = true;
  add(conv + ".weight", {s.Co, s.Ci / s.groups, s.k, s.k}, &c.weight, init);
  bn(norm, s.Co, c.bn);
}
void SlotTable::conv_module(const std::string& p, ops::ConvShape s, ConvW& c) {
  conv_bn(p + ".conv", p + ".bn", s, c, Init::KaimingConv);
}
void SlotTable::conv(const std::string& p, ops::ConvShape s, ConvW& c, Init init, Init bias_init) {
  c.shape = s;
  add(p + ".weight", {s.Co, s.Ci / s.groups, s.k, s.k}, &c.weight, init);
  add(p + ".bias", {s.Co}, &c.bias, bias_init);
}
void SlotTable::linear(const std::string& p, std::int64_t out_dims, std::int64_t in, LinearW& l, Init init,
                       Init bias_init) {
  l.out = out_dims;
  l.in = in;
  add(p + ".weight", {out_dims, in}, &l.weight, init);
  add(p + ".bias", {out_dims}, &l.bias, bias_init);
}
void SlotTable::norm(const std::string& p, std::int64_t C, NormW& n) {
  add(p + ".weight", {C}, &n.weight, Init::One);
  add(p + ".bias", {C}, &n.bias, Init::Zero);
}

namespace {

void deform_attn(SlotTable& t, const std::string& p, std::int64_t C, const AdapterConfig& ad, std::int64_t levels,
                 DeformAttnW& a) {
  const std::int64_t M = ad.deform_heads, P = ad.deform_points;
  a.levels = levels;
  // The offsets start at the official direction grid, the weights at a uniform attention.
  t.linear(p + ".sampling_offsets", M * levels * P * 2, C, a.sampling_offsets, Init::Zero, Init::OffsetBias);
  t.linear(p + ".attention_weights", M * levels * P, C, a.attention_weights, Init::Zero);
  t.linear(p + ".value_proj", ad.value_dims, C, a.value_proj, Init::XavierUniform);
  t.linear(p + ".output_proj", C, ad.value_dims, a.output_proj, Init::XavierUniform);
}

void extractor(SlotTable& t, const std::string& p, std::int64_t C, const AdapterConfig& ad, ExtractorW& e) {
  const std::int64_t hid = ad.cffn_hidden;
  t.norm(p + ".query_norm", C, e.query_norm);
  t.norm(p + ".feat_norm", C, e.feat_norm);
  deform_attn(t, p + ".attn", C, ad, 1, e.attn);
  t.linear(p + ".ffn.fc1", hid, C, e.fc1);
  t.conv(p + ".ffn.dwconv.dwconv", {hid, hid, 3, 1, 1, hid}, e.dwconv, Init::ConvFanOut);
  t.linear(p + ".ffn.fc2", C, hid, e.fc2);
  t.norm(p + ".ffn_norm", C, e.ffn_norm);
}

}  // namespace

void adapter_slots(SlotTable& t, const Config& backbone, const AdapterConfig& ad, AdapterW& a) {
  const std::int64_t C = backbone.arch.embed_dims, i = ad.conv_inplane;
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
  a.interactions.assign(ad.interactions.size(), {});
  for (std::size_t k = 0; k < a.interactions.size(); ++k) {
    InteractionW& it = a.interactions[k];
    const std::string p = bb + "interactions." + std::to_string(k) + ".";
    t.add(p + "injector.gamma", {C}, &it.gamma, Init::Zero);
    t.norm(p + "injector.query_norm", C, it.query_norm);
    t.norm(p + "injector.feat_norm", C, it.feat_norm);
    deform_attn(t, p + "injector.attn", C, ad, 3, it.attn);
    extractor(t, p + "extractor", C, ad, it.extractor);
    if (k + 1 == a.interactions.size()) {
      it.extra.assign(2, {});
      for (int e = 0; e < 2; ++e) extractor(t, p + "extra_extractors." + std::to_string(e), C, ad, it.extra[e]);
    }
  }
  a.up.shape = {C, C, 2, 2};
  t.add(bb + "up.weight", {C, C, 2, 2}, &a.up.weight, Init::DeconvUniform);
  t.add(bb + "up.bias", {C}, &a.up.bias, Init::DeconvUniform);
  for (int k = 0; k < 4; ++k) t.bn(bb + "norm" + std::to_string(k + 1), C, a.norm[k]);
}

void bind_slots(const std::vector<TensorSlot>& slots, const TensorMap& sd, const std::string& source,
                const std::string& what, Tensor& storage, TensorMap& params) {
  // Every tensor present with its shape, before anything is allocated.
  std::int64_t total = 0;
  for (const TensorSlot& s : slots) {
    const auto it = sd.find(s.name);
    if (it == sd.end()) input_error(source, ": missing tensor '", s.name, "' required by the ", what);
    if (it->second.shape() != s.shape)
      input_error(source, ": tensor '", s.name, "' has shape ", shape_str(it->second.shape()), ", expected ",
                  shape_str(s.shape));
    if (it->second.dtype() == DType::I64 || it->second.dtype() == DType::Bool)
      input_error(source, ": tensor '", s.name, "' is ", dtype_name(it->second.dtype()), ", expected floats");
    total += shape_numel(s.shape);
  }
  storage = Tensor(DType::F32, {total});
  std::int64_t at = 0;
  for (const TensorSlot& s : slots) {
    const Tensor src = sd.at(s.name).to_f32();
    Tensor dst = storage.view(at, s.shape);
    std::memcpy(dst.f32(), src.f32(), dst.nbytes());
    for (std::int64_t i = 0; i < dst.numel(); ++i)
      if (!std::isfinite(dst.f32()[i]))
        input_error(source, ": tensor '", s.name, "' holds a non-finite value (", dst.f32()[i], " at element ", i, ")");
    *s.slot = dst.f32();
    params.emplace(s.name, dst);
    at += dst.numel();
  }
}

std::int64_t parameter_count(const TensorMap& params) {
  std::int64_t n = 0;
  for (const auto& [name, t] : params)
    if (!name.ends_with(".running_mean") && !name.ends_with(".running_var")) n += t.numel();
  return n;
}

void initialize(const std::vector<TensorSlot>& slots, const AdapterConfig& ad, std::uint64_t seed, TensorMap& p) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (const TensorSlot& s : slots) {
    Tensor t(DType::F32, s.shape);
    float* d = t.f32();
    const std::int64_t n = t.numel();
    const std::int64_t fan_out_conv = s.shape.size() == 4 ? s.shape[0] * s.shape[2] * s.shape[3] : 1;
    const auto fill_normal = [&](double std) {
      for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(std * normal(rng));
    };
    const auto fill_uniform = [&](double bound) {
      std::uniform_real_distribution<double> u(-bound, bound);
      for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(u(rng));
    };
    switch (s.init) {
      case Init::Zero: break;
      case Init::One: std::fill(d, d + n, 1.0f); break;
      case Init::Normal: fill_normal(1.0); break;
      case Init::TruncNormal:
        for (std::int64_t i = 0; i < n; ++i) {
          double v;
          do v = 0.02 * normal(rng); while (std::abs(v) > 2.0);
          d[i] = static_cast<float>(v);
        }
        break;
      case Init::ConvFanOut: {  // fan_out = k²·Co / groups; depthwise: k²
        const bool depthwise = s.shape.size() == 4 && s.shape[1] == 1 && s.shape[0] > 1;
        fill_normal(std::sqrt(2.0 / (depthwise ? s.shape[2] * s.shape[3] : fan_out_conv)));
        break;
      }
      case Init::KaimingConv: fill_normal(std::sqrt(2.0 / fan_out_conv)); break;
      case Init::Normal001: fill_normal(0.01); break;
      case Init::Normal0001: fill_normal(0.001); break;
      case Init::XavierUniform: fill_uniform(std::sqrt(6.0 / (s.shape[0] + s.shape[1]))); break;
      case Init::OffsetBias: {  // [M, L, P, 2]: head h points along θ = 2πh/M, point p at (p+1)×
        const std::int64_t M = ad.deform_heads, P = ad.deform_points, L = n / (M * P * 2);
        for (std::int64_t h = 0; h < M; ++h) {
          const double th = 2 * M_PI * h / M, cx = std::cos(th), cy = std::sin(th);
          const double m = std::max(std::abs(cx), std::abs(cy));
          for (std::int64_t l = 0; l < L; ++l)
            for (std::int64_t q = 0; q < P; ++q) {
              d[((h * L + l) * P + q) * 2] = static_cast<float>(cx / m * (q + 1));
              d[((h * L + l) * P + q) * 2 + 1] = static_cast<float>(cy / m * (q + 1));
            }
        }
        break;
      }
      case Init::DeconvUniform: fill_uniform(1.0 / std::sqrt(static_cast<double>(s.shape[0] * 4))); break;
    }
    p.emplace(s.name, t);
  }
}

}  // namespace vrwkv::adapter
