// The four official segmentors (DENSE.md (a), ADE20K, 150 classes) and their
// initialisation: the backbone's by the classification table (init_values of
// the config), the adapter's and the heads' by the rows of the name table (adapter/slots.cpp, seg/params.cpp).
#include "adapter/adapter.hpp"
#include "seg/params.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/presets.hpp"
#include "vrwkv/segmentor.hpp"

namespace vrwkv {

std::vector<std::string> segmentor_preset_names() {
  return {"upernet_vrwkv_t", "upernet_vrwkv_s", "upernet_vrwkv_b", "upernet_vrwkv_l"};
}

SegmentorConfig segmentor_preset_config(const std::string& name) {
  static const std::pair<const char*, const char*> rows[] = {
      {"upernet_vrwkv_t", "vrwkv_t"}, {"upernet_vrwkv_s", "vrwkv_s"}, {"upernet_vrwkv_b", "vrwkv_b"},
      {"upernet_vrwkv_l", "vrwkv_l"}};
  for (const auto& [preset, backbone] : rows) {
    if (name != preset) continue;
    SegmentorConfig c;
    adapter::preset_config(backbone, c.backbone, c.adapter);
    return c;
  }
  input_error("unknown segmentor preset '", name, "' (expected upernet_vrwkv_t, _s, _b or _l)");
}

TensorMap segmentor_initial_parameters(const SegmentorConfig& c, std::uint64_t seed) {
  const Architecture& a = c.backbone.arch;
  TensorMap p = initial_parameters(a, seed, a.embed_dims == 192 ? 1.0 : 1e-5);
  seg::SegWeights w;
  adapter::initialize(seg::tensor_slots(c, w), c.adapter, seed + 1, p);
  return p;
}
Segmentor Segmentor::preset(const std::string& name, std::uint64_t seed) {
  const SegmentorConfig c = segmentor_preset_config(name);
  return from_state_dict(segmentor_initial_parameters(c, seed), c, name);
}

}  // namespace vrwkv
