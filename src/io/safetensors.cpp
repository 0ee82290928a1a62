#include "vrwkv/safetensors.hpp"

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "io/file.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv {

namespace {
// A header larger than this is certainly not a weights file of ours.
constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;

std::uint64_t read_u64_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

Tensor parse_entry(const std::string& key, const nlohmann::json& entry, const std::uint8_t* body,
                   std::uint64_t body_size, const std::string& name) {
  const auto where = [&] { return cat(name, ": tensor '", key, "'"); };
  if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
      !entry.contains("data_offsets"))
    input_error(where(), ": expected an object with dtype, shape and data_offsets");
  const auto& jdtype = entry["dtype"];
  const auto& jshape = entry["shape"];
  const auto& joffsets = entry["data_offsets"];
  DType dtype;
  if (!jdtype.is_string() || !dtype_from_name(jdtype.get<std::string>(), &dtype))
    input_error(where(), ": unsupported dtype ", jdtype.dump());
  if (!jshape.is_array()) input_error(where(), ": shape is not a list");
  Shape shape;
  for (const auto& d : jshape) {
    if (!d.is_number_unsigned()) input_error(where(), ": shape ", jshape.dump(), " is not a list of sizes");
    shape.push_back(static_cast<std::int64_t>(std::min<std::uint64_t>(d.get<std::uint64_t>(), INT64_MAX)));
  }
  if (!joffsets.is_array() || joffsets.size() != 2 || !joffsets[0].is_number_unsigned() ||
      !joffsets[1].is_number_unsigned())
    input_error(where(), ": data_offsets must be two byte offsets");
  const std::uint64_t begin = joffsets[0].get<std::uint64_t>(), end = joffsets[1].get<std::uint64_t>();
  const std::int64_t numel = shape_numel(shape);
  if (numel < 0 || static_cast<std::uint64_t>(numel) > body_size)
    input_error(where(), ": shape ", shape_str(shape), " does not fit in the file");
  const std::uint64_t need = static_cast<std::uint64_t>(numel) * dtype_size(dtype);
  if (begin > end || end > body_size)
    input_error(where(), ": data [", begin, ",", end, ") lies outside the file's ", body_size, " data bytes");
  if (end - begin != need)
    input_error(where(), ": ", dtype_name(dtype), " ", shape_str(shape), " needs ", need, " bytes, the file gives ",
                end - begin);
  Tensor t(dtype, shape);
  if (need) std::memcpy(t.raw(), body + begin, need);
  return t;
}
}  // namespace

TensorMap read_safetensors_memory(const std::uint8_t* data, std::size_t size, const std::string& name,
                                  Metadata* metadata) {
  if (size < 8) input_error(name, ": not a safetensors file (too short for the 8-byte header length)");
  const std::uint64_t header_size = read_u64_le(data);
  if (header_size > size - 8 || header_size > kMaxHeaderBytes)
    input_error(name, ": not a safetensors file (header length ", header_size, " exceeds the file size ", size, ")");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(data + 8, data + 8 + header_size);
  } catch (const nlohmann::json::exception& e) {
    input_error(name, ": not a safetensors file (header is not valid JSON)");
  }
  if (!header.is_object()) input_error(name, ": safetensors header is not a JSON object");
  const std::uint8_t* body = data + 8 + header_size;
  const std::uint64_t body_size = size - 8 - header_size;
  TensorMap tensors;
  for (const auto& [key, entry] : header.items()) {
    if (key == "__metadata__") {
      if (!entry.is_object()) input_error(name, ": __metadata__ is not an object");
      for (const auto& [mk, mv] : entry.items()) {
        if (!mv.is_string()) input_error(name, ": metadata value '", mk, "' is not a string");
        if (metadata) (*metadata)[mk] = mv.get<std::string>();
      }
      continue;
    }
    tensors.emplace(key, parse_entry(key, entry, body, body_size, name));
  }
  return tensors;
}

TensorMap read_safetensors(const std::string& path, Metadata* metadata) {
  const std::vector<std::uint8_t> bytes = read_file(path);
  return read_safetensors_memory(bytes.data(), bytes.size(), path, metadata);
}

void write_safetensors(const std::string& path, const TensorMap& tensors, const Metadata& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& [key, t] : tensors) {
    header[key] = {{"dtype", dtype_name(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the tensor data 8-byte aligned
  std::uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(text.size()) >> (8 * i));
  AtomicFile out(path);
  out.write(len, 8);
  out.write(text.data(), text.size());
  for (const auto& [key, t] : tensors) out.write(t.raw(), t.nbytes());
  out.commit();
}

}  // namespace vrwkv
