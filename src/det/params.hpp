// The detector's name table (DETECTION.md 1-5): the adapter's rows
// (adapter/slots.cpp) and every tensor of the FPN, the RPN head, the box
// head and the mask head, bound to the typed weights below (see
// adapter/weights.hpp for how the table is used).
#pragma once

#include <vector>

#include "adapter/weights.hpp"
#include "vrwkv/detector.hpp"

namespace vrwkv::det {

using adapter::ConvW;
using adapter::Init;
using adapter::LinearW;
using adapter::TensorSlot;

struct FpnW {
  ConvW lateral[4], fpn[4];
};
struct RpnW {
  ConvW conv, cls, reg;  // conv: 3×3 + ReLU, shared by the five levels
};
struct BoxHeadW {
  LinearW shared[2], cls, reg;
};
struct MaskHeadW {
  ConvW convs[4], upsample, logits;  // upsample: ConvTranspose2d 2×2 stride 2, then ReLU
};
struct DetWeights {
  adapter::AdapterW adapter;  // only with a backbone
  FpnW fpn;
  RpnW rpn;
  BoxHeadW box;
  MaskHeadW mask;
};

// The RPN's anchors: scale 8, ratios 0.5, 1, 2 at strides 4..64.
constexpr double kAnchorScale = 8;
inline const std::vector<double> kAnchorRatios{0.5, 1.0, 2.0};
constexpr double kAnchorStrides[5] = {4, 8, 16, 32, 64};
constexpr std::int64_t kRoiSize = 7, kMaskRoiSize = 14;

std::vector<TensorSlot> tensor_slots(const DetectorConfig& config, DetWeights& w);

}  // namespace vrwkv::det
