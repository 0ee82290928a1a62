// SafetensorsWriter: the header first, then each tensor's rows at their offset.
#include <algorithm>
#include <cstring>

#include <nlohmann/json.hpp>

#include "vrwkv/atomic_file.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/safetensors.hpp"

namespace vrwkv {

struct SafetensorsWriter::Impl {
  struct Place {
    Entry entry;
    std::uint64_t offset = 0, row_bytes = 0;
    std::int64_t rows_written = 0;
  };
  AtomicFile out;
  std::map<std::string, Place> places;
  std::uint64_t data_start = 0;
  std::vector<std::uint8_t> memory;  // the data section, for an output that cannot seek
  explicit Impl(const std::string& path) : out(path) {}
};

SafetensorsWriter::SafetensorsWriter(const std::string& path, const std::vector<Entry>& entries,
                                     const Metadata& metadata)
    : impl_(std::make_unique<Impl>(path)) {
  Impl& m = *impl_;
  for (const Entry& e : entries) {
    if (e.shape.empty() || shape_numel(e.shape) < 0) input_error(path, ": tensor '", e.name, "' needs a first dimension");
    if (!m.places.emplace(e.name, Impl::Place{e}).second) input_error(path, ": tensor '", e.name, "' given twice");
  }
  // The layout of write_safetensors: tensors in name order, data right after the padded header.
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (auto& [name, place] : m.places) {
    const std::uint64_t bytes = static_cast<std::uint64_t>(shape_numel(place.entry.shape)) * dtype_size(place.entry.dtype);
    place.offset = offset;
    place.row_bytes = bytes / static_cast<std::uint64_t>(std::max<std::int64_t>(place.entry.shape[0], 1));
    header[name] = {{"dtype", dtype_name(place.entry.dtype)},
                    {"shape", place.entry.shape},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the tensor data 8-byte aligned
  std::uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(text.size()) >> (8 * i));
  m.out.write(len, 8);
  m.out.write(text.data(), text.size());
  m.data_start = 8 + text.size();
  if (!m.out.seekable()) m.memory.resize(offset);
}

SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::write_rows(const std::string& name, std::int64_t row, const Tensor& rows) {
  Impl& m = *impl_;
  const auto it = m.places.find(name);
  if (it == m.places.end()) runtime_error("SafetensorsWriter: no tensor '", name, "' was declared");
  Impl::Place& p = it->second;
  Shape want = p.entry.shape;
  if (rows.ndim() >= 1) want[0] = rows.dim(0);
  if (rows.dtype() != p.entry.dtype || rows.shape() != want || row < 0 || row + rows.dim(0) > p.entry.shape[0])
    runtime_error("SafetensorsWriter: rows ", row, "+", shape_str(rows.shape()), " do not fit tensor '", name, "' ",
                  shape_str(p.entry.shape));
  const std::uint64_t at = p.offset + static_cast<std::uint64_t>(row) * p.row_bytes;
  if (m.out.seekable()) m.out.write_at(m.data_start + at, rows.raw(), rows.nbytes());
  else std::memcpy(m.memory.data() + at, rows.raw(), rows.nbytes());
  p.rows_written += rows.dim(0);
}

void SafetensorsWriter::commit() {
  Impl& m = *impl_;
  for (const auto& [name, p] : m.places)
    if (p.rows_written != p.entry.shape[0])
      runtime_error("SafetensorsWriter: tensor '", name, "' got ", p.rows_written, " of its ", p.entry.shape[0], " rows");
  if (!m.out.seekable()) m.out.write(m.memory.data(), m.memory.size());
  m.out.commit();
}

}  // namespace vrwkv
