#include "vrwkv/presets.hpp"

#include <cmath>
#include <random>

#include "vrwkv/error.hpp"

namespace vrwkv {

std::vector<std::string> preset_names() { return {"vrwkv_t", "vrwkv_s", "vrwkv_b", "vrwkv_l"}; }

Config preset_config(const std::string& name) {
  Config c;
  c.out_indices = {11};
  if (name == "vrwkv_t") {
    c.embed_dims = 192, c.hidden_dims = 768;
  } else if (name == "vrwkv_s") {
    c.embed_dims = 384, c.hidden_dims = 1536, c.post_norm = c.layer_scale = true;
  } else if (name == "vrwkv_b") {
    c.embed_dims = 768, c.hidden_dims = 3072, c.post_norm = c.layer_scale = true;
  } else if (name == "vrwkv_l") {
    c.embed_dims = 1024, c.hidden_dims = 4096, c.depth = 24, c.out_indices = {23};
    c.post_norm = c.layer_scale = c.key_norm = true;
    c.pos_grid_h = c.pos_grid_w = 12;
    c.head = HeadKind::Mlp, c.head_hidden = 3072;
    c.preprocess = Preprocess::InternImage;
  } else {
    input_error("unknown model preset '", name, "' (expected vrwkv_t, vrwkv_s, vrwkv_b or vrwkv_l)");
  }
  return c;
}

TensorMap initial_parameters(const Config& c, std::uint64_t seed, double init_values) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  TensorMap p;
  const std::int64_t C = c.embed_dims, L = c.depth;
  for (const auto& entry : parameter_shapes(c)) {
    const std::string& name = entry.first;  // named, not a structured binding: lambdas below capture it
    const Shape& shape = entry.second;
    Tensor t(DType::F32, shape);
    float* d = t.f32();
    const std::int64_t n = t.numel();
    const auto ends = [&](const char* suffix) { return name.ends_with(suffix); };
    const std::size_t layer_at = name.find("layers.");
    const std::int64_t i = layer_at == std::string::npos ? 0 : std::stoll(name.substr(layer_at + 7));
    const double r01 = L > 1 ? static_cast<double>(i) / (L - 1) : 0.0, r10 = 1.0 - static_cast<double>(i) / L;
    const auto ramp = [&](double power, double shift) {
      for (std::int64_t ch = 0; ch < n; ++ch) d[ch] = static_cast<float>(std::pow(double(ch) / C, power) + shift);
    };
    if (ends(".weight") && shape.size() == 2) {  // every Linear
      for (std::int64_t j = 0; j < n; ++j) {
        float v;
        do v = normal(rng); while (std::abs(v) > 2.0f);  // mmcv's bounds [−2, 2]: at std 0.02, never hit
        d[j] = v;
      }
    } else if (name == "backbone.patch_embed.projection.weight" || name == "backbone.patch_embed.projection.bias") {
      const double bound = 1.0 / std::sqrt(double(c.in_channels * c.patch_size * c.patch_size));
      std::uniform_real_distribution<float> uni(static_cast<float>(-bound), static_cast<float>(bound));
      for (std::int64_t j = 0; j < n; ++j) d[j] = uni(rng);
    } else if (ends("spatial_decay")) {
      for (std::int64_t h = 0; h < n; ++h)
        d[h] = static_cast<float>(-5 + 8 * std::pow(double(h) / std::max<std::int64_t>(C - 1, 1), 0.7 + 1.3 * r01));
    } else if (ends("spatial_first")) {
      for (std::int64_t h = 0; h < n; ++h) d[h] = static_cast<float>(std::log(0.3) + 0.5 * (((h + 1) % 3) - 1));
    } else if (ends("att.spatial_mix_k") || ends("ffn.spatial_mix_k") || ends("ffn.spatial_mix_r")) {
      ramp(r10, 0);
    } else if (ends("att.spatial_mix_v")) {
      ramp(r10, 0.3 * r01);
    } else if (ends("att.spatial_mix_r")) {
      ramp(0.5 * r10, 0);
    } else if (ends("gamma1") || ends("gamma2")) {
      for (std::int64_t j = 0; j < n; ++j) d[j] = static_cast<float>(init_values);
    } else if (ends(".weight") && shape.size() == 1) {  // LayerNorm weights
      for (std::int64_t j = 0; j < n; ++j) d[j] = 1.0f;
    }  // biases and pos_embed stay 0
    p.emplace(name, t);
  }
  return p;
}

}  // namespace vrwkv
