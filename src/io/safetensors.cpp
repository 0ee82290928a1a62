#include "vrwkv/safetensors.hpp"

#include <cstdint>
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

// One header entry once its fields are read: checked against the file, then copied.
Tensor make_tensor(const std::string& key, DType dtype, const Shape& shape, std::uint64_t begin, std::uint64_t end,
                   const std::uint8_t* body, std::uint64_t body_size, const std::string& name) {
  const auto where = [&] { return cat(name, ": tensor '", key, "'"); };
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

// The header read as a stream of JSON events (nlohmann's SAX interface), never
// as a document: a document of a 100 MB header of small entries takes about
// 15 times its size in memory; this takes the entries and nothing else. The
// header must be {"__metadata__": {string: string}, NAME: {"dtype": D,
// "shape": [sizes], "data_offsets": [begin, end]}, ...}; other keys of an
// entry are skipped. A handler returns false to stop at the first problem,
// kept in `error`.
class HeaderReader {
 public:
  HeaderReader(const std::uint8_t* body, std::uint64_t body_size, const std::string& name, TensorMap& tensors,
               Metadata* metadata)
      : body_(body), body_size_(body_size), name_(name), tensors_(tensors), metadata_(metadata) {}

  std::string error;

  bool null() { return scalar("null"); }
  bool boolean(bool) { return scalar("a boolean"); }
  bool number_integer(std::int64_t) { return number(false, 0); }  // negative (nlohmann reads others as unsigned)
  bool number_unsigned(std::uint64_t v) { return number(true, v); }
  bool number_float(double, const std::string&) { return number(false, 0); }
  bool binary(nlohmann::json::binary_t&) { return scalar("binary data"); }
  bool string(std::string& v) {
    if (skip_) return true;
    switch (state_) {
      case State::Metadata:
        if (++metadata_entries_ > kMaxTensors)
          return fail(name_, ": more than ", kMaxTensors, " metadata entries (far more than any model has)");
        if (metadata_) (*metadata_)[key_] = std::move(v);
        return true;
      case State::Entry:
        if (field_ == "dtype") {
          if (!dtype_from_name(v, &dtype_)) return fail(entry(), ": unsupported dtype \"", v.substr(0, 32), "\"");
          has_dtype_ = true;
          return true;
        }
        return unexpected("a string");
      default: return unexpected("a string");
    }
  }
  bool start_object(std::size_t) {
    if (skip_) return ++skip_, true;
    switch (state_) {
      case State::Start: state_ = State::Top; return true;
      case State::Top:
        if (key_ == "__metadata__") {
          if (seen_metadata_) return fail(name_, ": __metadata__ appears twice");
          seen_metadata_ = true;
          state_ = State::Metadata;
        } else {
          if (tensors_.count(key_)) return fail(entry(), " appears twice");
          if (tensors_.size() >= kMaxTensors)
            return fail(name_, ": more than ", kMaxTensors, " tensors (far more than any model has)");
          state_ = State::Entry;
          tensor_ = key_, has_dtype_ = has_shape_ = has_offsets_ = false, shape_.clear(), offsets_.clear();
        }
        return true;
      case State::Entry:
        if (field_ == "dtype" || field_ == "shape" || field_ == "data_offsets") return unexpected("an object");
        return start_skip();
      default: return unexpected("an object");
    }
  }
  bool key(std::string& k) {
    if (skip_) return true;
    if (state_ == State::Entry) field_ = std::move(k);
    else key_ = std::move(k);
    return true;
  }
  bool end_object() {
    if (skip_) return --skip_, true;
    switch (state_) {
      case State::Top: state_ = State::Done; return true;
      case State::Metadata: state_ = State::Top; return true;
      case State::Entry:
        if (!has_dtype_ || !has_shape_ || !has_offsets_)
          return fail(entry(), ": expected an object with dtype, shape and data_offsets");
        try {
          tensors_.emplace(tensor_, make_tensor(tensor_, dtype_, shape_, offsets_[0], offsets_[1], body_, body_size_,
                                                name_));
        } catch (const Error& e) {
          return fail(e.what());
        }
        state_ = State::Top;
        return true;
      default: return unexpected("the end of an object");
    }
  }
  bool start_array(std::size_t) {
    if (skip_) return ++skip_, true;
    if (state_ == State::Entry && field_ == "shape") {
      state_ = State::Shape, has_shape_ = true, shape_.clear();
      return true;
    }
    if (state_ == State::Entry && field_ == "data_offsets") {
      state_ = State::Offsets, has_offsets_ = true, offsets_.clear();
      return true;
    }
    if (state_ == State::Entry && field_ != "dtype") return start_skip();
    return unexpected("a list");
  }
  bool end_array() {
    if (skip_) return --skip_, true;
    if (state_ == State::Shape) {
      state_ = State::Entry;
      return true;
    }
    if (state_ == State::Offsets) {
      if (offsets_.size() != 2) return fail(entry(), ": data_offsets must be two byte offsets");
      state_ = State::Entry;
      return true;
    }
    return unexpected("the end of a list");
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::json::exception&) {
    if (error.empty()) error = cat(name_, ": not a safetensors file (header is not valid JSON)");
    return false;
  }

 private:
  // A real checkpoint has at most a few thousand tensors.
  static constexpr std::size_t kMaxTensors = 1u << 17;
  static constexpr std::size_t kMaxRank = 64;
  enum class State { Start, Top, Metadata, Entry, Shape, Offsets, Done };

  template <class... Args>
  bool fail(Args&&... args) {
    error = cat(std::forward<Args>(args)...);
    return false;
  }
  std::string entry() const { return cat(name_, ": tensor '", tensor_, "'"); }
  bool start_skip() {  // the value of an entry's key we do not know: skipped, however deep
    skip_ = 1;
    return true;
  }
  bool number(bool is_unsigned, std::uint64_t v) {
    if (skip_) return true;
    if (state_ == State::Shape) {
      if (!is_unsigned) return fail(entry(), ": shape is not a list of sizes");
      if (shape_.size() == kMaxRank) return fail(entry(), ": shape has more than ", kMaxRank, " dimensions");
      shape_.push_back(static_cast<std::int64_t>(std::min<std::uint64_t>(v, INT64_MAX)));
      return true;
    }
    if (state_ == State::Offsets) {
      if (!is_unsigned || offsets_.size() == 2) return fail(entry(), ": data_offsets must be two byte offsets");
      offsets_.push_back(v);
      return true;
    }
    return unexpected("a number");
  }
  bool scalar(const char* what) {
    if (skip_) return true;
    return unexpected(what);
  }
  // A value where the layout has none of its kind.
  bool unexpected(const char* what) {
    switch (state_) {
      case State::Start: return fail(name_, ": safetensors header is not a JSON object");
      case State::Top:
        if (key_ == "__metadata__") return fail(name_, ": __metadata__ is not an object");
        tensor_ = key_;
        return fail(entry(), ": expected an object with dtype, shape and data_offsets");
      case State::Metadata: return fail(name_, ": metadata value '", key_, "' is not a string");
      case State::Entry:
        if (field_ == "dtype") return fail(entry(), ": unsupported dtype (", what, ")");
        if (field_ == "shape") return fail(entry(), ": shape is not a list of sizes");
        if (field_ == "data_offsets") return fail(entry(), ": data_offsets must be two byte offsets");
        return true;  // another key's scalar value: ignored
      case State::Shape: return fail(entry(), ": shape is not a list of sizes");
      case State::Offsets: return fail(entry(), ": data_offsets must be two byte offsets");
      case State::Done: return fail(name_, ": safetensors header has data after its end");
    }
    return false;
  }

  const std::uint8_t* body_;
  std::uint64_t body_size_;
  const std::string& name_;
  TensorMap& tensors_;
  Metadata* metadata_;
  State state_ = State::Start;
  std::size_t skip_ = 0, metadata_entries_ = 0;
  std::string key_, field_, tensor_;
  bool seen_metadata_ = false, has_dtype_ = false, has_shape_ = false, has_offsets_ = false;
  DType dtype_{};
  Shape shape_;
  std::vector<std::uint64_t> offsets_;
};
}  // namespace

TensorMap read_safetensors_memory(const std::uint8_t* data, std::size_t size, const std::string& name,
                                  Metadata* metadata) {
  if (size < 8) input_error(name, ": not a safetensors file (too short for the 8-byte header length)");
  const std::uint64_t header_size = read_u64_le(data);
  if (header_size > size - 8)
    input_error(name, ": not a safetensors file (header length ", header_size, " exceeds the file size ", size, ")");
  if (header_size > kMaxHeaderBytes)
    input_error(name, ": safetensors header of ", header_size, " bytes exceeds the limit of ", kMaxHeaderBytes,
                " bytes (100 MiB, as the safetensors library allows)");
  const std::uint8_t* body = data + 8 + header_size;
  const std::uint64_t body_size = size - 8 - header_size;
  TensorMap tensors;
  HeaderReader reader(body, body_size, name, tensors, metadata);
  const bool ok = nlohmann::json::sax_parse(data + 8, data + 8 + header_size, &reader);
  if (!reader.error.empty()) input_error(reader.error);
  if (!ok) input_error(name, ": not a safetensors file (header is not valid JSON)");
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
