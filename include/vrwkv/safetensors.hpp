// safetensors, the native file format of vrwkv (ENGINEERING.md "Files and
// interfaces"): an 8-byte little-endian header length, a JSON header mapping
// tensor names to {dtype, shape, data_offsets} plus an optional string map
// "__metadata__", then the raw little-endian tensor bytes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

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

// A safetensors file written in pieces: the tensors' names, dtypes and shapes
// are given up front, their data arrive as runs of rows (first dimension) in
// any order, so an output larger than memory never has to be held whole.
// Written like write_safetensors (the same bytes for the same tensors); an
// output that cannot seek (standard output, a FIFO) is assembled in memory.
class SafetensorsWriter {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
  };
  SafetensorsWriter(const std::string& path, const std::vector<Entry>& entries, const Metadata& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  // Rows [row, row + rows.dim(0)) of tensor `name`; `rows` has the tensor's
  // dtype and shape but for its first dimension.
  void write_rows(const std::string& name, std::int64_t row, const Tensor& rows);
  // Every row of every tensor must have been written.
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vrwkv
