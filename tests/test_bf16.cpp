// bf16 linear layers (--dtype bf16) against float32 on the golden inputs.
#include <fstream>
#include <nlohmann/json.hpp>

#include "common.hpp"
#include "vrwkv/model.hpp"

namespace vrwkv {
namespace {

// bf16 keeps 8 significant bits: each GEMM input is rounded by up to 2^-8
// (0.4%) relative. Over 12 blocks the logits move by about 0.3% of their
// largest magnitude (measured: 6.4e-3 of 1.86 on VRWKV-T); 2% bounds that with
// room, and still fails if bf16 were applied wrongly (a transposed or
// unconverted weight changes the logits by O(100%)).
constexpr double kBf16Tol = 2e-2;

TEST(Bf16, CloseToFloat32AndSameTopOneWhereTheMarginAllows) {
  if (!__builtin_cpu_supports("avx512bf16")) GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  for (const char* name : {"vrwkv_t_224_b2", "tiny_keynorm", "tiny_postnorm_ls0p5"}) {
    ConfigOverrides o;
    o.wkv = WkvSemantics::Paper;
    const Model m = Model::load(test::golden(std::string(name) + ".pth"), o);
    const TensorMap g = read_safetensors(test::golden(std::string(name) + ".safetensors"));
    ForwardOptions bf16;
    bf16.bf16 = true;
    const Outputs a = m.forward(g.at("input")), b = m.forward(g.at("input"), bf16);
    EXPECT_TRUE(test::close_to(b.logits, a.logits, kBf16Tol)) << name;
    const std::int64_t K = a.logits.dim(1);
    const double bound = kBf16Tol * std::max(1.0, test::max_abs(a.logits.f32(), a.logits.numel()));
    for (std::int64_t i = 0; i < a.logits.dim(0); ++i) {
      const float* la = a.logits.f32() + i * K;
      const float* lb = b.logits.f32() + i * K;
      std::vector<float> sorted(la, la + K);
      std::sort(sorted.rbegin(), sorted.rend());
      if (sorted[0] - sorted[1] <= 2 * bound) continue;  // a tie within bf16's precision
      EXPECT_EQ(std::max_element(la, la + K) - la, std::max_element(lb, lb + K) - lb) << name << " image " << i;
    }
  }
}

}  // namespace
}  // namespace vrwkv
