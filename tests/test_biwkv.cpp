// Bi-WKV (VRWKV.md 2) and its uni direction (ABLATION.md B.3): golden vectors
// of both semantics and of uni, O(T) scan against the O(T²) float64
// definition, and long sequences against float64.
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
// The uni direction (the ablation's causal WKV, ABLATION.md B.3): the golden
// operator case, T = 1 … 196, fast and reference.
TEST(BiWkvGolden, Uni) {
  const TensorMap g = read_safetensors(test::golden("ablation/ablation_uniwkv_op.safetensors"));
  int checked = 0;
  for (const std::int64_t T : {1, 2, 7, 50, 196}) {
    const std::string p = "T" + std::to_string(T) + ".";
    const Tensor &k = g.at(p + "k"), &v = g.at(p + "v");
    const std::int64_t B = k.dim(0), C = k.dim(2);
    Tensor y(DType::F32, k.shape()), yr(DType::F32, k.shape());
    const Wkv wkv{WkvSemantics::Paper, 32, WkvDirection::Uni};
    ops::biwkv(g.at(p + "w").f32(), g.at(p + "u").f32(), k.f32(), v.f32(), y.f32(), B, T, C, wkv);
    ops::biwkv_ref(g.at(p + "w").f32(), g.at(p + "u").f32(), k.f32(), v.f32(), yr.f32(), B, T, C, wkv);
    EXPECT_TRUE(test::close_to(y, g.at(p + "y"), test::kForwardTol)) << p;
    EXPECT_TRUE(test::close_to(yr, g.at(p + "y"), test::kForwardTol)) << p << " (reference)";
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

// The O(T) scan against the O(T²) float64 definition on awkward shapes: T = 1,
// T not a multiple of the chunk count or the SIMD width, C not a power of two,
// decays of both signs; the uni direction also with RWKV-4's operands
// (w = e^{decay} up to e^3, u unscaled).
TEST(BiWkv, ScanMatchesDefinition) {
  std::mt19937 rng(7);
  const std::int64_t shapes[][3] = {{1, 1, 3}, {2, 2, 5}, {1, 33, 13}, {3, 50, 8}, {2, 100, 17}, {1, 197, 9}};
  for (const auto& s : shapes) {
    const std::int64_t B = s[0], T = s[1], C = s[2];
    for (const Wkv wkv : {Wkv{WkvSemantics::Paper, 32}, Wkv{WkvSemantics::Official, 1},
                          Wkv{WkvSemantics::Official, 16}, Wkv{WkvSemantics::Official, 32},
                          Wkv{WkvSemantics::Paper, 32, WkvDirection::Uni}})
      for (const bool rwkv4 : {false, true}) {
        if (rwkv4 && wkv.direction != WkvDirection::Uni) continue;
        std::vector<float> w = test::random_vector(C, rng, -8, 8), u = test::random_vector(C, rng, -3, 3);
        for (auto& x : w) x = rwkv4 ? std::exp(x / 2.7f) : x / T;
        for (auto& x : u) x = rwkv4 ? x : x / T;
        const auto k = test::random_vector(B * T * C, rng, -4, 4), v = test::random_vector(B * T * C, rng, -2, 2);
        std::vector<float> y(B * T * C), yr(B * T * C);
        ops::biwkv(w.data(), u.data(), k.data(), v.data(), y.data(), B, T, C, wkv);
        ops::biwkv_ref(w.data(), u.data(), k.data(), v.data(), yr.data(), B, T, C, wkv);
        // Both accumulate in float64 and round once to float32: half an ulp
        // each, so 1e-6 relative to max(1, |y|) is generous yet tight.
        const double bound = 1e-6 * std::max(1.0, test::max_abs(yr.data(), yr.size()));
        EXPECT_LE(test::max_abs_diff(y.data(), yr.data(), y.size()), bound)
            << "B=" << B << " T=" << T << " C=" << C << " " << to_string(wkv.semantics) << " S=" << wkv.chunks
            << " " << to_string(wkv.direction) << (rwkv4 ? " rwkv4" : "");
      }
  }
}

// The largest |y − definition| of channel c of y ([T,C], one image) over
// windows of 64 tokens starting at `starts`; false in `finite` on a non-finite y.
double window_error(const std::vector<float>& w, const std::vector<float>& u, const std::vector<float>& k,
                    const std::vector<float>& v, const std::vector<float>& y, std::int64_t T, std::int64_t C,
                    std::int64_t c, Wkv wkv, std::initializer_list<std::int64_t> starts, bool& finite) {
  std::vector<float> kc(T), vc(T), yc(T);
  for (std::int64_t t = 0; t < T; ++t) kc[t] = k[t * C + c], vc[t] = v[t * C + c];
  double diff = 0;
  for (std::int64_t t0 : starts) {
    ops::biwkv_ref(&w[c], &u[c], kc.data(), vc.data(), yc.data(), 1, T, 1, wkv, t0, t0 + 64);
    for (std::int64_t t = t0; t < t0 + 64; ++t) {
      finite = finite && std::isfinite(y[t * C + c]);
      diff = std::max(diff, std::abs(static_cast<double>(y[t * C + c]) - yc[t]));
    }
  }
  return diff;
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
    for (const Wkv wkv : {Wkv{WkvSemantics::Paper, 32}, Wkv{WkvSemantics::Official, 32},
                          Wkv{WkvSemantics::Paper, 32, WkvDirection::Uni}}) {
      std::vector<float> y(T * C);
      ops::biwkv(w.data(), u.data(), k.data(), v.data(), y.data(), 1, T, C, wkv);
      // The O(T²) definition on three channels and two windows of tokens
      // (start and end, where the one-sided sums are longest).
      for (std::int64_t c : {0, 4, 8}) {
        bool finite = true;
        const double diff = window_error(w, u, k, v, y, T, C, c, wkv, {0, T - 64}, finite);
        EXPECT_TRUE(finite) << "T=" << T << " c=" << c;
        // |y| is of the order of max|v| = 3 (a weighted mean of v; the official semantics can
        // overshoot slightly); float32 rounding of a float64 result is ~2e-7 there.
        EXPECT_LE(diff, 1e-6) << "T=" << T << " c=" << c << " " << to_string(wkv.semantics) << " "
                              << to_string(wkv.direction);
      }
    }
  }
}

// The uni scan with RWKV-4's operands at T = 16384: w = e^{decay} is not
// bounded by 1/T, so its sums stay finite only through the running maximum.
// Keys of ±40 with decays from e^{-6} to e^{4} per token.
TEST(BiWkv, UniLongSequencesWithRwkv4Decay) {
  std::mt19937 rng(12);
  const std::int64_t T = 16384, C = 9;
  std::vector<float> w = test::random_vector(C, rng, -6, 4), u = test::random_vector(C, rng, -5, 5);
  for (auto& x : w) x = std::exp(x);
  const auto k = test::random_vector(T * C, rng, -40, 40), v = test::random_vector(T * C, rng, -3, 3);
  const Wkv wkv{WkvSemantics::Paper, 32, WkvDirection::Uni};
  std::vector<float> y(T * C);
  ops::biwkv(w.data(), u.data(), k.data(), v.data(), y.data(), 1, T, C, wkv);
  for (std::int64_t c : {0, 4, 8}) {
    bool finite = true;
    const double diff = window_error(w, u, k, v, y, T, C, c, wkv, {0, T / 2, T - 64}, finite);
    EXPECT_TRUE(finite) << "c=" << c;
    EXPECT_LE(diff, 1e-6) << "c=" << c << " w=" << w[c];  // |y| ≤ 3: float32 rounding is ~2e-7
  }
}

}  // namespace
}  // namespace vrwkv
