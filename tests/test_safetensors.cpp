// safetensors reading and writing: round trip with metadata, and damaged or
// hostile files (ENGINEERING.md "Files and interfaces").
#include <cstring>

#include "common.hpp"
#include "io/file.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv {
namespace {

std::string header_file(const std::string& json, std::size_t data_bytes = 0) {
  std::string s(8, '\0');
  const std::uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s + json + std::string(data_bytes, '\0');
}

void expect_input_error(const std::string& bytes, const std::string& mention) {
  try {
    read_safetensors_memory(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), "f.safetensors");
    FAIL() << "no error for " << mention;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Error::Kind::Input);
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("f.safetensors: ", 0), 0u) << msg;
    EXPECT_NE(msg.find(mention), std::string::npos) << msg;
  }
}

TEST(Safetensors, RoundTripWithMetadata) {
  const std::string path = ::testing::TempDir() + "vrwkv_st_roundtrip.safetensors";
  Tensor a(DType::F32, {2, 3}), b(DType::I64, {4}), c(DType::U8, {0});
  for (int i = 0; i < 6; ++i) a.f32()[i] = i * 0.5f;
  for (int i = 0; i < 4; ++i) b.data<std::int64_t>()[i] = -i;
  write_safetensors(path, {{"a", a}, {"b", b}, {"c", c}}, {{"k", "v"}});
  Metadata meta;
  const TensorMap t = read_safetensors(path, &meta);
  EXPECT_EQ(meta.at("k"), "v");
  EXPECT_EQ(t.at("a").shape(), (Shape{2, 3}));
  EXPECT_EQ(std::memcmp(t.at("a").raw(), a.raw(), a.nbytes()), 0);
  EXPECT_EQ(t.at("b").data<std::int64_t>()[3], -3);
  EXPECT_EQ(t.at("c").numel(), 0);
  std::remove(path.c_str());
}

TEST(Safetensors, DamagedFiles) {
  expect_input_error("", "too short");
  expect_input_error(std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "exceeds the file size");
  expect_input_error(header_file("{not json"), "not valid JSON");
  expect_input_error(header_file("[1,2]"), "not a JSON object");
  expect_input_error(header_file(R"({"x":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}})", 4), "unsupported dtype");
  expect_input_error(header_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4), "needs 8 bytes");
  expect_input_error(header_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 2), "outside");
  expect_input_error(header_file(R"({"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "shape");
  expect_input_error(header_file(R"({"x":{"dtype":"F32","shape":[1000000000000,1000000000000],"data_offsets":[0,4]}})", 4),
                     "does not fit");
  expect_input_error(header_file(R"({"x":{"dtype":"F32","shape":[1]}})"), "data_offsets");
  expect_input_error(header_file(R"({"__metadata__":{"a":1}})"), "not a string");
  const std::string golden = [] {
    const std::vector<std::uint8_t> b = read_file(test::golden("tiny_default.safetensors"));
    return std::string(b.begin(), b.end());
  }();
  expect_input_error(golden.substr(0, golden.size() - 100), "outside");
}

TEST(Safetensors, MissingFileNamesIt) {
  try {
    read_safetensors("/nonexistent/x.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/x.safetensors: cannot open"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace vrwkv
