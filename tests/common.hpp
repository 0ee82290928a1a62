// Shared test helpers: golden file paths and element-wise comparison.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "vrwkv/error.hpp"
#include "vrwkv/model.hpp"
#include "vrwkv/safetensors.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv::test {

// Peak-memory bounds are for the plain build: AddressSanitizer's redzones and
// quarantine of freed memory add to every allocation.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

// A file's bytes ("" when it cannot be read).
inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

inline std::string golden(const std::string& name) { return std::string(VRWKV_GOLDEN_DIR) + "/" + name; }
// A model case by name: a golden ("tiny_default", "v6/v6_tiny_default") or, with the prefix "data/", one of
// this repository's (tests/data/…, made by tools/v6_pytorch.py --make-case). Without the extension.
inline std::string case_path(const std::string& name) {
  if (name.starts_with("data/")) return std::string(VRWKV_SOURCE_DIR) + "/tests/" + name;
  return golden(name);
}
// A file named by a case's json, which lives in the case's folder ("v6/v6_tiny_default" → "v6/FILE").
inline std::string golden_beside(const std::string& case_name, const std::string& file) {
  const std::string base = case_path(case_name);
  return base.substr(0, base.rfind('/') + 1) + file;
}

// A golden case's description (CASE.json) and its checkpoint loaded as the
// case was made: its Bi-WKV semantics (sum: paper; kernel, kernel32, kernel16:
// official with S = 32 or 16; uni: the ablation's causal WKV), shift distance,
// ablation variant and out indices.
inline Model load_golden_model(const std::string& name, nlohmann::json* description = nullptr) {
  std::ifstream f(case_path(name) + ".json");
  const nlohmann::json j = nlohmann::json::parse(f);
  ConfigOverrides o;
  if (j.contains("wkv_impl")) {  // VRWKV6 cases have none: their Bi-WKV6 has no semantics to choose
    const std::string impl = j.at("wkv_impl");
    o.wkv = impl == "sum" || impl == "uni" ? WkvSemantics::Paper : WkvSemantics::Official;
    o.wkv_chunks = impl == "kernel16" ? 16 : 32;
  }
  if (j.contains("variant")) {  // the ablation cases (golden/ablation/README.md)
    const auto& v = j.at("variant");
    o.shift = shift_from_string(v.at("shift"));
    o.wkv_direction = wkv_direction_from_string(v.at("wkv_direction"));
    o.wkv_decay = wkv_decay_from_string(v.at("wkv_decay"));
  }
  const auto& bb = j.at("backbone");
  if (bb.contains("shift_pixel")) o.shift_pixel = bb.at("shift_pixel").get<int>();
  if (bb.at("out_indices").is_array()) o.out_indices = bb.at("out_indices").get<std::vector<std::int64_t>>();
  if (description) *description = j;
  if (!j.contains("checkpoint")) return Model::load(case_path(name) + ".pth", o);
  return Model::load(golden_beside(name, j.at("checkpoint")), o);
}

// Tolerances of ../shared/golden/README.md: a float32 re-run of the official
// code lands within a few 1e-6 of the float64 goldens; forward outputs must be
// within 2e-5·max(1, max|golden|), gradients within 5e-5·max(1, max|golden|).
constexpr double kForwardTol = 2e-5;
constexpr double kGradTol = 5e-5;

// Max |a − b| over every element (never a sum of signed differences).
inline double max_abs_diff(const float* a, const float* b, std::int64_t n) {
  double m = 0;
  for (std::int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  return m;
}

inline double max_abs(const float* a, std::int64_t n) {
  double m = 0;
  for (std::int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(static_cast<double>(a[i])));
  return m;
}

// Asserts max|got − want| ≤ rel·max(1, max|want|); reports the numbers.
inline ::testing::AssertionResult close_to(const Tensor& got, const Tensor& want, double rel) {
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << "shape " << shape_str(got.shape()) << " != " << shape_str(want.shape());
  const Tensor g = got.to_f32(), w = want.to_f32();
  const double diff = max_abs_diff(g.f32(), w.f32(), g.numel());
  const double bound = rel * std::max(1.0, max_abs(w.f32(), w.numel()));
  if (diff <= bound) return ::testing::AssertionSuccess() << "max diff " << diff;
  return ::testing::AssertionFailure() << "max |diff| " << diff << " > bound " << bound;
}

// A fresh temporary directory, removed with its contents at the end of the test.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& prefix = "vrwkv_test") {
    std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "_XXXXXX")).string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// The message of the Error(Input) that f throws ("" and a failure when it throws none).
template <class F>
std::string input_error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Error::Kind::Input) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

inline std::vector<float> random_vector(std::size_t n, std::mt19937& rng, float lo = -1, float hi = 1) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

}  // namespace vrwkv::test
