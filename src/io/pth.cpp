// vrwkv: the .pth reader of pth.hpp: zip archive (libzip) -> data.pkl (restricted unpickler) ->
// state dict selection by layout -> tensors rebuilt from their storages.
//
// What a torch.save archive holds, as written by torch/serialization.py (_save) and read back by
// _load: <prefix>/data.pkl, in which every tensor is
//   _rebuild_tensor_v2(BINPERSID(('storage', torch.<T>Storage, key, location, numel)),
//                      storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
// possibly wrapped in _rebuild_parameter(tensor, ...), and <prefix>/data/<key> holding the
// storage's numel elements, little-endian. Offsets, sizes and strides count elements.
#include "io/pth.hpp"

#include <zip.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <optional>

#include "io/pickle.hpp"
#include "vrwkv/error.hpp"

static_assert(std::endian::native == std::endian::little, "the .pth reader copies little-endian storages as they are");

namespace vrwkv {

namespace {

using pickle::Document;
using pickle::Kind;
using pickle::Role;
using pickle::Value;
using pickle::ValueId;
using pickle::printable;

constexpr std::uint64_t kMaxPickleBytes = std::uint64_t{1} << 30;
// Deflate cannot expand data more than about 1032:1, so a larger declared size is a lie.
constexpr std::uint64_t kMaxDeflateRatio = 1032;
constexpr std::size_t kMaxDims = 64;
constexpr std::size_t kReadChunk = std::size_t{1} << 24;
constexpr std::uint64_t kCopySlack = std::uint64_t{64} << 20;
constexpr const char* kExpectation = "expected a zip archive with data.pkl";

template <class... Args>
[[noreturn]] void fail(const std::string& name, Args&&... args) {
  input_error(name, std::forward<Args>(args)...);
}

std::string in_quotes(std::string_view text) { return "'" + printable(text) + "'"; }

// ---- telling a checkpoint from other files ----

bool starts_with(const std::uint8_t* head, std::size_t n, std::string_view prefix) {
  return n >= prefix.size() && std::memcmp(head, prefix.data(), prefix.size()) == 0;
}

// Rejects, with a message saying what the file is, anything that is not a zip archive.
void check_signature(const std::uint8_t* head, std::size_t n, std::uint64_t total, const std::string& name) {
  if (total == 0) fail(name, ": the file is empty (", kExpectation, ")");
  if (starts_with(head, n, "PK\x03\x04") || starts_with(head, n, std::string_view("PK\x05\x06", 4))) return;
  // Before 1.6 torch.save wrote a bare pickle stream (starting with PROTO) or, long ago, a tar file.
  const bool legacy_pickle = n >= 1 && head[0] == 0x80;
  const bool legacy_tar = n >= 262 && std::memcmp(head + 257, "ustar", 5) == 0;
  if (legacy_pickle || legacy_tar)
    fail(name, ": legacy PyTorch format (before 1.6) is not supported; re-save with torch.save");
  fail(name, ": not a PyTorch checkpoint (", kExpectation, ")");
}

std::string zip_error_text(int code) {
  zip_error_t error;
  zip_error_init_with_code(&error, code);
  std::string text = zip_error_strerror(&error);
  zip_error_fini(&error);
  return text;
}

// ---- the archive ----

struct Entry {
  zip_uint64_t index = 0;
  std::string name;
  std::uint64_t size = 0;
  bool stored = true;  // not compressed: its size is bounded by the archive's
  std::uint64_t comp_size = 0;  // bytes in the archive
};

class Archive {
 public:
  Archive(zip_t* zip, std::string name, std::uint64_t bytes) : zip_(zip), name_(std::move(name)), bytes_(bytes) {}
  Archive(const Archive&) = delete;
  Archive& operator=(const Archive&) = delete;
  ~Archive() { zip_discard(zip_); }

  const std::string& name() const { return name_; }
  std::uint64_t bytes() const { return bytes_; }

  std::optional<Entry> find(const std::string& entry_name) const {
    const zip_int64_t index = zip_name_locate(zip_, entry_name.c_str(), 0);
    if (index < 0) return std::nullopt;
    return stat(static_cast<zip_uint64_t>(index), entry_name);
  }

  std::vector<std::string> entry_names() const {
    const zip_int64_t count = zip_get_num_entries(zip_, 0);
    std::vector<std::string> names;
    for (zip_int64_t i = 0; i < count; ++i) {
      const char* n = zip_get_name(zip_, static_cast<zip_uint64_t>(i), 0);
      names.emplace_back(n ? n : "");
    }
    return names;
  }

  // Exactly e.size bytes into out (which has room for them).
  void read_into(const Entry& e, std::byte* out) const {
    File f = open(e);
    const std::uint64_t got = read_some(f.get(), e, out, e.size);
    if (got != e.size) fail(name_, ": archive entry ", in_quotes(e.name), " is truncated (", got, " of ", e.size, " bytes)");
    expect_end(f.get(), e);
  }

  // Inflates the whole entry into a small scratch buffer and throws it away: proves that the entry
  // holds its declared size (and passes the CRC) before that much memory is taken for it.
  void check_size(const Entry& e) const {
    File f = open(e);
    std::vector<std::byte> scratch(static_cast<std::size_t>(std::min<std::uint64_t>(kReadChunk, e.size)));
    std::uint64_t done = 0;
    while (done < e.size) {
      const std::uint64_t want = std::min<std::uint64_t>(scratch.size(), e.size - done);
      const std::uint64_t got = read_some(f.get(), e, scratch.data(), want);
      done += got;
      if (got < want) fail(name_, ": archive entry ", in_quotes(e.name), " is truncated (", done, " of ", e.size, " bytes)");
    }
    expect_end(f.get(), e);
  }

  // The whole entry, growing the buffer as data arrives so that a size the archive lies about
  // costs no more memory than the data actually there.
  std::vector<std::uint8_t> read_all(const Entry& e) const {
    File f = open(e);
    std::vector<std::uint8_t> data;
    while (data.size() < e.size) {
      const std::size_t old = data.size();
      const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(kReadChunk, e.size - old));
      data.resize(old + want);
      const std::uint64_t got = read_some(f.get(), e, reinterpret_cast<std::byte*>(data.data() + old), want);
      data.resize(old + static_cast<std::size_t>(got));
      if (got < want) fail(name_, ": archive entry ", in_quotes(e.name), " is truncated (", data.size(), " of ", e.size, " bytes)");
    }
    expect_end(f.get(), e);
    return data;
  }

 private:
  using File = std::unique_ptr<zip_file_t, decltype(&zip_fclose)>;

  Entry stat(zip_uint64_t index, const std::string& entry_name) const {
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(zip_, index, 0, &st) != 0)
      fail(name_, ": cannot read archive entry ", in_quotes(entry_name), " (", zip_strerror(zip_), ")");
    constexpr zip_uint64_t kNeeded = ZIP_STAT_SIZE | ZIP_STAT_COMP_SIZE | ZIP_STAT_COMP_METHOD;
    if ((st.valid & kNeeded) != kNeeded) fail(name_, ": archive entry ", in_quotes(entry_name), " has no size");
    if ((st.valid & ZIP_STAT_ENCRYPTION_METHOD) && st.encryption_method != ZIP_EM_NONE)
      fail(name_, ": archive entry ", in_quotes(entry_name), " is encrypted");
    if (st.comp_size > bytes_)
      fail(name_, ": archive entry ", in_quotes(entry_name), " claims ", st.comp_size, " bytes but the file has ", bytes_);
    Entry e{index, entry_name, st.size, st.comp_method == ZIP_CM_STORE, st.comp_size};
    if (e.stored && st.size != st.comp_size)
      fail(name_, ": archive entry ", in_quotes(entry_name), " is inconsistent (stored, ", st.size, " bytes, ", st.comp_size,
           " in the archive)");
    if (!e.stored && st.comp_method != ZIP_CM_DEFLATE)
      fail(name_, ": archive entry ", in_quotes(entry_name), " uses compression method ", st.comp_method,
           "; only stored and deflated entries are supported");
    if (!e.stored && st.size / kMaxDeflateRatio > st.comp_size)
      fail(name_, ": archive entry ", in_quotes(entry_name), " claims an impossible size (", st.size, " bytes from ",
           st.comp_size, " compressed)");
    return e;
  }

  File open(const Entry& e) const {
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    // Reading a stored entry "compressed" returns its raw bytes without the CRC check, which
    // would otherwise reject nearly every mutation a fuzzer makes to data.pkl.
    const zip_flags_t flags = e.stored ? ZIP_FL_COMPRESSED : 0;
#else
    const zip_flags_t flags = 0;
#endif
    zip_file_t* f = zip_fopen_index(zip_, e.index, flags);
    if (!f) fail(name_, ": cannot open archive entry ", in_quotes(e.name), " (", zip_strerror(zip_), ")");
    return File(f, &zip_fclose);
  }

  std::uint64_t read_some(zip_file_t* f, const Entry& e, std::byte* out, std::uint64_t size) const {
    std::uint64_t done = 0;
    while (done < size) {
      const zip_int64_t n = zip_fread(f, out + done, std::min<std::uint64_t>(size - done, kReadChunk));
      if (n < 0) fail(name_, ": cannot read archive entry ", in_quotes(e.name), " (", zip_file_strerror(f), ")");
      if (n == 0) break;
      done += static_cast<std::uint64_t>(n);
    }
    return done;
  }

  // Reading past the end is what makes libzip compare the entry's CRC.
  void expect_end(zip_file_t* f, const Entry& e) const {
    std::byte extra;
    const zip_int64_t n = zip_fread(f, &extra, 1);
    if (n < 0) fail(name_, ": archive entry ", in_quotes(e.name), " is corrupt (", zip_file_strerror(f), ")");
    if (n > 0) fail(name_, ": archive entry ", in_quotes(e.name), " is longer than its declared ", e.size, " bytes");
  }

  zip_t* zip_;
  std::string name_;
  std::uint64_t bytes_;
};

[[noreturn]] void fail_open(const std::string& name, int code) {
  if (code == ZIP_ER_NOZIP || code == ZIP_ER_INCONS || code == ZIP_ER_READ || code == ZIP_ER_SEEK ||
      code == ZIP_ER_EOF)
    fail(name, ": not a PyTorch checkpoint: the zip archive is truncated or corrupt (", zip_error_text(code), ")");
  fail(name, ": cannot open as a zip archive (", zip_error_text(code), ")");
}

constexpr int kOpenFlags = ZIP_RDONLY | ZIP_CHECKCONS;

std::unique_ptr<Archive> open_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(path, ": is a directory, not a checkpoint file");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(path, ": cannot open (", std::strerror(errno), ")");
  std::uint8_t head[512];
  const std::size_t n = std::fread(head, 1, sizeof head, f);
  const bool read_failed = std::ferror(f) != 0;
  std::fclose(f);
  if (read_failed) fail(path, ": cannot read (", std::strerror(errno), ")");
  const std::uint64_t bytes = std::filesystem::file_size(path, ec);
  if (ec) fail(path, ": cannot read (", ec.message(), ")");
  check_signature(head, n, bytes, path);
  int code = 0;
  zip_t* zip = zip_open(path.c_str(), kOpenFlags, &code);
  if (!zip) fail_open(path, code);
  return std::make_unique<Archive>(zip, path, bytes);
}

std::unique_ptr<Archive> open_memory(const std::uint8_t* data, std::size_t size, const std::string& name) {
  check_signature(data, std::min<std::size_t>(size, 512), size, name);
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* source = zip_source_buffer_create(data, size, 0, &error);
  if (!source) {
    const int code = zip_error_code_zip(&error);
    zip_error_fini(&error);
    fail_open(name, code);
  }
  zip_t* zip = zip_open_from_source(source, kOpenFlags, &error);
  if (!zip) {
    const int code = zip_error_code_zip(&error);
    zip_source_free(source);
    zip_error_fini(&error);
    fail_open(name, code);
  }
  zip_error_fini(&error);
  return std::make_unique<Archive>(zip, name, size);
}

// The folder that holds data.pkl. torch names it after the file ("archive" in recent versions)
// and reads it from the first entry; we accept any single top folder with a data.pkl.
std::string find_prefix(const Archive& ar) {
  const std::vector<std::string> names = ar.entry_names();
  std::vector<std::string> prefixes;
  for (const std::string& n : names) {
    const std::size_t slash = n.find('/');
    if (slash != std::string::npos && slash > 0 && n.compare(slash, std::string::npos, "/data.pkl") == 0)
      prefixes.push_back(n.substr(0, slash));
  }
  if (prefixes.empty()) {
    if (names.empty()) fail(ar.name(), ": not a PyTorch checkpoint (the zip archive is empty; ", kExpectation, ")");
    fail(ar.name(), ": not a PyTorch checkpoint (", kExpectation, ")");
  }
  if (prefixes.size() == 1) return prefixes[0];
  const std::string first = names[0].substr(0, names[0].find('/'));
  if (std::find(prefixes.begin(), prefixes.end(), first) != prefixes.end()) return first;
  fail(ar.name(), ": the zip archive holds ", prefixes.size(), " data.pkl files; expected one");
}

void check_byteorder(const Archive& ar, const std::string& prefix) {
  const std::optional<Entry> e = ar.find(prefix + "/byteorder");
  if (!e) return;  // before torch 1.12 the file was not written and storages were little-endian
  if (e->size > 16) fail(ar.name(), ": the byteorder record is ", e->size, " bytes long (expected 'little')");
  const std::vector<std::uint8_t> bytes = ar.read_all(*e);
  const std::string order(bytes.begin(), bytes.end());
  if (order == "little") return;
  if (order == "big") fail(ar.name(), ": big-endian checkpoints are not supported (byteorder 'big'; expected 'little')");
  fail(ar.name(), ": unknown byteorder ", in_quotes(order), " (expected 'little')");
}

// ---- finding the state dict ----

// The recorded result of calling a global of this role (not the global itself).
bool is_call(const Document& doc, ValueId id, Role role) {
  const Value& v = doc.at(id);
  return v.kind == Kind::Object && v.role == role;
}

bool is_tensor(const Document& doc, ValueId id) {
  return is_call(doc, id, Role::RebuildTensorV2) || is_call(doc, id, Role::RebuildTensor) ||
         is_call(doc, id, Role::RebuildParameter);
}

// A dict key for messages and `ignored`: the string itself, or a description of what it is.
std::string key_text(const Document& doc, ValueId id) {
  const Value& v = doc.at(id);
  if (v.kind == Kind::String) return v.text;
  if (v.kind == Kind::Int) return std::to_string(v.integer);
  return std::string("<") + pickle::kind_name(v.kind) + ">";
}

struct Selection {
  ValueId dict = pickle::kNoValue;
  std::string key;  // the top-level key used, empty for a bare state dict
  std::string layout;
  std::vector<std::string> ignored;
};

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : ", ") + printable(p, 40);
  return out;
}

Selection select_with_key(const Document& doc, ValueId root, const std::string& key, std::string layout) {
  Selection s{doc.dict_get(root, key), key, std::move(layout), {}};
  const Value& r = doc.at(root);
  for (std::size_t i = 0; i < r.items.size(); i += 2)
    if (!doc.is_string(r.items[i], key)) s.ignored.push_back(key_text(doc, r.items[i]));
  return s;
}

Selection select_state_dict(const Document& doc, const std::string& name) {
  const ValueId root = doc.root();
  const Value& r = doc.at(root);
  if (r.kind != Kind::Dict)
    fail(name, ": the checkpoint holds a ", pickle::kind_name(r.kind), " (expected a dict: a state dict or {'state_dict': ...})");
  std::vector<std::string> keys;
  for (std::size_t i = 0; i < r.items.size(); i += 2) keys.push_back(key_text(doc, r.items[i]));

  const ValueId sd = doc.dict_get(root, "state_dict");
  if (sd != pickle::kNoValue) {
    const Kind k = doc.at(sd).kind;
    if (k != Kind::Dict) fail(name, ": 'state_dict' is a ", pickle::kind_name(k), " (expected a dict of tensors)");
    return select_with_key(doc, root, "state_dict", "mmcls (" + join(keys) + ")");
  }
  for (const char* key : {"model", "module", "model_ema"}) {
    const ValueId v = doc.dict_get(root, key);
    if (v != pickle::kNoValue && doc.at(v).kind == Kind::Dict)
      return select_with_key(doc, root, key, std::string("InternImage (") + key + ")");
  }
  for (std::size_t i = 1; i < r.items.size(); i += 2)
    if (is_tensor(doc, r.items[i])) return Selection{root, "", "bare state dict", {}};
  fail(name, ": no state dict found (top-level keys: ", keys.empty() ? "none" : join(keys),
       "; expected 'state_dict', 'model', 'module', 'model_ema' or a dict of tensors)");
}

// ---- tensors ----

struct TensorSpec {
  std::string storage_key;
  DType dtype = DType::F32;
  std::int64_t storage_numel = 0;
  std::int64_t offset = 0;
  Shape shape;
  std::vector<std::int64_t> stride;
};

class TensorReader {
 public:
  TensorReader(const Archive& ar, std::string prefix) : ar_(ar), prefix_(std::move(prefix)) {}

  Tensor read(const Document& doc, ValueId id, const std::string& tensor_name) {
    tensor_ = in_quotes(tensor_name);
    const TensorSpec spec = parse(doc, id);
    Storage& storage = find_storage(spec);
    check_view(spec);
    return materialise(spec, load(storage));
  }

 private:
  struct Storage {
    Entry entry;
    DType dtype = DType::F32;
    std::int64_t numel = 0;
    Tensor data;  // [numel], read on first use
    bool loaded = false;
  };

  template <class... Args>
  [[noreturn]] void fail_tensor(Args&&... args) const {
    fail(ar_.name(), ": tensor ", tensor_, " ", std::forward<Args>(args)...);
  }

  // ---- the pickled description ----
  const Value& tuple_arg(const Document& doc, ValueId args, std::size_t min, std::size_t max) const {
    const Value& a = doc.at(args);
    if (a.kind != Kind::Tuple || a.items.size() < min || a.items.size() > max)
      fail_tensor("has malformed rebuild arguments (expected a tuple of ", min, min == max ? "" : "+", " values)");
    return a;
  }

  std::int64_t int_arg(const Document& doc, ValueId id, const char* what) const {
    const Value& v = doc.at(id);
    if (v.kind != Kind::Int) fail_tensor("has a ", what, " that is a ", pickle::kind_name(v.kind), " (expected an int)");
    if (v.integer < 0) fail_tensor("has a negative ", what, " (", v.integer, ")");
    return v.integer;
  }

  std::vector<std::int64_t> ints_arg(const Document& doc, ValueId id, const char* what) const {
    const Value& v = doc.at(id);
    if (v.kind != Kind::Tuple) fail_tensor("has a ", what, " that is a ", pickle::kind_name(v.kind), " (expected a tuple)");
    if (v.items.size() > kMaxDims) fail_tensor("has ", v.items.size(), " dimensions (at most ", kMaxDims, " supported)");
    std::vector<std::int64_t> out;
    for (ValueId item : v.items) out.push_back(int_arg(doc, item, what));
    return out;
  }

  TensorSpec parse(const Document& doc, ValueId id) const {
    // nn.Parameter: _rebuild_parameter(tensor, requires_grad, backward_hooks)
    for (int unwrap = 0; is_call(doc, id, Role::RebuildParameter); ++unwrap) {
      if (unwrap == 4) fail_tensor("is wrapped in too many parameters");
      id = tuple_arg(doc, doc.at(id).args, 1, 8).items[0];
    }
    if (!is_call(doc, id, Role::RebuildTensorV2) && !is_call(doc, id, Role::RebuildTensor))
      fail_tensor("is a parameter that wraps no tensor");
    const Value& call = doc.at(id);
    // v2: (storage, offset, size, stride, requires_grad, backward_hooks[, metadata]); v1: the first four
    const Value& args = call.role == Role::RebuildTensorV2 ? tuple_arg(doc, call.args, 6, 7) : tuple_arg(doc, call.args, 4, 4);
    TensorSpec spec;
    parse_storage(doc, args.items[0], spec);
    spec.offset = int_arg(doc, args.items[1], "storage offset");
    spec.shape = ints_arg(doc, args.items[2], "size");
    spec.stride = ints_arg(doc, args.items[3], "stride");
    if (spec.shape.size() != spec.stride.size())
      fail_tensor("has ", spec.shape.size(), " sizes but ", spec.stride.size(), " strides");
    return spec;
  }

  // ('storage', torch.<T>Storage, key, location, numel) behind a persistent id
  void parse_storage(const Document& doc, ValueId id, TensorSpec& spec) const {
    const Value& pid = doc.at(id);
    if (pid.kind != Kind::PersistentId) fail_tensor("has no storage reference (found a ", pickle::kind_name(pid.kind), ")");
    const Value& t = doc.at(pid.items[0]);
    if (t.kind != Kind::Tuple || t.items.size() != 5 || !doc.is_string(t.items[0], "storage"))
      fail_tensor("has a malformed storage reference (expected ('storage', type, key, location, numel))");
    const Value& type = doc.at(t.items[1]);
    if (type.kind != Kind::Global || type.role != Role::Storage)
      fail_tensor("has a storage reference whose type is not a torch storage class");
    const Value& key = doc.at(t.items[2]);
    if (key.kind != Kind::String || key.text.empty()) fail_tensor("has a storage reference without a key");
    spec.dtype = type.dtype;
    spec.storage_key = key.text;
    spec.storage_numel = int_arg(doc, t.items[4], "storage size");
  }

  // ---- storages ----
  // Storages are cached by archive entry, not by key, so that keys which name the same entry
  // (as libzip compares names) cannot make it load twice.
  Storage& find_storage(const TensorSpec& spec) {
    const std::string record = "data/" + spec.storage_key;
    if (spec.storage_key.find('\0') != std::string::npos) fail_tensor("has a storage key with a NUL byte");
    const std::optional<Entry> entry = ar_.find(prefix_ + "/" + record);
    if (!entry) fail_tensor("needs storage ", in_quotes(record), ", which is missing from the archive");
    auto it = storages_.find(entry->index);
    if (it != storages_.end()) {
      Storage& s = it->second;
      if (s.dtype != spec.dtype || s.numel != spec.storage_numel)
        fail_tensor("views storage ", in_quotes(record), " as ", spec.storage_numel, " ", dtype_name(spec.dtype),
                    " elements, but another tensor views it as ", s.numel, " ", dtype_name(s.dtype));
      return s;
    }
    std::uint64_t bytes = 0;
    const std::size_t item = dtype_size(spec.dtype);
    const bool overflow = __builtin_mul_overflow(static_cast<std::uint64_t>(spec.storage_numel), item, &bytes);
    if (overflow || bytes != entry->size)
      fail_tensor("has storage ", in_quotes(record), " of ", spec.storage_numel, " ", dtype_name(spec.dtype), " elements (",
                  overflow ? std::string("more than 2^64") : std::to_string(bytes),
                  " bytes), but the archive entry holds ", entry->size, " bytes");
    Storage s{*entry, spec.dtype, spec.storage_numel, Tensor(), false};
    return storages_.emplace(entry->index, std::move(s)).first->second;
  }

  const Tensor& load(Storage& s) {
    if (s.loaded) return s.data;
    if (s.entry.stored) {
      // The entry's size equals numel x itemsize and is bounded by the file: safe to allocate.
      s.data = Tensor(s.dtype, {s.numel});
      ar_.read_into(s.entry, s.data.raw());
    } else {
      // Deflated: inflated straight into the tensor, never through a second copy. Real weights deflate to
      // about 90 % of their size, zeros a thousandfold; when the declared size is more than 4 times the
      // compressed bytes, one inflating pass into a scratch buffer first proves the size, so that a size
      // the archive lies about costs at most 4 times the bytes in the file.
      if (s.entry.size / 4 > s.entry.comp_size) ar_.check_size(s.entry);
      s.data = Tensor(s.dtype, {s.numel});
      ar_.read_into(s.entry, s.data.raw());
    }
    s.loaded = true;
    return s.data;
  }

  // Every element the view reaches must lie inside the storage.
  void check_view(const TensorSpec& spec) const {
    const std::int64_t numel = shape_numel(spec.shape);
    if (numel < 0) fail_tensor("has a size ", shape_str(spec.shape), " whose element count overflows");
    if (numel == 0) return;
    std::int64_t last = spec.offset;
    bool overflow = false;
    for (std::size_t i = 0; i < spec.shape.size(); ++i) {
      std::int64_t reach = 0;
      overflow |= __builtin_mul_overflow(spec.shape[i] - 1, spec.stride[i], &reach);
      overflow |= __builtin_add_overflow(last, reach, &last);
    }
    const std::size_t item = dtype_size(spec.dtype);
    const std::string record = in_quotes("data/" + spec.storage_key);
    if (overflow || last >= spec.storage_numel) {
      std::uint64_t needed = 0;
      const bool huge = overflow || __builtin_mul_overflow(static_cast<std::uint64_t>(last) + 1, item, &needed);
      fail_tensor("needs ", huge ? std::string("more than 2^63") : std::to_string(needed), " bytes but its storage ",
                  record, " has ", static_cast<std::uint64_t>(spec.storage_numel) * item);
    }
    // Stride-0 (expanded) views could turn a small storage into an arbitrarily large tensor.
    if (numel > spec.storage_numel)
      fail_tensor("has ", numel, " elements but its storage ", record, " holds ", spec.storage_numel,
                  " (expanded views are not supported)");
  }

  // A view of a whole storage shares its buffer; other views are copied out, within a budget:
  // overlapping views of one large storage could otherwise ask for far more memory than the file.
  Tensor materialise(const TensorSpec& spec, const Tensor& storage) {
    const std::int64_t numel = shape_numel(spec.shape);
    if (spec.offset == 0 && numel == storage.numel() && is_contiguous(spec)) return storage.reshape(spec.shape);
    const std::uint64_t budget = 2 * ar_.bytes() + kCopySlack;
    const std::uint64_t bytes = static_cast<std::uint64_t>(numel) * dtype_size(spec.dtype);
    if (bytes > budget - copied_bytes_)
      fail_tensor("brings the copies of overlapping tensor views to more than ", budget,
                  " bytes (twice the file size plus ", kCopySlack, "); refusing to materialise them");
    copied_bytes_ += bytes;
    Tensor out(spec.dtype, spec.shape);
    if (numel > 0) gather(spec, storage.raw(), out.raw());
    return out;
  }

  static bool is_contiguous(const TensorSpec& spec) {
    std::int64_t expected = 1;
    for (std::size_t i = spec.shape.size(); i-- > 0;) {
      if (spec.shape[i] != 1 && spec.stride[i] != expected) return false;
      expected *= spec.shape[i];
    }
    return true;
  }

  // Copies a strided view (already bounds-checked) into a dense row-major buffer, one innermost
  // row at a time, walking the outer indices like an odometer.
  static void gather(const TensorSpec& spec, const std::byte* src, std::byte* dst) {
    const std::size_t item = dtype_size(spec.dtype);
    if (spec.shape.empty()) {
      std::memcpy(dst, src + spec.offset * item, item);
      return;
    }
    const std::size_t outer_dims = spec.shape.size() - 1;
    const std::int64_t inner = spec.shape.back();
    const std::int64_t inner_stride = spec.stride.back();
    std::vector<std::int64_t> index(outer_dims, 0);
    std::int64_t base = spec.offset;
    const std::int64_t rows = shape_numel(spec.shape) / inner;
    for (std::int64_t row = 0; row < rows; ++row) {
      if (inner_stride == 1) {
        std::memcpy(dst, src + base * item, inner * item);
      } else {
        for (std::int64_t j = 0; j < inner; ++j) std::memcpy(dst + j * item, src + (base + j * inner_stride) * item, item);
      }
      dst += inner * item;
      for (std::size_t d = outer_dims; d-- > 0;) {
        if (++index[d] < spec.shape[d]) {
          base += spec.stride[d];
          break;
        }
        base -= (spec.shape[d] - 1) * spec.stride[d];
        index[d] = 0;
      }
    }
  }

  const Archive& ar_;
  std::string prefix_;
  std::string tensor_;  // the tensor being read, quoted, for messages
  std::map<zip_uint64_t, Storage> storages_;
  std::uint64_t copied_bytes_ = 0;
};

PthStateDict read_archive(const Archive& ar) {
  const std::string prefix = find_prefix(ar);
  check_byteorder(ar, prefix);
  const std::optional<Entry> pkl = ar.find(prefix + "/data.pkl");
  if (!pkl) fail(ar.name(), ": not a PyTorch checkpoint (", kExpectation, ")");
  if (pkl->size > kMaxPickleBytes) fail(ar.name(), ": data.pkl is ", pkl->size, " bytes (at most ", kMaxPickleBytes, " supported)");
  const std::vector<std::uint8_t> bytes = ar.read_all(*pkl);
  const Document doc = pickle::unpickle(bytes, ar.name());

  Selection selection = select_state_dict(doc, ar.name());
  PthStateDict out;
  out.layout = std::move(selection.layout);
  out.ignored = std::move(selection.ignored);
  TensorReader reader(ar, prefix);
  const Value& dict = doc.at(selection.dict);
  const std::string ignored_prefix = selection.key.empty() ? "" : selection.key + ".";
  for (std::size_t i = 0; i < dict.items.size(); i += 2) {
    const std::string key = key_text(doc, dict.items[i]);
    if (doc.at(dict.items[i]).kind != Kind::String || !is_tensor(doc, dict.items[i + 1])) {
      out.ignored.push_back(ignored_prefix + key);
      continue;
    }
    out.tensors[key] = reader.read(doc, dict.items[i + 1], key);
  }
  return out;
}

}  // namespace

PthStateDict read_pth(const std::string& path) {
  const std::unique_ptr<Archive> archive = open_file(path);
  return read_archive(*archive);
}

PthStateDict read_pth_memory(const std::uint8_t* data, std::size_t size, const std::string& name) {
  const std::unique_ptr<Archive> archive = open_memory(data, size, name);
  return read_archive(*archive);
}

}  // namespace vrwkv
