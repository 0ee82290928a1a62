// The segmentor's ops: each fast version against its reference on awkward
// shapes (odd sizes, strides, groups, BatchNorm folded, ReLU), and the
// references against hand-computed PyTorch semantics (bilinear with
// align_corners=False, adaptive pooling bounds, max pooling with padding,
// grid_sample's zero padding in the deformable attention).
//
// Fast vs reference tolerances: float32 accumulation over K = Ci·k² terms of
// O(1) values against float64: relative 1e-5 of max(1, max|ref|) leaves ~50×
// the expected √K·2⁻²⁴ rounding.
#include "common.hpp"
#include "ops/conv.hpp"
#include "ops/deform_attn.hpp"
#include "ops/maps.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::test {
namespace {

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  return max_abs_diff(a.data(), b.data(), static_cast<std::int64_t>(a.size())) /
         std::max(1.0, max_abs(b.data(), static_cast<std::int64_t>(b.size())));
}

struct ConvCase {
  ops::ConvShape s;
  std::int64_t B, H, W;
  bool bn, relu, bias;
};

TEST(SegOps, Conv2dMatchesReference) {
  const ConvCase cases[] = {
      {{16, 3, 3, 2, 1}, 2, 37, 23, true, true, false},     // the stem: 3 channels, stride 2, odd sizes
      {{24, 16, 3, 1, 1}, 1, 9, 14, true, true, false},     // ConvModule 3×3
      {{19, 32, 1}, 1, 7, 5, false, false, true},           // conv_seg: 1×1 with bias
      {{20, 20, 3, 1, 1, 20}, 1, 11, 6, false, false, true},  // depthwise with bias
      {{8, 12, 3, 2, 1, 4}, 3, 8, 8, true, false, false},   // grouped, stride 2
  };
  std::mt19937 rng(7);
  for (const ConvCase& c : cases) {
    const ops::ConvShape& s = c.s;
    const auto x = random_vector(c.B * c.H * c.W * s.Ci, rng);
    const auto w = random_vector(s.Co * (s.Ci / s.groups) * s.k * s.k, rng);
    const auto b = random_vector(s.Co, rng);
    const auto bn_w = random_vector(s.Co, rng, 0.5f, 1.5f), bn_b = random_vector(s.Co, rng),
               mean = random_vector(s.Co, rng), var = random_vector(s.Co, rng, 0.5f, 2.0f);
    const std::int64_t n = c.B * s.out(c.H) * s.out(c.W);
    std::vector<float> want(n * s.Co), got(n * s.Co), scale(s.Co), shift(s.Co);
    ops::conv2d_ref(x.data(), w.data(), c.bias ? b.data() : nullptr, want.data(), c.B, c.H, c.W, s);
    if (c.bn) ops::batch_norm_ref(want.data(), want.data(), n, s.Co, bn_w.data(), bn_b.data(), mean.data(), var.data(), c.relu);
    else if (c.relu) ops::relu(want.data(), want.size());
    if (c.bn) ops::batch_norm_affine(s.Co, bn_w.data(), bn_b.data(), mean.data(), var.data(), scale.data(), shift.data());
    ops::Conv2d conv(w.data(), c.bias ? b.data() : nullptr, s, c.bn ? scale.data() : nullptr,
                     c.bn ? shift.data() : nullptr, c.relu);
    conv(x.data(), got.data(), c.B, c.H, c.W);
    EXPECT_LE(rel_diff(got, want), 1e-5) << "Co " << s.Co << " Ci " << s.Ci << " k " << s.k;
    conv(x.data(), got.data(), c.B, c.H, c.W);  // the plan, made once, runs again
    EXPECT_LE(rel_diff(got, want), 1e-5);
  }
}

// The UPerHead's convolutions (3×3, 512 channels) as Winograd F(4×4, 3×3):
// its transforms add rounding (each output is a combination of 36 transformed
// products with coefficients up to ~10), measured here against float64 at
// ReLU-like inputs and kaiming-scaled weights; bound 5e-6·max|ref| (10× below
// the segmentor's 5e-5). The direct sum over 4608 terms lands at ~3e-6 here,
// Winograd at ~8e-7.
// Winograd against float64, on the widest head convolution (512) and the
// narrowest that takes it (kWinogradMinChannels: the spatial prior module's
// 64), and on unequal widths; the direct float32 sum beside it (bound 5e-6 of
// max|ref|: measured ~1e-6 for both).
TEST(SegOps, WinogradConvolutionIsAccurate) {
  if (!ops::winograd_supported()) GTEST_SKIP() << "oneDNN has no Winograd convolution on this CPU (AVX-512 only)";
  std::mt19937 rng(12);
  for (const auto& [Co, Ci] : {std::pair<std::int64_t, std::int64_t>{512, 512}, {64, 64}, {256, 192}}) {
    const ops::ConvShape s{Co, Ci, 3, 1, 1};
    const std::int64_t H = 13, W = 11;
    auto x = random_vector(H * W * Ci, rng, 0, 2);
    const float bound = 0.3f / std::sqrt(static_cast<float>(Ci * 9));
    const auto w = random_vector(Co * Ci * 9, rng, -bound, bound);
    const auto b = random_vector(Co, rng);
    std::vector<float> want(H * W * Co), wino(want.size()), direct(want.size());
    ops::conv2d_ref(x.data(), w.data(), b.data(), want.data(), 1, H, W, s);
    ops::Conv2d conv(w.data(), b.data(), s);
    ASSERT_TRUE(conv.winograd_applies()) << Ci << "->" << Co;
    conv(x.data(), wino.data(), 1, H, W);
    conv.allow_winograd(false);
    conv(x.data(), direct.data(), 1, H, W);
    const double scale = max_abs(want.data(), want.size());
    const double e_wino = max_abs_diff(wino.data(), want.data(), want.size()) / scale;
    const double e_direct = max_abs_diff(direct.data(), want.data(), want.size()) / scale;
    EXPECT_LE(e_wino, 5e-6) << Ci << "->" << Co;
    EXPECT_LE(e_direct, 5e-6) << Ci << "->" << Co;
    std::printf("%lld->%lld: Winograd %.2e, direct %.2e of max|ref| %.2f\n", static_cast<long long>(Ci),
                static_cast<long long>(Co), e_wino, e_direct, scale);
  }
  // Below the threshold the shape keeps the direct convolution.
  const auto w = random_vector(32 * 32 * 9, rng);
  EXPECT_FALSE(ops::Conv2d(w.data(), nullptr, ops::ConvShape{32, 32, 3, 1, 1}).winograd_applies());
}

// bf16 inputs and weights (8 significant bits) with float32 sums: relative 2e-2.
TEST(SegOps, Conv2dInBf16IsCloseToFloat32) {
  std::mt19937 rng(8);
  const ops::ConvShape s{32, 64, 3, 1, 1};
  const auto x = random_vector(1 * 10 * 12 * 64, rng), w = random_vector(32 * 64 * 9, rng);
  std::vector<float> f32(10 * 12 * 32), bf(10 * 12 * 32);
  ops::Conv2d conv(w.data(), nullptr, s);
  conv(x.data(), f32.data(), 1, 10, 12);
  try {
    conv(x.data(), bf.data(), 1, 10, 12, DType::BF16);
  } catch (const Error& e) {
    GTEST_SKIP() << e.what();
  }
  EXPECT_LE(rel_diff(bf, f32), 2e-2);
  EXPECT_GT(rel_diff(bf, f32), 0);  // it did round
}

TEST(SegOps, ConvTransposeMatchesReference) {
  std::mt19937 rng(9);
  const ops::ConvShape s{12, 20, 2, 2};
  const std::int64_t B = 2, H = 5, W = 3;
  const auto x = random_vector(B * H * W * 20, rng), w = random_vector(20 * 12 * 4, rng), b = random_vector(12, rng);
  std::vector<float> want(B * 2 * H * 2 * W * 12), got(want.size());
  ops::conv_transpose2d_ref(x.data(), w.data(), b.data(), want.data(), B, H, W, s);
  ops::ConvTranspose2d(w.data(), b.data(), s)(x.data(), got.data(), B, H, W);
  EXPECT_LE(rel_diff(got, want), 1e-5);
  // Output pixel (1, 0) of image 0 is input pixel (0, 0) through kernel tap (1, 0).
  double acc = b[3];
  for (int ci = 0; ci < 20; ++ci) acc += static_cast<double>(x[ci]) * w[((ci * 12 + 3) * 2 + 1) * 2 + 0];
  EXPECT_NEAR(want[(1 * 2 * W + 0) * 12 + 3], acc, 1e-5);
}

TEST(SegOps, BilinearResizeAsPyTorch) {
  // [0, 1] to 4 pixels (align_corners=False): sources −0.25→0, 0.25, 0.75, 1.25→clamped: 0, .25, .75, 1.
  const std::vector<float> x = {0, 1};
  std::vector<float> y(4);
  ops::resize_bilinear(x.data(), 1, 1, 2, 1, y.data(), 1, 4, 1.0, ops::bilinear_scale(2, 4));
  EXPECT_EQ(y, (std::vector<float>{0, 0.25f, 0.75f, 1}));
  // scale_factor 0.5 (scale 2): a 2×2 mean on even sizes.
  const std::vector<float> m = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
  std::vector<float> h(4);
  ops::resize_bilinear(m.data(), 1, 4, 4, 1, h.data(), 2, 2, 2.0, 2.0);
  EXPECT_EQ(h, (std::vector<float>{3.5f, 5.5f, 11.5f, 13.5f}));
  // The NCHW version agrees with the NHWC one.
  std::vector<float> a(3 * 5 * 7), b(a.size()), c(a.size());
  std::mt19937 rng(3);
  const auto src = random_vector(3 * 4 * 3, rng);  // C=3, 4×3
  std::vector<float> nhwc(src.size());
  for (int ch = 0; ch < 3; ++ch)
    for (int p = 0; p < 12; ++p) nhwc[p * 3 + ch] = src[ch * 12 + p];
  ops::resize_bilinear_nchw(src.data(), 1, 3, 4, 3, a.data(), 5, 7);
  ops::resize_bilinear(nhwc.data(), 1, 4, 3, 3, b.data(), 5, 7, ops::bilinear_scale(4, 5), ops::bilinear_scale(3, 7));
  for (int ch = 0; ch < 3; ++ch)
    for (int p = 0; p < 35; ++p) c[ch * 35 + p] = b[p * 3 + ch];
  EXPECT_LE(rel_diff(a, c), 1e-7);
  // Down in one axis and up in the other, two images of two channels: 9×4 → 4×10.
  const auto src2 = random_vector(2 * 2 * 9 * 4, rng);
  std::vector<float> nhwc2(src2.size()), a2(2 * 2 * 4 * 10), b2(a2.size()), c2(a2.size());
  for (int i = 0; i < 2; ++i)
    for (int ch = 0; ch < 2; ++ch)
      for (int p = 0; p < 36; ++p) nhwc2[(i * 36 + p) * 2 + ch] = src2[(i * 2 + ch) * 36 + p];
  ops::resize_bilinear_nchw(src2.data(), 2, 2, 9, 4, a2.data(), 4, 10);
  ops::resize_bilinear(nhwc2.data(), 2, 9, 4, 2, b2.data(), 4, 10, ops::bilinear_scale(9, 4), ops::bilinear_scale(4, 10));
  for (int i = 0; i < 2; ++i)
    for (int ch = 0; ch < 2; ++ch)
      for (int p = 0; p < 40; ++p) c2[(i * 2 + ch) * 40 + p] = b2[(i * 40 + p) * 2 + ch];
  EXPECT_LE(rel_diff(a2, c2), 1e-7);  // both in float64, rounded once: equal but for contraction into FMAs
}

TEST(SegOps, PoolingBounds) {
  // Adaptive average pooling of 5 to 3 cells: [0,2), [1,4), [3,5) (rows 1..5 in every row).
  std::vector<float> sq(25), o(9);
  for (int i = 0; i < 25; ++i) sq[i] = static_cast<float>(i % 5 + 1);  // each row 1..5
  ops::adaptive_avg_pool(sq.data(), o.data(), 1, 5, 5, 1, 3);
  EXPECT_FLOAT_EQ(o[0], 1.5f);
  EXPECT_FLOAT_EQ(o[1], 3.0f);
  EXPECT_FLOAT_EQ(o[2], 4.5f);
  // Max pooling 3×3 stride 2 pad 1 on 4×4: padding never wins, even over negatives.
  std::vector<float> neg(16), mp(4);
  for (int i = 0; i < 16; ++i) neg[i] = -static_cast<float>(16 - i);
  ops::max_pool(neg.data(), mp.data(), 1, 4, 4, 1, 3, 2, 1);
  EXPECT_EQ(mp, (std::vector<float>{-11, -9, -3, -1}));
}

TEST(SegOps, DeformAttnMatchesReference) {
  std::mt19937 rng(11);
  ops::DeformShape s{2, 13, 0, 3, 8, 4, {{6, 5, 0}, {3, 3, 30}, {2, 1, 39}}, 1};
  s.len_in = 41;
  const std::int64_t L = 3;
  for (std::int64_t ref_levels : {std::int64_t{1}, L}) {
    s.ref_levels = ref_levels;
    const auto value = random_vector(s.N * s.len_in * s.heads * s.head_dim, rng);
    const auto offsets = random_vector(s.N * s.Lq * s.heads * L * s.points * 2, rng, -4, 4);  // many points outside
    const auto logits = random_vector(s.N * s.Lq * s.heads * L * s.points, rng, -3, 3);
    const auto ref = random_vector(s.Lq * ref_levels * 2, rng, 0, 1);
    std::vector<float> want(s.N * s.Lq * s.heads * s.head_dim), got(want.size());
    ops::deform_attn_ref(value.data(), offsets.data(), logits.data(), ref.data(), want.data(), s);
    ops::deform_attn(value.data(), offsets.data(), logits.data(), ref.data(), got.data(), s);
    EXPECT_LE(rel_diff(got, want), 1e-5);
  }
}

// One query, one head, one level, one point: the sampled value is the
// bilinear interpolation with zero padding, with weight 1 (softmax of one).
TEST(SegOps, DeformAttnSamplesLikeGridSample) {
  const std::vector<float> value = {1, 2, 3, 4};  // a 2×2 map, Dh = 1
  const ops::DeformShape s{1, 1, 4, 1, 1, 1, {{2, 2, 0}}, 1};
  const std::vector<float> logits = {0.3f};
  std::vector<float> out(1);
  // loc (0.5, 0.5) is the pixel (0.5, 0.5): the mean of all four.
  const std::vector<float> centre = {0.5f, 0.5f}, none = {0, 0};
  ops::deform_attn_ref(value.data(), none.data(), logits.data(), centre.data(), out.data(), s);
  EXPECT_FLOAT_EQ(out[0], 2.5f);
  // loc (0, 0) is the pixel (−0.5, −0.5): only corner (0, 0) is inside, weight 1/4.
  const std::vector<float> corner = {0, 0};
  ops::deform_attn_ref(value.data(), none.data(), logits.data(), corner.data(), out.data(), s);
  EXPECT_FLOAT_EQ(out[0], 0.25f);
  // An offset of one pixel in x moves (0.25, 0.25) (pixel (0, 0)) to pixel (1, 0): the value 2.
  const std::vector<float> quarter = {0.25f, 0.25f}, one_x = {1, 0};
  ops::deform_attn_ref(value.data(), one_x.data(), logits.data(), quarter.data(), out.data(), s);
  EXPECT_FLOAT_EQ(out[0], 2.0f);
  // Far outside: nothing.
  const std::vector<float> far = {5, 5};
  ops::deform_attn_ref(value.data(), far.data(), logits.data(), quarter.data(), out.data(), s);
  EXPECT_EQ(out[0], 0.0f);
}

}  // namespace
}  // namespace vrwkv::test
