// vrwkv: reads PyTorch .pth checkpoints (torch.save, PyTorch >= 1.6 zip format) without Python.
//
// The archive is opened with libzip; <prefix>/data.pkl goes through the restricted unpickler
// (io/pickle.hpp), which refuses any global outside a state dict's vocabulary, so loading never
// executes anything. The state dict is found by layout (VRWKV.md section 5): mmcls/mmdet/mmseg
// {'meta', 'state_dict'}, InternImage {'model' | 'module' | 'model_ema', ...}, or a bare dict of
// tensors. Each tensor is rebuilt from its storage entry <prefix>/data/<key> honouring storage
// offset, size and stride, in the dtype it was stored in. Every size, count and offset read from
// the file is checked before it is used; all problems are Error(Input) messages that start with
// the file name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "vrwkv/tensor.hpp"

namespace vrwkv {

struct PthStateDict {
  TensorMap tensors;                 // name -> tensor, in the dtype stored (F32, F16, BF16, F64, I64, ...)
  std::string layout;                // "mmcls (meta, state_dict)", "InternImage (model)", "bare state dict"
  std::vector<std::string> ignored;  // top-level keys not used; non-tensor state-dict entries as "<key>.<name>"
};

// Tensors that view a whole storage contiguously share its buffer (as torch.load's do); other
// views are copied out. `path` is used as given in error messages.
PthStateDict read_pth(const std::string& path);
// The same for a checkpoint already in memory; `name` stands for the file in error messages.
PthStateDict read_pth_memory(const std::uint8_t* data, std::size_t size, const std::string& name);

}  // namespace vrwkv
