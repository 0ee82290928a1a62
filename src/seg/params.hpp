// The segmentor's name table (DENSE.md (c), (e)): the adapter's rows
// (adapter/slots.cpp) and every tensor of UPerHead and FCNHead, bound to
// the typed weights below (see adapter/weights.hpp for how the table is used).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "adapter/weights.hpp"
#include "vrwkv/segmentor.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv::seg {

using adapter::BatchNormW;
using adapter::ConvW;
using adapter::Init;
using adapter::TensorSlot;

struct UperW {
  ConvW psp[4], bottleneck, lateral[3], fpn[3], fpn_bottleneck, conv_seg;
};
struct FcnW {
  ConvW conv, conv_seg;
};
struct SegWeights {
  adapter::AdapterW adapter;
  UperW decode;
  FcnW aux;
};

// Every tensor outside the VRWKV blocks and embeddings, in checkpoint order,
// each bound to its member of `w` (whose shapes, ConvShape and LinearW sizes,
// this fills in).
std::vector<TensorSlot> tensor_slots(const SegmentorConfig& config, SegWeights& w);

}  // namespace vrwkv::seg
