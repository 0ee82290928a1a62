// Tests of the .pth reader (io/pth.hpp) and its restricted unpickler (io/pickle.hpp).
//
// Valid files: the golden checkpoints of ../shared/golden and the small reference checkpoints in
// tests/data (written by tools/make_test_checkpoints.py with PyTorch 1.13; values are arange-based
// so they are recomputed here). Hostile files are built here, in C++: zip archives through libzip
// and pickles byte by hand, so the tests need no Python.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zip.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "io/pickle.hpp"
#include "io/pth.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv {
namespace {

namespace fs = std::filesystem;
using namespace std::string_literals;

std::string golden_path(const std::string& name) { return std::string(VRWKV_GOLDEN_DIR) + "/" + name; }
std::string data_path(const std::string& name) { return std::string(VRWKV_SOURCE_DIR) + "/tests/data/" + name; }

// A folder for the files the tests write, removed when the test program exits.
struct ScratchDir {
  fs::path path = fs::path(::testing::TempDir()) / ("vrwkv_pth_test_" + std::to_string(::getpid()));
  ScratchDir() { fs::create_directories(path); }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string scratch_dir() {
  static const ScratchDir dir;
  return dir.path.string();
}

std::string scratch(const std::string& name) { return scratch_dir() + "/" + name; }

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

PthStateDict read_memory(const std::string& bytes, const std::string& name) {
  return read_pth_memory(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), name);
}

// Runs fn, which must throw Error(Input) with a one-line message that starts with "<name>: " and
// contains `part`.
::testing::AssertionResult throws_input(const std::function<void()>& fn, const std::string& name,
                                        const std::string& part) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string m = e.what();
    if (e.kind() != Error::Kind::Input) return ::testing::AssertionFailure() << "not kind Input: " << m;
    if (m.rfind(name + ": ", 0) != 0 || m.size() <= name.size() + 2 || m[name.size() + 2] == ':' ||
        m[name.size() + 2] == ' ')
      return ::testing::AssertionFailure() << "does not start with \"<name>: <text>\": " << m;
    if (m.find('\n') != std::string::npos) return ::testing::AssertionFailure() << "not one line: " << m;
    if (m.find(part) == std::string::npos)
      return ::testing::AssertionFailure() << "'" << part << "' not in: " << m;
    return ::testing::AssertionSuccess() << m;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "wrong exception type: " << e.what();
  }
  return ::testing::AssertionFailure() << "no exception";
}

// The file must be refused both from disk and from memory.
::testing::AssertionResult refused(const std::string& path, const std::string& part) {
  auto from_file = throws_input([&] { read_pth(path); }, path, part);
  if (!from_file) return from_file;
  const std::string bytes = read_bytes(path);
  return throws_input([&] { read_memory(bytes, "memory.pth"); }, "memory.pth", part);
}

// ---- writing pickles by hand ----

class PickleBuilder {
 public:
  PickleBuilder& op(char c) { bytes_ += c; return *this; }
  PickleBuilder& raw(const std::string& b) { bytes_ += b; return *this; }
  PickleBuilder& proto(int p) { return op('\x80').op(static_cast<char>(p)); }
  PickleBuilder& mark() { return op('('); }
  PickleBuilder& tuple() { return op('t'); }
  PickleBuilder& empty_tuple() { return op(')'); }
  PickleBuilder& empty_dict() { return op('}'); }
  PickleBuilder& reduce() { return op('R'); }
  PickleBuilder& setitem() { return op('s'); }
  PickleBuilder& setitems() { return op('u'); }
  PickleBuilder& stop() { return op('.'); }
  PickleBuilder& str(const std::string& s) {
    op('X');
    le(s.size(), 4);
    bytes_ += s;
    return *this;
  }
  PickleBuilder& integer(std::int64_t v) {
    if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      le(static_cast<std::uint32_t>(static_cast<std::int32_t>(v)), 4);
    } else {
      op('\x8a').op(8);
      le(static_cast<std::uint64_t>(v), 8);
    }
    return *this;
  }
  PickleBuilder& ints(const std::vector<std::int64_t>& values) {
    mark();
    for (std::int64_t v : values) integer(v);
    return tuple();
  }
  PickleBuilder& global(const std::string& module, const std::string& name) {
    return op('c').raw(module + "\n" + name + "\n");
  }
  PickleBuilder& ordered_dict() { return global("collections", "OrderedDict").empty_tuple().reduce(); }
  const std::string& bytes() const { return bytes_; }

 private:
  void le(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes_ += static_cast<char>((v >> (8 * i)) & 0xff);
  }
  std::string bytes_;
};

struct TensorDesc {
  std::string name;
  std::string key;  // storage key: the entry data/<key>
  std::int64_t storage_numel;
  std::int64_t offset;
  std::vector<std::int64_t> size;
  std::vector<std::int64_t> stride;
  std::string storage_class = "FloatStorage";
};

// name: _rebuild_tensor_v2(BINPERSID(('storage', torch.<T>Storage, key, 'cpu', numel)), offset, size,
//                          stride, False, OrderedDict())
void add_tensor(PickleBuilder& p, const TensorDesc& t) {
  p.str(t.name).global("torch._utils", "_rebuild_tensor_v2").mark();
  p.mark().str("storage").global("torch", t.storage_class).str(t.key).str("cpu").integer(t.storage_numel).tuple();
  p.op('Q').integer(t.offset).ints(t.size).ints(t.stride).op('\x89').ordered_dict();
  p.tuple().reduce();
}

// {'state_dict': OrderedDict(tensors...)}
std::string state_dict_pickle(const std::vector<TensorDesc>& tensors) {
  PickleBuilder p;
  p.proto(2).empty_dict().str("state_dict").ordered_dict().mark();
  for (const TensorDesc& t : tensors) add_tensor(p, t);
  return p.setitems().setitem().stop().bytes();
}

std::string float_bytes(int n, float start = 0) {
  std::string out(static_cast<std::size_t>(n) * 4, '\0');
  for (int i = 0; i < n; ++i) {
    const float f = start + static_cast<float>(i);
    std::memcpy(&out[static_cast<std::size_t>(i) * 4], &f, 4);
  }
  return out;
}

// ---- writing zip archives ----

using Entries = std::vector<std::pair<std::string, std::string>>;

void write_zip(const std::string& path, const Entries& entries, zip_int32_t method = ZIP_CM_STORE) {
  int err = 0;
  zip_t* za = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  ASSERT_NE(za, nullptr) << "libzip error " << err;
  for (const auto& [name, data] : entries) {
    zip_source_t* src = zip_source_buffer(za, data.data(), data.size(), 0);
    ASSERT_NE(src, nullptr);
    const zip_int64_t index = zip_file_add(za, name.c_str(), src, ZIP_FL_OVERWRITE);
    ASSERT_GE(index, 0);
    ASSERT_EQ(zip_set_file_compression(za, static_cast<zip_uint64_t>(index), method, 0), 0);
  }
  ASSERT_EQ(zip_close(za), 0) << zip_strerror(za);
}

// A torch-like archive: archive/data.pkl, archive/data/<key>..., archive/version.
std::string write_checkpoint(const std::string& file, const std::string& pickle, const Entries& storages,
                             zip_int32_t method = ZIP_CM_STORE) {
  Entries entries{{"archive/data.pkl", pickle}};
  for (const auto& [key, data] : storages) entries.emplace_back("archive/data/" + key, data);
  entries.emplace_back("archive/version", "3\n");
  const std::string path = scratch(file);
  write_zip(path, entries, method);
  return path;
}

std::string zip_entry(const std::string& path, const std::string& name) {
  int err = 0;
  zip_t* za = zip_open(path.c_str(), ZIP_RDONLY, &err);
  if (!za) return "";
  std::string out;
  zip_stat_t st;
  if (zip_stat(za, name.c_str(), 0, &st) == 0) {
    out.resize(st.size);
    zip_file_t* f = zip_fopen(za, name.c_str(), 0);
    if (f) {
      const zip_int64_t n = zip_fread(f, out.data(), out.size());
      out.resize(n < 0 ? 0 : static_cast<std::size_t>(n));
      zip_fclose(f);
    }
  }
  zip_discard(za);
  return out;
}

std::vector<std::string> golden_checkpoints() {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(VRWKV_GOLDEN_DIR))
    if (e.path().extension() == ".pth") out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<double> values(const Tensor& t) {
  std::vector<double> out;
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    switch (t.dtype()) {
      case DType::I64: out.push_back(static_cast<double>(t.data<std::int64_t>()[i])); break;
      case DType::I32: out.push_back(t.data<std::int32_t>()[i]); break;
      case DType::U8: out.push_back(t.data<std::uint8_t>()[i]); break;
      case DType::Bool: out.push_back(t.data<std::uint8_t>()[i]); break;
      case DType::F64: out.push_back(t.data<double>()[i]); break;
      default: out.push_back(t.to_f32().f32()[i]); break;
    }
  }
  return out;
}

double sum(const Tensor& t) {
  double s = 0;
  for (double v : values(t)) s += v;
  return s;
}

// ================================ valid files ================================

TEST(PthGolden, EveryGoldenCheckpointIsAnMmclsStateDict) {
  const std::vector<std::string> files = golden_checkpoints();
  ASSERT_GE(files.size(), 7u);
  for (const std::string& path : files) {
    SCOPED_TRACE(path);
    const PthStateDict sd = read_pth(path);
    EXPECT_EQ(sd.layout.rfind("mmcls", 0), 0u) << sd.layout;
    EXPECT_EQ(sd.ignored, std::vector<std::string>{"meta"});
    EXPECT_GT(sd.tensors.size(), 20u);
    for (const auto& [name, t] : sd.tensors) {
      EXPECT_EQ(t.dtype(), DType::F32) << name;
      EXPECT_TRUE(name.rfind("backbone.", 0) == 0 || name.rfind("head.", 0) == 0) << name;
    }
    EXPECT_TRUE(sd.tensors.count("backbone.pos_embed"));
  }
}

TEST(PthGolden, VrwkvTinyShapesAndValues) {
  const PthStateDict sd = read_pth(golden_path("vrwkv_t_224_b2.pth"));
  EXPECT_EQ(sd.layout, "mmcls (meta, state_dict)");
  ASSERT_EQ(sd.tensors.size(), 225u);
  const auto shape = [&](const std::string& n) { return sd.tensors.at(n).shape(); };
  EXPECT_EQ(shape("backbone.pos_embed"), (Shape{1, 196, 192}));
  EXPECT_EQ(shape("backbone.patch_embed.projection.weight"), (Shape{192, 3, 16, 16}));
  EXPECT_EQ(shape("backbone.layers.0.ln0.weight"), (Shape{192}));
  EXPECT_EQ(shape("backbone.layers.11.att.spatial_mix_k"), (Shape{1, 1, 192}));
  EXPECT_EQ(shape("backbone.layers.11.ffn.key.weight"), (Shape{768, 192}));
  EXPECT_EQ(shape("backbone.layers.11.ffn.value.weight"), (Shape{192, 768}));
  EXPECT_EQ(shape("head.fc.weight"), (Shape{1000, 192}));
  EXPECT_EQ(shape("head.fc.bias"), (Shape{1000}));

  // Reference numbers printed by torch.load of the same file (sums in float64).
  struct Expected {
    const char* name;
    float first[3];
    double sum;
  };
  const Expected expected[] = {
      {"backbone.pos_embed", {0.5526168346405029f, -0.11746721714735031f, -0.0958012044429779f}, 38.11445445416928},
      {"backbone.patch_embed.projection.weight",
       {-0.07179360836744308f, -0.00944682490080595f, 0.08652643114328384f},
       15.263424386184312},
      {"head.fc.weight", {0.12885279953479767f, -0.054119423031806946f, -0.009508118033409119f}, 15.874079530043332},
      {"backbone.layers.11.ffn.key.weight",
       {-0.05242478847503662f, 0.09791814535856247f, -0.011974823661148548f},
       -14.420427999164161},
  };
  for (const Expected& e : expected) {
    SCOPED_TRACE(e.name);
    const Tensor& t = sd.tensors.at(e.name);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(t.f32()[i], e.first[i]);
    EXPECT_NEAR(sum(t), e.sum, 1e-9);
  }
}

TEST(PthGolden, MemoryAndFileReadsAgree) {
  const std::string path = golden_path("tiny_default.pth");
  const PthStateDict a = read_pth(path);
  const PthStateDict b = read_memory(read_bytes(path), "tiny_default.pth");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  ASSERT_EQ(a.tensors.size(), 45u);
  for (const auto& [name, t] : a.tensors) {
    const Tensor& u = b.tensors.at(name);
    ASSERT_EQ(t.shape(), u.shape()) << name;
    EXPECT_EQ(std::memcmp(t.raw(), u.raw(), t.nbytes()), 0) << name;
  }
  const Tensor& pos = a.tensors.at("backbone.pos_embed");
  EXPECT_EQ(pos.shape(), (Shape{1, 64, 64}));
  const float first[] = {-0.30924737453460693f, 0.09499716013669968f, 0.1861506551504135f, 0.12177427858114243f};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(pos.f32()[i], first[i]);
  EXPECT_NEAR(sum(pos), -0.15891873239161214, 1e-9);
}

// The nn.Linear(3, 2) state dicts of make_test_checkpoints.py: weight = start + [0..5], bias = start + 100 + [0, 1].
void expect_small_linear(const PthStateDict& sd, double start) {
  ASSERT_EQ(sd.tensors.size(), 2u);
  const Tensor& w = sd.tensors.at("weight");
  const Tensor& b = sd.tensors.at("bias");
  EXPECT_EQ(w.shape(), (Shape{2, 3}));
  EXPECT_EQ(b.shape(), (Shape{2}));
  EXPECT_EQ(values(w), (std::vector<double>{start, start + 1, start + 2, start + 3, start + 4, start + 5}));
  EXPECT_EQ(values(b), (std::vector<double>{start + 100, start + 101}));
}

TEST(PthLayouts, BareStateDictWithParameters) {
  const PthStateDict sd = read_pth(data_path("bare.pth"));
  EXPECT_EQ(sd.layout, "bare state dict");
  EXPECT_TRUE(sd.ignored.empty());
  ASSERT_EQ(sd.tensors.size(), 2u);
  EXPECT_EQ(sd.tensors.at("w").shape(), (Shape{2, 2}));  // an nn.Parameter: _rebuild_parameter
  EXPECT_EQ(values(sd.tensors.at("w")), (std::vector<double>{0, 1, 2, 3}));
  EXPECT_EQ(values(sd.tensors.at("b")), (std::vector<double>{10, 11, 12}));
}

TEST(PthLayouts, InternImageModel) {
  const PthStateDict sd = read_pth(data_path("internimage_model.pth"));
  EXPECT_EQ(sd.layout, "InternImage (model)");
  EXPECT_EQ(sd.ignored, std::vector<std::string>{"epoch"});
  expect_small_linear(sd, 0);
}

TEST(PthLayouts, ModelIsPreferredToModelEma) {
  const PthStateDict sd = read_pth(data_path("internimage_ema.pth"));
  EXPECT_EQ(sd.layout, "InternImage (model)");
  EXPECT_EQ(sd.ignored, (std::vector<std::string>{"model_ema", "max_accuracy"}));
  expect_small_linear(sd, 0);
}

TEST(PthLayouts, ModelEmaAlone) {
  const PthStateDict sd = read_pth(data_path("ema_only.pth"));
  EXPECT_EQ(sd.layout, "InternImage (model_ema)");
  expect_small_linear(sd, 500);
}

TEST(PthLayouts, Module) {
  const PthStateDict sd = read_pth(data_path("module.pth"));
  EXPECT_EQ(sd.layout, "InternImage (module)");
  EXPECT_EQ(sd.ignored, std::vector<std::string>{"args"});
  expect_small_linear(sd, 0);
}

void expect_views(const PthStateDict& sd) {
  EXPECT_EQ(sd.layout, "mmcls (meta, state_dict)");
  EXPECT_EQ(sd.ignored, (std::vector<std::string>{"meta", "state_dict.note", "state_dict.nested"}));
  ASSERT_EQ(sd.tensors.size(), 14u);
  const auto& t = sd.tensors;

  // base = arange(12).reshape(3, 4); transposed = base.t(): [4,3], stride (1,4)
  EXPECT_EQ(t.at("transposed").shape(), (Shape{4, 3}));
  std::vector<double> transposed;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) transposed.push_back(j * 4 + i);
  EXPECT_EQ(values(t.at("transposed")), transposed);
  // base[::2, 1:]: rows 0 and 2, columns 1..3, storage offset 1
  EXPECT_EQ(values(t.at("strided_rows")), (std::vector<double>{1, 2, 3, 9, 10, 11}));
  // flat = 1000 + arange(10); offset_view = flat[2:7]; shared_a = flat[:4].reshape(2,2); shared_b = flat
  EXPECT_EQ(values(t.at("offset_view")), (std::vector<double>{1002, 1003, 1004, 1005, 1006}));
  EXPECT_EQ(t.at("shared_a").shape(), (Shape{2, 2}));
  EXPECT_EQ(values(t.at("shared_a")), (std::vector<double>{1000, 1001, 1002, 1003}));
  std::vector<double> flat;
  for (int i = 0; i < 10; ++i) flat.push_back(1000 + i);
  EXPECT_EQ(values(t.at("shared_b")), flat);

  EXPECT_EQ(t.at("f16").dtype(), DType::F16);
  EXPECT_EQ(t.at("f16").shape(), (Shape{2, 3}));
  EXPECT_EQ(values(t.at("f16")), (std::vector<double>{-2, -1, 0, 1, 2, 3}));
  EXPECT_EQ(t.at("bf16").dtype(), DType::BF16);
  EXPECT_EQ(values(t.at("bf16")), (std::vector<double>{0.5, 1, 1.5, 2}));
  EXPECT_EQ(t.at("f64").dtype(), DType::F64);
  EXPECT_EQ(values(t.at("f64")), (std::vector<double>{0, 1.0 / 3.0, 2.0 / 3.0}));
  EXPECT_EQ(t.at("i64").dtype(), DType::I64);
  EXPECT_EQ(values(t.at("i64")), (std::vector<double>{-3, 0, 5, 1099511627776.0}));
  EXPECT_EQ(t.at("i32").dtype(), DType::I32);
  EXPECT_EQ(values(t.at("i32")), (std::vector<double>{7, -7}));
  EXPECT_EQ(t.at("u8").dtype(), DType::U8);
  EXPECT_EQ(values(t.at("u8")), (std::vector<double>{0, 255}));
  EXPECT_EQ(t.at("flag").dtype(), DType::Bool);
  EXPECT_EQ(values(t.at("flag")), (std::vector<double>{1, 0, 1}));
  EXPECT_EQ(t.at("scalar").shape(), Shape{});
  EXPECT_EQ(values(t.at("scalar")), (std::vector<double>{2.5}));
  EXPECT_EQ(t.at("empty").shape(), (Shape{0, 3}));
  EXPECT_EQ(t.at("empty").numel(), 0);
}

TEST(PthLayouts, ViewsDtypesAndMetadataProtocol2) { expect_views(read_pth(data_path("mmcls_views_p2.pth"))); }

TEST(PthLayouts, ViewsDtypesAndMetadataProtocol4) { expect_views(read_pth(data_path("mmcls_views_p4.pth"))); }

TEST(PthLayouts, HandBuiltCheckpointAndDeflatedEntries) {
  const std::string pickle = state_dict_pickle({{"a", "0", 6, 0, {2, 3}, {3, 1}}, {"b", "1", 4, 1, {3}, {1}}});
  for (const zip_int32_t method : {ZIP_CM_STORE, ZIP_CM_DEFLATE}) {
    const std::string path =
        write_checkpoint(method == ZIP_CM_STORE ? "hand.pth" : "hand_deflate.pth", pickle,
                         {{"0", float_bytes(6)}, {"1", float_bytes(4, 10)}}, method);
    const PthStateDict sd = read_pth(path);
    EXPECT_EQ(sd.layout, "mmcls (state_dict)");
    EXPECT_EQ(values(sd.tensors.at("a")), (std::vector<double>{0, 1, 2, 3, 4, 5}));
    EXPECT_EQ(values(sd.tensors.at("b")), (std::vector<double>{11, 12, 13}));
  }
}

TEST(PthLayouts, TensorsSharingAStorageAreReadOnce) {
  // Three views of one storage, one of them the whole storage: all correct.
  const std::string pickle = state_dict_pickle({{"whole", "0", 8, 0, {2, 4}, {4, 1}},
                                                {"col", "0", 8, 1, {2}, {4}},
                                                {"tail", "0", 8, 4, {4}, {1}}});
  const PthStateDict sd = read_pth(write_checkpoint("shared.pth", pickle, {{"0", float_bytes(8)}}));
  EXPECT_EQ(values(sd.tensors.at("whole")), (std::vector<double>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(values(sd.tensors.at("col")), (std::vector<double>{1, 5}));
  EXPECT_EQ(values(sd.tensors.at("tail")), (std::vector<double>{4, 5, 6, 7}));
}

TEST(PthLayouts, ReferenceCyclesInMetadataAreHarmless) {
  // meta = []; meta.append(meta): a list that contains itself, built through the memo.
  PickleBuilder p;
  p.proto(2).empty_dict().str("meta").op(']').op('q').op(0).op('h').op(0).op('a').setitem();
  p.str("state_dict").ordered_dict().mark();
  add_tensor(p, {"x", "0", 2, 0, {2}, {1}});
  p.setitems().setitem().stop();
  const PthStateDict sd = read_pth(write_checkpoint("cycle.pth", p.bytes(), {{"0", float_bytes(2)}}));
  EXPECT_EQ(values(sd.tensors.at("x")), (std::vector<double>{0, 1}));
}

// ================================ hostile files ================================

TEST(PthHostile, MissingFileAndDirectory) {
  const std::string missing = scratch("does_not_exist.pth");
  EXPECT_TRUE(throws_input([&] { read_pth(missing); }, missing, "No such file"));
  EXPECT_TRUE(throws_input([&] { read_pth(scratch_dir()); }, scratch_dir(), "directory"));
}

TEST(PthHostile, EmptyFile) {
  const std::string path = scratch("empty.pth");
  write_bytes(path, "");
  EXPECT_TRUE(refused(path, "empty"));
  EXPECT_TRUE(throws_input([] { read_pth_memory(nullptr, 0, "null.pth"); }, "null.pth", "empty"));
}

TEST(PthHostile, TextFile) {
  const std::string path = scratch("text.pth");
  write_bytes(path, "this is not a checkpoint\n");
  EXPECT_TRUE(refused(path, "not a PyTorch checkpoint (expected a zip archive with data.pkl)"));
}

TEST(PthHostile, TruncatedArchive) {
  const std::string bytes = read_bytes(golden_path("tiny_default.pth"));
  const std::string path = scratch("truncated.pth");
  write_bytes(path, bytes.substr(0, bytes.size() / 2));
  EXPECT_TRUE(refused(path, "truncated or corrupt"));
}

TEST(PthHostile, CorruptedStorageFailsTheCrc) {
  std::string bytes = read_bytes(golden_path("tiny_default.pth"));
  // Flip a byte in the middle of the first storage (data/0 follows data.pkl, both stored).
  const std::size_t at = bytes.find("tiny_default/data/0");
  ASSERT_NE(at, std::string::npos);
  bytes[at + 200] = static_cast<char>(bytes[at + 200] ^ 0x55);
  const std::string path = scratch("crc.pth");
  write_bytes(path, bytes);
  EXPECT_TRUE(refused(path, "data/0"));
}

TEST(PthHostile, LegacyFormat) {
  const std::string path = scratch("legacy.pth");
  write_bytes(path, std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15));
  EXPECT_TRUE(refused(path, "legacy PyTorch format (before 1.6) is not supported; re-save with torch.save"));
}

TEST(PthHostile, ZipWithoutDataPkl) {
  const std::string path = scratch("no_pickle.pth");
  write_zip(path, {{"archive/version", "3\n"}, {"archive/data/0", float_bytes(4)}});
  EXPECT_TRUE(refused(path, "expected a zip archive with data.pkl"));
}

// The pickle calls os.system('touch MARKER'): refused at the GLOBAL opcode, nothing runs.
TEST(PthHostile, OsSystemIsRefusedAndNeverRuns) {
  const std::string marker = scratch("os_system_ran");
  fs::remove(marker);
  PickleBuilder p;
  p.proto(2).global("os", "system").str("touch " + marker).op('\x85').reduce().stop();
  const std::string path = write_checkpoint("os_system.pth", p.bytes(), {});
  EXPECT_TRUE(refused(path, "refusing to load: the pickle references os.system, which is not part of a state dict"));
  EXPECT_FALSE(fs::exists(marker));
}

TEST(PthHostile, OtherDangerousGlobalsAreRefused) {
  const std::pair<std::string, std::string> globals[] = {
      {"builtins", "eval"}, {"subprocess", "Popen"}, {"posix", "system"}, {"builtins", "getattr"},
      {"torch", "load"},    {"collections", "deque"}, {"numpy", "load"},  {"torch._utils", "_rebuild_qtensor"},
  };
  for (const auto& [module, name] : globals) {
    PickleBuilder p;
    p.proto(2).global(module, name).str("1+1").op('\x85').reduce().stop();
    const std::string path = write_checkpoint("global.pth", p.bytes(), {});
    EXPECT_TRUE(refused(path, "the pickle references " + module + "." + name + ", which is not part of a state dict"));
  }
  // The same through STACK_GLOBAL (protocol 4), as torch writes with pickle_protocol=4.
  PickleBuilder p;
  p.proto(4).op('\x8c').op(5).raw("posix").op('\x8c').op(6).raw("system").op('\x93').str("id").op('\x85').reduce().stop();
  EXPECT_TRUE(refused(write_checkpoint("stack_global.pth", p.bytes(), {}), "references posix.system"));
}

TEST(PthHostile, TensorLargerThanItsStorage) {
  // 301 floats from a storage of 200: the message names the tensor, both sizes and the storage.
  const std::string pickle = state_dict_pickle({{"backbone.pos_embed", "3", 200, 0, {1, 301}, {301, 1}}});
  const std::string path = write_checkpoint("too_big.pth", pickle, {{"3", float_bytes(200)}});
  EXPECT_TRUE(refused(path, "tensor 'backbone.pos_embed' needs 1204 bytes but its storage 'data/3' has 800"));
  // The same through an offset and through a stride.
  const std::string offset = state_dict_pickle({{"w", "0", 4, 2, {3}, {1}}});
  EXPECT_TRUE(refused(write_checkpoint("offset.pth", offset, {{"0", float_bytes(4)}}), "needs 20 bytes"));
  const std::string stride = state_dict_pickle({{"w", "0", 4, 0, {2, 2}, {3, 1}}});
  EXPECT_TRUE(refused(write_checkpoint("stride.pth", stride, {{"0", float_bytes(4)}}), "needs 20 bytes"));
}

TEST(PthHostile, ImpossibleViews) {
  struct Case {
    TensorDesc tensor;
    const char* message;
  };
  const Case cases[] = {
      {{"w", "0", 4, 0, {1000000000}, {0}}, "expanded views are not supported"},
      {{"w", "0", 4, 0, {1LL << 40, 1LL << 40}, {1, 1}}, "overflows"},
      {{"w", "0", 4, 0, {2, 2}, {1LL << 62, 1LL << 62}}, "more than 2^63"},
      {{"w", "0", 4, 0, {2}, {-1}}, "negative stride"},
      {{"w", "0", 4, -1, {2}, {1}}, "negative storage offset"},
      {{"w", "0", 4, 0, {-2}, {1}}, "negative size"},
      {{"w", "0", 4, 0, {2, 2}, {1}}, "2 sizes but 1 strides"},
      {{"w", "0", 4, 0, std::vector<std::int64_t>(65, 1), std::vector<std::int64_t>(65, 1)}, "65 dimensions"},
      {{"w", "0", 4, 0, {4}, {1}, "SomethingStorage"}, "references torch.SomethingStorage"},
      {{"w", "0\0x"s, 4, 0, {4}, {1}}, "storage key with a NUL byte"},
  };
  for (const Case& c : cases) {
    const std::string path = write_checkpoint("view.pth", state_dict_pickle({c.tensor}), {{"0", float_bytes(4)}});
    EXPECT_TRUE(refused(path, c.message));
  }
}

TEST(PthHostile, OverlappingViewsHaveACopyBudget) {
  // 40 views of all but the first element of a 4 MB storage would copy 160 MB from a 4 MB file.
  constexpr int kNumel = 1 << 20;
  std::vector<TensorDesc> tensors;
  for (int i = 0; i < 40; ++i) tensors.push_back({"v" + std::to_string(i), "0", kNumel, 1, {kNumel - 1}, {1}});
  const std::string path = write_checkpoint("overlap.pth", state_dict_pickle(tensors), {{"0", float_bytes(kNumel)}});
  EXPECT_TRUE(refused(path, "refusing to materialise"));
  // Views of the whole storage share it and cost nothing.
  for (TensorDesc& t : tensors) t = {t.name, "0", kNumel, 0, {kNumel / 2, 2}, {2, 1}};
  const PthStateDict sd = read_pth(write_checkpoint("whole.pth", state_dict_pickle(tensors), {{"0", float_bytes(kNumel)}}));
  ASSERT_EQ(sd.tensors.size(), 40u);
  EXPECT_EQ(sd.tensors.at("v0").raw(), sd.tensors.at("v39").raw());
  EXPECT_EQ(sd.tensors.at("v7").data<float>()[kNumel - 1], static_cast<float>(kNumel - 1));
}

TEST(PthHostile, StorageEntryMissing) {
  const std::string pickle = state_dict_pickle({{"w", "7", 4, 0, {4}, {1}}});
  EXPECT_TRUE(refused(write_checkpoint("missing_storage.pth", pickle, {{"0", float_bytes(4)}}),
                      "tensor 'w' needs storage 'data/7', which is missing from the archive"));
}

TEST(PthHostile, StorageSizeDisagreesWithTheArchive) {
  // numel 10^15: would be 4 PB; the entry holds 16 bytes. Must fail before any allocation.
  const std::string huge = state_dict_pickle({{"w", "0", 1000000000000000LL, 0, {4}, {1}}});
  EXPECT_TRUE(refused(write_checkpoint("numel_1e15.pth", huge, {{"0", float_bytes(4)}}), "archive entry holds 16 bytes"));
  // numel whose byte count overflows 64 bits
  const std::string overflow = state_dict_pickle({{"w", "0", 1LL << 62, 0, {4}, {1}, "DoubleStorage"}});
  EXPECT_TRUE(refused(write_checkpoint("numel_overflow.pth", overflow, {{"0", float_bytes(8)}}), "archive entry holds"));
  // one element more than the entry
  const std::string off_by_one = state_dict_pickle({{"w", "0", 5, 0, {4}, {1}}});
  EXPECT_TRUE(refused(write_checkpoint("numel_5.pth", off_by_one, {{"0", float_bytes(4)}}), "archive entry holds 16 bytes"));
}

TEST(PthHostile, OneStorageSeenAsTwoDtypes) {
  const std::string pickle =
      state_dict_pickle({{"a", "0", 4, 0, {4}, {1}}, {"b", "0", 2, 0, {2}, {1}, "DoubleStorage"}});
  EXPECT_TRUE(refused(write_checkpoint("two_dtypes.pth", pickle, {{"0", float_bytes(4)}}), "another tensor views it"));
}

TEST(PthHostile, BigEndianByteOrder) {
  const std::string pickle = state_dict_pickle({{"w", "0", 4, 0, {4}, {1}}});
  const std::string path = scratch("big_endian.pth");
  write_zip(path, {{"archive/data.pkl", pickle}, {"archive/byteorder", "big"}, {"archive/data/0", float_bytes(4)}});
  EXPECT_TRUE(refused(path, "big-endian"));
  write_zip(path, {{"archive/data.pkl", pickle}, {"archive/byteorder", "little"}, {"archive/data/0", float_bytes(4)}});
  EXPECT_EQ(read_pth(path).tensors.size(), 1u);
}

TEST(PthHostile, TruncatedPickle) {
  const std::string pickle = state_dict_pickle({{"w", "0", 4, 0, {4}, {1}}});
  for (std::size_t keep : {std::size_t{0}, std::size_t{1}, std::size_t{7}, pickle.size() / 2, pickle.size() - 1}) {
    const std::string path = write_checkpoint("short_pickle.pth", pickle.substr(0, keep), {{"0", float_bytes(4)}});
    EXPECT_TRUE(refused(path, "invalid pickle")) << keep;
  }
}

TEST(PthHostile, PickleUnderflows) {
  const std::pair<std::string, std::string> cases[] = {
      {"\x80\x02h\x07."s, "memo index 7 is not defined"},       // BINGET of nothing
      {"\x80\x02j\xff\xff\xff\xff."s, "memo index 4294967295"},  // LONG_BINGET
      {"\x80\x02R."s, "stack underflow"},                        // REDUCE on an empty stack
      {"\x80\x02" "0."s, "stack underflow"},                        // POP on an empty stack
      {"\x80\x02q\x00."s, "stack underflow"},                    // BINPUT of nothing
      {"\x80\x02}(q\x00."s, "stack underflow"},                  // BINPUT across a MARK
      {"\x80\x02Nt."s, "no MARK"},                               // TUPLE without MARK
      {"\x80\x02N\x86."s, "stack underflow"},                    // TUPLE2 with one value
      {"\x80\x02Na."s, "stack underflow"},                       // APPEND with no list
      {"\x80\x02N(Na."s, "stack underflow"},                     // APPEND across a MARK
      {"\x80\x02NNa."s, "cannot add items to a None"},           // APPEND to a None
      {"\x80\x02}(N."s, "MARKs still open"},                     // STOP with an open MARK
      {"\x80\x02NN."s, "2 values on the stack"},                 // STOP with two values
      {"\x80\x02."s, "0 values on the stack"},                   // STOP with nothing
      {"\x80\x02)N\x81."s, "can only call a global"},            // NEWOBJ on a tuple
      {"\x80\x02i\n\n."s, "INST"},                               // unsupported opcode, named
      {"\x80\x02\xff."s, "unknown opcode 0xff"},
      {"\x80\x09."s, "unsupported pickle protocol 9"},
      {"\x80\x02X\xff\xff\xff\x7f"s, "needs 2147483647 bytes"},
      {"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\xff"s, "frame of"},
      {"\x80\x02T\xff\xff\xff\xff"s, "negative length"},
      {"\x80\x02" "ccollections\nOrderedDict"s, "no terminating newline"},
      {"\x80\x02" "ccollections\nOrderedDict\nN\x85R."s, "OrderedDict with arguments"},
      {"\x80\x02" "ccollections\nOrderedDict\nNR."s, "call arguments must be a tuple"},
      {"\x80\x02N\x93."s, "stack underflow"},
      {"\x80\x02NN\x93."s, "STACK_GLOBAL needs two strings"},
      {"\x80\x02]N\x62."s, "cannot set the state of a list"},
  };
  for (const auto& [pickle, message] : cases) {
    const std::string path = write_checkpoint("underflow.pth", pickle, {});
    EXPECT_TRUE(refused(path, message)) << message;
  }
}

TEST(PthHostile, DeepNestingAndManyMarks) {
  std::string deep = "\x80\x02)";
  deep += std::string(5000, '\x85');  // TUPLE1 around TUPLE1 around ...
  deep += '.';
  EXPECT_TRUE(refused(write_checkpoint("deep.pth", deep, {}), "nested deeper than 1000"));
  // Each round: POP the list, make a new one, append the old one to it (through the memo).
  std::string deep_lists = "\x80\x02]q\x00"s;
  for (int i = 0; i < 3000; ++i) deep_lists += "0]h\x00" "aq\x00"s;
  deep_lists += ".";
  EXPECT_TRUE(refused(write_checkpoint("deep_lists.pth", deep_lists, {}), "nested deeper than 1000"));
  std::string marks = "\x80\x02";
  marks += std::string(100000, '(');
  marks += '.';
  EXPECT_TRUE(refused(write_checkpoint("marks.pth", marks, {}), "nested MARKs"));
}

TEST(PthHostile, NoStateDictInside) {
  PickleBuilder list;
  list.proto(2).op(']').stop();
  EXPECT_TRUE(refused(write_checkpoint("list.pth", list.bytes(), {}), "the checkpoint holds a list"));
  PickleBuilder no_tensors;
  no_tensors.proto(2).empty_dict().str("epoch").integer(3).setitem().stop();
  EXPECT_TRUE(refused(write_checkpoint("no_tensors.pth", no_tensors.bytes(), {}),
                      "no state dict found (top-level keys: epoch;"));
  PickleBuilder bad_sd;
  bad_sd.proto(2).empty_dict().str("state_dict").op(']').setitem().stop();
  EXPECT_TRUE(refused(write_checkpoint("bad_sd.pth", bad_sd.bytes(), {}), "'state_dict' is a list"));
}

TEST(PthHostile, MalformedTensorRebuilds) {
  const auto checkpoint_with = [](const std::function<void(PickleBuilder&)>& value) {
    PickleBuilder p;
    p.proto(2).empty_dict().str("w");
    value(p);
    p.setitem().stop();
    return write_checkpoint("malformed.pth", p.bytes(), {{"0", float_bytes(4)}});
  };
  // _rebuild_tensor_v2 with too few arguments
  EXPECT_TRUE(refused(checkpoint_with([](PickleBuilder& p) {
                        p.global("torch._utils", "_rebuild_tensor_v2").mark().integer(1).tuple().reduce();
                      }),
                      "malformed rebuild arguments"));
  // storage reference that is not a persistent id
  EXPECT_TRUE(refused(checkpoint_with([](PickleBuilder& p) {
                        p.global("torch._utils", "_rebuild_tensor_v2").mark().str("storage").integer(0);
                        p.ints({4}).ints({1}).op('\x89').op('N').tuple().reduce();
                      }),
                      "has no storage reference"));
  // a parameter around a parameter global that was never called
  EXPECT_TRUE(refused(checkpoint_with([](PickleBuilder& p) {
                        p.global("torch._utils", "_rebuild_parameter").mark();
                        p.global("torch._utils", "_rebuild_parameter").op('\x89').op('N').tuple().reduce();
                      }),
                      "wraps no tensor"));
}

// ================================ the unpickler alone ================================

pickle::Document unpickle(const std::string& bytes, const pickle::Limits& limits = {}) {
  return pickle::unpickle(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()), "test", limits);
}

TEST(Pickle, Scalars) {
  // [1, -2, 65535, 2**63-1 (LONG1 9 bytes), -1 (LONG1), 2**70, 0.25, True, None, 'hé', b'\x00']
  const std::string bytes = "\x80\x02]q\x00(K\x01J\xfe\xff\xff\xffM\xff\xff"s +
                            "\x8a\x09\xff\xff\xff\xff\xff\xff\xff\x7f\x00"s + "\x8a\x01\xff"s +
                            "\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40"s + "G\x3f\xd0\x00\x00\x00\x00\x00\x00"s +
                            "\x88N"s + "X\x03\x00\x00\x00h\xc3\xa9"s + "C\x01\x00"s + "e."s;
  const pickle::Document doc = unpickle(bytes);
  const pickle::Value& list = doc.at(doc.root());
  ASSERT_EQ(list.kind, pickle::Kind::List);
  ASSERT_EQ(list.items.size(), 11u);
  const auto item = [&](int i) -> const pickle::Value& { return doc.at(list.items[static_cast<std::size_t>(i)]); };
  EXPECT_EQ(item(0).integer, 1);
  EXPECT_EQ(item(1).integer, -2);
  EXPECT_EQ(item(2).integer, 65535);
  EXPECT_EQ(item(3).integer, INT64_MAX);
  EXPECT_EQ(item(4).integer, -1);
  EXPECT_EQ(item(5).kind, pickle::Kind::BigInt);
  EXPECT_EQ(item(6).number, 0.25);
  EXPECT_EQ(item(7).kind, pickle::Kind::Bool);
  EXPECT_EQ(item(7).integer, 1);
  EXPECT_EQ(item(8).kind, pickle::Kind::None);
  EXPECT_EQ(item(9).text, "h\xc3\xa9");
  EXPECT_EQ(item(10).kind, pickle::Kind::Bytes);
  EXPECT_EQ(item(10).text, std::string(1, '\0'));
}

TEST(Pickle, GoldenDataPklParses) {
  const std::string bytes = zip_entry(golden_path("tiny_default.pth"), "tiny_default/data.pkl");
  ASSERT_FALSE(bytes.empty());
  const pickle::Document doc = unpickle(bytes);
  const pickle::ValueId sd = doc.dict_get(doc.root(), "state_dict");
  ASSERT_NE(sd, pickle::kNoValue);
  EXPECT_EQ(doc.at(sd).kind, pickle::Kind::Dict);
  EXPECT_EQ(doc.at(sd).items.size(), 2u * 45u);
}

TEST(Pickle, RefusedGlobalMessage) {
  try {
    pickle::unpickle(std::span(reinterpret_cast<const std::uint8_t*>("\x80\x02\x63os\nsystem\n"), 13), "x.pth");
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "x.pth: refusing to load: the pickle references os.system, which is not part of a state dict");
  }
  // Non-printable bytes in a refused name are escaped, so the message stays one line.
  EXPECT_TRUE(throws_input([] { unpickle("\x80\x02\x63os\x01\x0d\nsys\x1btem\n"); }, "test",
                           "os\\x01\\x0d.sys\\x1btem"));
}

TEST(Pickle, ValueLimit) {
  pickle::Limits limits;
  limits.max_values = 10;
  std::string many = "\x80\x02(";
  many += std::string(20, 'N');
  many += "l.";
  EXPECT_TRUE(throws_input([&] { unpickle(many, limits); }, "test", "more than 10 values"));
}

}  // namespace
}  // namespace vrwkv
