// safetensors, the native file format of vrwkv (ENGINEERING.md "Files and
// interfaces"): an 8-byte little-endian header length, a JSON header mapping
// tensor names to {dtype, shape, data_offsets} plus an optional string map
// "__metadata__", then the raw little-endian tensor bytes.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "vrwkv/tensor.hpp"

namespace vrwkv {

using Metadata = std::map<std::string, std::string>;

// Every size and offset is validated against the file before use; a damaged
// file gives Error(Input) naming the file and the problem.
TensorMap read_safetensors(const std::string& path, Metadata* metadata = nullptr);
TensorMap read_safetensors_memory(const std::uint8_t* data, std::size_t size, const std::string& name,
                                  Metadata* metadata = nullptr);

// Writes atomically (temporary file + rename).
void write_safetensors(const std::string& path, const TensorMap& tensors, const Metadata& metadata = {});

}  // namespace vrwkv
