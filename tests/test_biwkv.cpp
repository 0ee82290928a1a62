// Bi-WKV (VRWKV.md 2): golden vectors of both semantics, O(T) scan against the
// O(T²) float64 definition, and long sequences against float64.
#include "ops/biwkv.hpp"

#include "common.hpp"

namespace vrwkv {
namespace {

using ops::Wkv;

// Checks every T{T}.<form>y of a golden file; form is "" (paper) or
// "kernel." in biwkv.safetensors and "paper.", "kernel16.", "kernel32." in
// biwkv_kernel16.safetensors.
int check_golden(const std::string& file, const std::string& form, Wkv wkv) {
  const TensorMap g = read_safetensors(test::golden(file));
  int checked = 0;
  for (const auto& [name, k] : g) {
    if (name[0] != 'T' || name.size() < 3 || name.substr(name.size() - 2) != ".k") continue;
    const std::string T_prefix = name.substr(0, name.size() - 2);  // "T196"
    const std::string key = T_prefix + "." + form + "y";
    if (!g.count(key)) continue;
    const std::int64_t B = k.dim(0), T = k.dim(1), C = k.dim(2);
    const float *w = g.at(T_prefix + ".w").f32(), *u = g.at(T_prefix + ".u").f32(), *v = g.at(T_prefix + ".v").f32();
    Tensor y(DType::F32, k.shape()), yr(DType::F32, k.shape());
    ops::biwkv(w, u, k.f32(), v, y.f32(), B, T, C, wkv);
    ops::biwkv_ref(w, u, k.f32(), v, yr.f32(), B, T, C, wkv);
    EXPECT_TRUE(test::close_to(y, g.at(key), test::kForwardTol)) << file << " " << key;
    EXPECT_TRUE(test::close_to(yr, g.at(key), test::kForwardTol)) << file << " " << key << " (reference)";
    ++checked;
  }
  return checked;
}

TEST(BiWkvGolden, Paper) {
  EXPECT_EQ(check_golden("biwkv.safetensors", "", {WkvSemantics::Paper, 32}), 5);
  EXPECT_EQ(check_golden("biwkv_kernel16.safetensors", "paper.", {WkvSemantics::Paper, 32}), 1);
}
TEST(BiWkvGolden, OfficialS32) {
  EXPECT_EQ(check_golden("biwkv.safetensors", "kernel.", {WkvSemantics::Official, 32}), 5);
  EXPECT_EQ(check_golden("biwkv_kernel16.safetensors", "kernel32.", {WkvSemantics::Official, 32}), 1);
}
TEST(BiWkvGolden, OfficialS16) {
  EXPECT_EQ(check_golden("biwkv_kernel16.safetensors", "kernel16.", {WkvSemantics::Official, 16}), 6);
}

// The O(T) scan against the O(T²) float64 definition on awkward shapes: T = 1,
// T not a multiple of the chunk count or the SIMD width, C not a power of two,
// decays of both signs.
TEST(BiWkv, ScanMatchesDefinition) {
  std::mt19937 rng(7);
  const std::int64_t shapes[][3] = {{1, 1, 3}, {2, 2, 5}, {1, 33, 13}, {3, 50, 8}, {2, 100, 17}, {1, 197, 9}};
  for (const auto& s : shapes) {
    const std::int64_t B = s[0], T = s[1], C = s[2];
    for (WkvSemantics sem : {WkvSemantics::Paper, WkvSemantics::Official})
      for (int chunks : {1, 16, 32}) {
        std::vector<float> w = test::random_vector(C, rng, -8, 8), u = test::random_vector(C, rng, -3, 3);
        for (auto& x : w) x /= T;
        for (auto& x : u) x /= T;
        const auto k = test::random_vector(B * T * C, rng, -4, 4), v = test::random_vector(B * T * C, rng, -2, 2);
        std::vector<float> y(B * T * C), yr(B * T * C);
        ops::biwkv(w.data(), u.data(), k.data(), v.data(), y.data(), B, T, C, {sem, chunks});
        ops::biwkv_ref(w.data(), u.data(), k.data(), v.data(), yr.data(), B, T, C, {sem, chunks});
        // Both accumulate in float64 and round once to float32: half an ulp
        // each, so 1e-6 relative to max(1, |y|) is generous yet tight.
        const double bound = 1e-6 * std::max(1.0, test::max_abs(yr.data(), yr.size()));
        EXPECT_LE(test::max_abs_diff(y.data(), yr.data(), y.size()), bound)
            << "B=" << B << " T=" << T << " C=" << C << " " << to_string(sem) << " S=" << chunks;
      }
  }
}

// T = 16384 (a 2048² image) and beyond: finite and within float32 rounding of
// the float64 definition, with large keys and strong growth or decay.
TEST(BiWkv, LongSequencesStayAccurate) {
  std::mt19937 rng(11);
  for (std::int64_t T : {16384, 40000}) {
    const std::int64_t C = 9;
    std::vector<float> w = test::random_vector(C, rng, -10, 10), u = test::random_vector(C, rng, -5, 5);
    for (auto& x : w) x /= T;
    for (auto& x : u) x /= T;
    const auto k = test::random_vector(T * C, rng, -40, 40), v = test::random_vector(T * C, rng, -3, 3);
    for (WkvSemantics sem : {WkvSemantics::Paper, WkvSemantics::Official}) {
      std::vector<float> y(T * C);
      ops::biwkv(w.data(), u.data(), k.data(), v.data(), y.data(), 1, T, C, {sem, 32});
      // The O(T²) definition on three channels and two windows of tokens
      // (start and end, where the one-sided sums are longest).
      for (std::int64_t c : {0, 4, 8}) {
        std::vector<float> kc(T), vc(T), yc(T);
        for (std::int64_t t = 0; t < T; ++t) kc[t] = k[t * C + c], vc[t] = v[t * C + c];
        double diff = 0;
        for (std::int64_t t0 : {std::int64_t{0}, T - 64}) {
          ops::biwkv_ref(&w[c], &u[c], kc.data(), vc.data(), yc.data(), 1, T, 1, {sem, 32}, t0, t0 + 64);
          for (std::int64_t t = t0; t < t0 + 64; ++t) {
            ASSERT_TRUE(std::isfinite(y[t * C + c]));
            diff = std::max(diff, std::abs(static_cast<double>(y[t * C + c]) - yc[t]));
          }
        }
        // |y| is of the order of max|v| = 3 (a weighted mean of v; the official semantics can
        // overshoot slightly); float32 rounding of a float64 result is ~2e-7 there.
        EXPECT_LE(diff, 1e-6) << "T=" << T << " c=" << c << " " << to_string(sem);
      }
    }
  }
}

}  // namespace
}  // namespace vrwkv
