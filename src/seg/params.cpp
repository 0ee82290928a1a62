#include "seg/params.hpp"

namespace vrwkv::seg {

std::vector<TensorSlot> tensor_slots(const SegmentorConfig& c, SegWeights& w) {
  std::vector<TensorSlot> slots;
  adapter::SlotTable t{slots};
  adapter::adapter_slots(t, c.backbone, c.adapter, w.adapter);
  const std::int64_t C = c.backbone.arch.embed_dims;

  // UPerHead.
  const SegHeadConfig& h = c.head;
  const std::int64_t ch = h.channels, K = h.num_classes;
  UperW& u = w.decode;
  t.conv("decode_head.conv_seg", {K, ch, 1}, u.conv_seg, Init::Normal001);
  for (std::size_t k = 0; k < h.pool_scales.size(); ++k)
    t.conv_module("decode_head.psp_modules." + std::to_string(k) + ".1", {ch, C, 1}, u.psp[k]);
  t.conv_module("decode_head.bottleneck", {ch, C + static_cast<std::int64_t>(h.pool_scales.size()) * ch, 3, 1, 1},
                u.bottleneck);
  for (int k = 0; k < 3; ++k) t.conv_module("decode_head.lateral_convs." + std::to_string(k), {ch, C, 1}, u.lateral[k]);
  for (int k = 0; k < 3; ++k) t.conv_module("decode_head.fpn_convs." + std::to_string(k), {ch, ch, 3, 1, 1}, u.fpn[k]);
  t.conv_module("decode_head.fpn_bottleneck", {ch, 4 * ch, 3, 1, 1}, u.fpn_bottleneck);
  // FCNHead (in_index 2).
  if (h.auxiliary) {
    t.conv("auxiliary_head.conv_seg", {K, h.aux_channels, 1}, w.aux.conv_seg, Init::Normal001);
    t.conv_module("auxiliary_head.convs.0", {h.aux_channels, C, 3, 1, 1}, w.aux.conv);
  }
  return slots;
}

}  // namespace vrwkv::seg
