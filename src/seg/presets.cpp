// The four official segmentors (DENSE.md (a), ADE20K, 150 classes) and their
// initialisation: the backbone's by the classification table (init_values of
// the config), the adapter's and the heads' by the rows of seg/params.cpp.
#include <cmath>
#include <random>

#include "seg/params.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/presets.hpp"
#include "vrwkv/segmentor.hpp"

namespace vrwkv {

std::vector<std::string> segmentor_preset_names() {
  return {"upernet_vrwkv_t", "upernet_vrwkv_s", "upernet_vrwkv_b", "upernet_vrwkv_l"};
}

SegmentorConfig segmentor_preset_config(const std::string& name) {
  struct Row {
    const char *name, *backbone;
    std::int64_t heads;
    double ratio;
    bool post_norm;
  };
  static const Row rows[] = {{"upernet_vrwkv_t", "vrwkv_t", 6, 1.0, false},
                             {"upernet_vrwkv_s", "vrwkv_s", 6, 1.0, true},
                             {"upernet_vrwkv_b", "vrwkv_b", 12, 0.5, true},
                             {"upernet_vrwkv_l", "vrwkv_l", 16, 0.5, true}};
  for (const Row& r : rows) {
    if (name != r.name) continue;
    SegmentorConfig c;
    c.backbone = preset_config(r.backbone);
    Architecture& a = c.backbone.arch;
    a.layer_scale = true;  // init_values 1 (T) or 1e-5
    a.post_norm = r.post_norm;
    a.final_norm = false;
    a.head = HeadKind::None;
    c.backbone.run.wkv = WkvSemantics::Official;
    c.backbone.run.wkv_chunks = 32;
    c.backbone.run.out_indices = {a.depth - 1};
    c.adapter.deform_heads = r.heads;
    c.adapter.value_dims = static_cast<std::int64_t>(a.embed_dims * r.ratio);
    c.adapter.cffn_hidden = a.embed_dims / 4;
    for (std::int64_t i = 0; i < 4; ++i) c.adapter.interactions.push_back({i * a.depth / 4, (i + 1) * a.depth / 4 - 1});
    return c;
  }
  input_error("unknown segmentor preset '", name, "' (expected upernet_vrwkv_t, _s, _b or _l)");
}

TensorMap segmentor_initial_parameters(const SegmentorConfig& c, std::uint64_t seed) {
  const Architecture& a = c.backbone.arch;
  TensorMap p = initial_parameters(a, seed, a.embed_dims == 192 ? 1.0 : 1e-5);
  std::mt19937_64 rng(seed + 1);
  std::normal_distribution<double> normal(0.0, 1.0);
  seg::SegWeights w;
  for (const seg::TensorSlot& s : seg::tensor_slots(c, w)) {
    Tensor t(DType::F32, s.shape);
    float* d = t.f32();
    const std::int64_t n = t.numel();
    const std::int64_t fan_out_conv = s.shape.size() == 4 ? s.shape[0] * s.shape[2] * s.shape[3] : 1;
    const auto fill_normal = [&](double std) {
      for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(std * normal(rng));
    };
    switch (s.init) {
      case seg::Init::Zero: break;
      case seg::Init::One: std::fill(d, d + n, 1.0f); break;
      case seg::Init::Normal: fill_normal(1.0); break;
      case seg::Init::TruncNormal:
        for (std::int64_t i = 0; i < n; ++i) {
          double v;
          do v = 0.02 * normal(rng); while (std::abs(v) > 2.0);
          d[i] = static_cast<float>(v);
        }
        break;
      case seg::Init::ConvFanOut: {  // fan_out = k²·Co / groups; depthwise: k²
        const bool depthwise = s.shape.size() == 4 && s.shape[1] == 1 && s.shape[0] > 1;
        fill_normal(std::sqrt(2.0 / (depthwise ? s.shape[2] * s.shape[3] : fan_out_conv)));
        break;
      }
      case seg::Init::KaimingConv: fill_normal(std::sqrt(2.0 / fan_out_conv)); break;
      case seg::Init::SegNormal: fill_normal(0.01); break;
      case seg::Init::XavierUniform: {
        const double bound = std::sqrt(6.0 / (s.shape[0] + s.shape[1]));
        std::uniform_real_distribution<double> u(-bound, bound);
        for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(u(rng));
        break;
      }
      case seg::Init::OffsetBias: {  // [M, L, P, 2]: head h points along θ = 2πh/M, point p at (p+1)×
        const std::int64_t M = c.adapter.deform_heads, P = c.adapter.deform_points, L = n / (M * P * 2);
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
      case seg::Init::DeconvUniform: {
        const double bound = 1.0 / std::sqrt(static_cast<double>(a.embed_dims * 4));
        std::uniform_real_distribution<double> u(-bound, bound);
        for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(u(rng));
        break;
      }
    }
    p.emplace(s.name, t);
  }
  return p;
}

Segmentor Segmentor::preset(const std::string& name, std::uint64_t seed) {
  const SegmentorConfig c = segmentor_preset_config(name);
  return from_state_dict(segmentor_initial_parameters(c, seed), c, name);
}

}  // namespace vrwkv
