#include "det/params.hpp"

namespace vrwkv::det {

std::vector<TensorSlot> tensor_slots(const DetectorConfig& c, DetWeights& w) {
  std::vector<TensorSlot> slots;
  adapter::SlotTable t{slots};
  if (c.has_backbone) adapter::adapter_slots(t, c.backbone, c.adapter, w.adapter);
  const DetHeadConfig& h = c.head;
  const std::int64_t F = h.fpn_channels, A = static_cast<std::int64_t>(kAnchorRatios.size()), K = h.num_classes;
  // FPN: ConvModules without norm or activation (mmcv ConvModule's own kaiming init wins over FPN's Xavier).
  for (int i = 0; i < 4; ++i)
    t.conv("neck.lateral_convs." + std::to_string(i) + ".conv", {F, h.in_channels, 1}, w.fpn.lateral[i],
           Init::KaimingConv);
  for (int i = 0; i < 4; ++i)
    t.conv("neck.fpn_convs." + std::to_string(i) + ".conv", {F, F, 3, 1, 1}, w.fpn.fpn[i], Init::KaimingConv);
  // RPN head: N(0, 0.01²).
  t.conv("rpn_head.rpn_conv", {h.rpn_channels, F, 3, 1, 1}, w.rpn.conv, Init::Normal001);
  w.rpn.conv.relu = true;
  t.conv("rpn_head.rpn_cls", {A, h.rpn_channels, 1}, w.rpn.cls, Init::Normal001);
  t.conv("rpn_head.rpn_reg", {4 * A, h.rpn_channels, 1}, w.rpn.reg, Init::Normal001);
  // Shared2FCBBoxHead: background is the last class of fc_cls.
  const std::string bh = "roi_head.bbox_head.";
  t.linear(bh + "fc_cls", K + 1, h.fc_channels, w.box.cls, Init::Normal001);
  t.linear(bh + "fc_reg", 4 * K, h.fc_channels, w.box.reg, Init::Normal0001);
  t.linear(bh + "shared_fcs.0", h.fc_channels, F * kRoiSize * kRoiSize, w.box.shared[0], Init::XavierUniform);
  t.linear(bh + "shared_fcs.1", h.fc_channels, h.fc_channels, w.box.shared[1], Init::XavierUniform);
  // FCNMaskHead.
  const std::string mh = "roi_head.mask_head.";
  for (int i = 0; i < 4; ++i) {
    ConvW& cv = w.mask.convs[i];
    t.conv(mh + "convs." + std::to_string(i) + ".conv", {h.mask_channels, i ? h.mask_channels : F, 3, 1, 1}, cv,
           Init::KaimingConv);
    cv.relu = true;
  }
  const std::int64_t M = h.mask_channels;
  w.mask.upsample.shape = {M, M, 2, 2};
  w.mask.upsample.relu = true;
  t.add(mh + "upsample.weight", {M, M, 2, 2}, &w.mask.upsample.weight, Init::KaimingConv);
  t.add(mh + "upsample.bias", {M}, &w.mask.upsample.bias, Init::Zero);
  t.conv(mh + "conv_logits", {K, M, 1}, w.mask.logits, Init::KaimingConv);
  return slots;
}

}  // namespace vrwkv::det
