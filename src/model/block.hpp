// What a block kind provides (docs/ARCHITECTURE.md, "Adding a block kind"):
// its parameter rows, a fast inference implementation and one training
// implementation (a forward that keeps what its backward needs, and the
// backward). The reference forward is the training forward run with the
// plain _ref ops, so the golden tests cover the code training uses.
//
// Kinds live in blocks/, one file each; block_kind() maps
// Architecture::block to its entry.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "model/params.hpp"
#include "ops/biwkv.hpp"
#include "ops/gate.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/qshift.hpp"
#include "ops/wkv6.hpp"
#include "vrwkv/config.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv::model {

// Looks up a present parameter's float storage by its full name (binding only).
using Lookup = std::function<float*(const std::string&)>;

// Fast inference of a model's blocks of one kind, weights bound at creation.
class FastBlocks {
 public:
  virtual ~FastBlocks() = default;
  // Before run(): workspaces for groups of `images[g]` images on `grid`
  // (one per group that runs at once), the weights packed for `gemm`, the
  // Bi-WKV semantics of the runs that follow.
  virtual void prepare(const std::vector<std::int64_t>& images, ops::Grid grid, DType gemm, ops::Wkv wkv) = 0;
  // Blocks [begin, end) on the tokens x (F32 [n·T, C], n images of group
  // `group`), in place, by a team of `team` threads (1: the calling thread).
  // Work may be fused across block boundaries only inside [begin, end).
  virtual void run(float* x, std::int64_t n, std::int64_t begin, std::int64_t end, int team, int group) = 0;
  // The weights changed: drop what was derived from them (packed copies).
  virtual void parameters_updated() = 0;
};

// The ops a training forward runs on: the library's (fast) or the plain
// float64-accumulating references.
struct BlockOps {
  decltype(&ops::linear_ref) linear;
  decltype(&ops::layernorm_ref) layernorm;
  decltype(&ops::q_shift_mix_ref) q_shift_mix;
  decltype(&ops::biwkv_ref_all) biwkv;
  void (*sigmoid_gate)(const float* r, const float* y, float* out, std::int64_t n);  // out = σ(r) ⊙ y
  decltype(&ops::wkv6_ref) wkv6;  // VRWKV6
  decltype(&ops::group_norm_ref) group_norm;
  decltype(&ops::silu_gate_ref) silu_gate;  // out = y ⊙ SiLU(g)
  decltype(&ops::tanh_ref) tanh;            // in place
};
const BlockOps& fast_block_ops();
const BlockOps& reference_block_ops();

// DropPath scales of one block: [branch][sample] (VRWKV.md 1.4); 1 in eval mode.
using DropPath = std::array<const float*, 2>;

// Training of a model's blocks of one kind, weights bound at creation.
class TrainBlocks {
 public:
  virtual ~TrainBlocks() = default;
  // Tapes (kept activations) for `tapes` blocks of B images on `grid`.
  virtual void plan(std::int64_t B, ops::Grid grid, std::int64_t tapes) = 0;
  virtual std::int64_t tape_bytes() const = 0;
  // Block i: y = block(x) (x, y F32 [B·T, C]), keeping its activations in tape `tape`.
  virtual void forward(std::int64_t i, const float* x, float* y, std::int64_t tape, const DropPath& keep,
                       const BlockOps& ops, ops::Wkv wkv) = 0;
  // dx = dL/dx of block i from dy = dL/dy, with forward(i, x, …) kept in
  // tape `tape`; adds the parameter gradients into `grads`, a buffer laid out
  // like the model's parameters.
  virtual void backward(std::int64_t i, const float* x, const float* dy, float* dx, std::int64_t tape,
                        const DropPath& keep, ops::Wkv wkv, float* grads) = 0;
};

struct BlockKindEntry {
  const char* name;                      // "vrwkv": the configuration's spelling
  const char* signature;                 // a block row only this kind has (its checkpoints are told by it)
  std::vector<ParamInfo> (*rows)();      // one block's rows, in storage order
  double (*extra_flops)(const Architecture& arch, double tokens);  // per block, beyond the rows' costs
  // Bind the weights through `lookup`; `params` is the base of the model's
  // parameter storage (gradient buffers share its layout).
  std::unique_ptr<FastBlocks> (*make_fast)(const Architecture& arch, const Lookup& lookup);
  std::unique_ptr<TrainBlocks> (*make_train)(const Architecture& arch, const Lookup& lookup, const float* params);
};
const BlockKindEntry& block_kind(BlockKind kind);

}  // namespace vrwkv::model
