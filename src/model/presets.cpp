// The official model sizes (VRWKV.md 4) and their initialisation, by the
// parameter table's Init rules (model/params.hpp).
#include "vrwkv/presets.hpp"

#include <cmath>
#include <random>

#include "model/params.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv {

std::vector<std::string> preset_names() {
  return {"vrwkv_t", "vrwkv_s", "vrwkv_b", "vrwkv_l", "vrwkv6_t", "vrwkv6_s", "vrwkv6_b"};
}

Config preset_config(const std::string& name) {
  Config config;
  Architecture& c = config.arch;
  config.run.out_indices = {11};
  if (name == "vrwkv_t") {
    c.embed_dims = 192, c.hidden_dims = 768;
  } else if (name == "vrwkv_s") {
    c.embed_dims = 384, c.hidden_dims = 1536, c.post_norm = c.layer_scale = true;
  } else if (name == "vrwkv_b") {
    c.embed_dims = 768, c.hidden_dims = 3072, c.post_norm = c.layer_scale = true;
  } else if (name == "vrwkv_l") {
    c.embed_dims = 1024, c.hidden_dims = 4096, c.depth = 24, config.run.out_indices = {23};
    c.post_norm = c.layer_scale = c.key_norm = true;
    c.pos_grid_h = c.pos_grid_w = 12;
    c.head = HeadKind::Mlp, c.head_hidden = 3072;
    config.preprocessing.kind = Preprocess::InternImage;
  } else if (name == "vrwkv6_t" || name == "vrwkv6_s" || name == "vrwkv6_b") {  // VRWKV6.md A.2
    c.block = BlockKind::Vrwkv6;
    c.embed_dims = name == "vrwkv6_t" ? 192 : name == "vrwkv6_s" ? 384 : 768;
    c.hidden_dims = 4 * c.embed_dims;
    c.post_norm = c.layer_scale = name != "vrwkv6_t";
  } else {
    input_error("unknown model preset '", name,
                "' (expected vrwkv_t, vrwkv_s, vrwkv_b, vrwkv_l, vrwkv6_t, vrwkv6_s or vrwkv6_b)");
  }
  return config;
}

TensorMap initial_parameters(const Architecture& c, std::uint64_t seed, double init_values) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  const double patch_bound = 1.0 / std::sqrt(double(c.in_channels * c.patch_size * c.patch_size));
  std::uniform_real_distribution<float> patch_uniform(static_cast<float>(-patch_bound), static_cast<float>(patch_bound));
  std::uniform_real_distribution<float> lora_uniform(-1e-4f, 1e-4f);
  TensorMap p;
  const std::int64_t C = c.embed_dims, L = c.depth;
  for (const model::Param& param : model::parameter_list(c)) {
    Tensor t(DType::F32, param.shape);
    float* d = t.f32();
    const std::int64_t n = t.numel(), i = std::max<std::int64_t>(param.layer, 0);
    const double r01 = L > 1 ? static_cast<double>(i) / (L - 1) : 0.0, r10 = 1.0 - static_cast<double>(i) / L;
    const auto ramp = [&](double power, double shift) {
      for (std::int64_t ch = 0; ch < n; ++ch) d[ch] = static_cast<float>(std::pow(double(ch) / C, power) + shift);
    };
    const auto negate_plus_one = [&] {  // VRWKV6's maa = 1 − the VRWKV ramp
      for (std::int64_t ch = 0; ch < n; ++ch) d[ch] = 1.0f - d[ch];
    };
    switch (param.info->init) {
      case model::Init::Zero: break;
      case model::Init::One: std::fill(d, d + n, 1.0f); break;
      case model::Init::TruncNormal:
        for (std::int64_t j = 0; j < n; ++j) {
          float v;
          do v = normal(rng); while (std::abs(v) > 2.0f);  // mmcv's bounds [−2, 2]: at std 0.02, never hit
          d[j] = v;
        }
        break;
      case model::Init::PatchUniform:
        for (std::int64_t j = 0; j < n; ++j) d[j] = patch_uniform(rng);
        break;
      case model::Init::LayerScale: std::fill(d, d + n, static_cast<float>(init_values)); break;
      case model::Init::SpatialDecay:
        for (std::int64_t h = 0; h < n; ++h)
          d[h] = static_cast<float>(-5 + 8 * std::pow(double(h) / std::max<std::int64_t>(C - 1, 1), 0.7 + 1.3 * r01));
        break;
      case model::Init::SpatialFirst:
        for (std::int64_t h = 0; h < n; ++h) d[h] = static_cast<float>(std::log(0.3) + 0.5 * (((h + 1) % 3) - 1));
        break;
      case model::Init::MixK: ramp(r10, 0); break;
      case model::Init::MixV: ramp(r10, 0.3 * r01); break;
      case model::Init::MixR: ramp(0.5 * r10, 0); break;
      case model::Init::MaaShift: ramp(r10, 0), negate_plus_one(); break;
      case model::Init::MaaValue: ramp(r10, 0.3 * r01), negate_plus_one(); break;
      case model::Init::MaaHalf: ramp(0.5 * r10, 0), negate_plus_one(); break;
      case model::Init::LoraUniform:
        for (std::int64_t j = 0; j < n; ++j) d[j] = lora_uniform(rng);
        break;
      case model::Init::Decay6:
        for (std::int64_t h = 0; h < n; ++h)
          d[h] = static_cast<float>(-6 + 5 * std::pow(double(h) / std::max<std::int64_t>(C - 1, 1), 0.7 + 1.3 * r01));
        break;
      case model::Init::Bonus6:
        for (std::int64_t h = 0; h < n; ++h)
          d[h] = static_cast<float>(r01 * (1 - double(h) / std::max<std::int64_t>(C - 1, 1)) +
                                    0.1 * (((h + 1) % 3) - 1));
        break;
    }
    p.emplace(param.name, t);
  }
  return p;
}

}  // namespace vrwkv
