// Reading a checkpoint file's tensors, for every kind of model: the format
// told by the first bytes (a .pth zip or legacy pickle, or safetensors), the
// tensors as stored, DataParallel's "module." prefix removed.
#pragma once

#include <string>

#include "vrwkv/model.hpp"
#include "vrwkv/safetensors.hpp"

namespace vrwkv::model {

// Fills `report` (format, layout, entries the reader left out) and, for
// safetensors, `meta`. A file that is neither format: Error(Input).
TensorMap read_checkpoint(const std::string& path, LoadReport& report, Metadata* meta = nullptr);

}  // namespace vrwkv::model
