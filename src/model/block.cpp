// The block kinds and the two op sets their training forward runs on.
#include "model/block.hpp"

#include "ops/gate.hpp"

namespace vrwkv::model {

const BlockKindEntry& vrwkv_block_kind();   // blocks/vrwkv.cpp
const BlockKindEntry& vrwkv6_block_kind();  // blocks/vrwkv6.cpp

const BlockKindEntry& block_kind(BlockKind kind) {
  switch (kind) {
    case BlockKind::Vrwkv: return vrwkv_block_kind();
    case BlockKind::Vrwkv6: return vrwkv6_block_kind();
  }
  return vrwkv_block_kind();
}

const BlockOps& fast_block_ops() {
  static const BlockOps ops = {ops::linear, ops::layernorm,  ops::q_shift_mix, ops::biwkv, ops::sigmoid_gate,
                               ops::wkv6,   ops::group_norm, ops::silu_gate,   ops::tanh};
  return ops;
}

const BlockOps& reference_block_ops() {
  static const BlockOps ops = {ops::linear_ref, ops::layernorm_ref,  ops::q_shift_mix_ref, ops::biwkv_ref_all,
                               ops::sigmoid_gate_ref, ops::wkv6_ref, ops::group_norm_ref, ops::silu_gate_ref,
                               ops::tanh_ref};
  return ops;
}

}  // namespace vrwkv::model
