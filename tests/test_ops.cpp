// Every fast op against its plain reference on random, awkward shapes:
// T not a multiple of the SIMD width, non-square grids, B > 1, C not a power of
// two, T = 1 (ENGINEERING.md "Kernels").
#include <cmath>
#include <limits>

#include "common.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/packed_linear.hpp"
#include "ops/patch_embed.hpp"
#include "ops/pos_embed.hpp"
#include "ops/qshift.hpp"

namespace vrwkv {
namespace {

// Fast float32 results against float64-accumulated references: a K-term dot
// product in float32 carries a relative error of about sqrt(K)·6e-8 of the
// sum of |terms|; 2e-6 relative to max(1, max|ref|) covers K ≤ 4096.
constexpr double kOpTol = 2e-6;

void expect_close(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  const double bound = kOpTol * std::max(1.0, test::max_abs(want.data(), want.size()));
  EXPECT_LE(test::max_abs_diff(got.data(), want.data(), got.size()), bound) << what;
}

TEST(Ops, LinearMatchesReference) {
  std::mt19937 rng(1);
  const std::int64_t shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {196, 192, 192}, {33, 100, 768}, {2, 1000, 192}};
  for (const auto& s : shapes) {
    const std::int64_t M = s[0], N = s[1], K = s[2];
    const auto x = test::random_vector(M * K, rng), W = test::random_vector(N * K, rng), b = test::random_vector(N, rng);
    std::vector<float> y(M * N), yr(M * N);
    for (const float* bias : {static_cast<const float*>(nullptr), b.data()}) {
      ops::linear(x.data(), W.data(), bias, y.data(), M, N, K);
      ops::linear_ref(x.data(), W.data(), bias, yr.data(), M, N, K);
      expect_close(y, yr, "linear " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K));
    }
  }
}

TEST(Ops, LayerNormMatchesReference) {
  std::mt19937 rng(2);
  for (std::int64_t C : {1, 3, 64, 193, 4096})
    for (std::int64_t N : {1, 17}) {
      auto x = test::random_vector(N * C, rng, -3, 5);
      const auto w = test::random_vector(C, rng), b = test::random_vector(C, rng);
      std::vector<float> y(N * C), yr(N * C);
      ops::layernorm(x.data(), w.data(), b.data(), y.data(), N, C);
      ops::layernorm_ref(x.data(), w.data(), b.data(), yr.data(), N, C);
      expect_close(y, yr, "layernorm C=" + std::to_string(C));
      ops::layernorm(x.data(), w.data(), b.data(), x.data(), N, C);  // in place
      expect_close(x, yr, "layernorm in place C=" + std::to_string(C));
    }
}

TEST(Ops, QShiftMixMatchesReference) {
  std::mt19937 rng(3);
  struct Shape {
    std::int64_t B, H, W, C;
    int s;
    double gamma;
  };
  const Shape shapes[] = {{1, 1, 1, 4, 1, 0.25}, {2, 3, 5, 13, 1, 0.25}, {1, 7, 4, 64, 2, 0.25},
                          {3, 14, 14, 20, 1, 0.125}, {1, 2, 9, 7, 3, 0.25}, {1, 5, 5, 32, 1, 0.1}};
  for (const Shape& s : shapes) {
    const std::int64_t n = s.B * s.H * s.W * s.C;
    const auto x = test::random_vector(n, rng);
    const auto m0 = test::random_vector(s.C, rng, 0, 1), m1 = test::random_vector(s.C, rng, 0, 1),
               m2 = test::random_vector(s.C, rng, 0, 1);
    const float* mu[3] = {m0.data(), m1.data(), m2.data()};
    std::vector<float> o[3], r[3];
    float *op[3], *rp[3];
    for (int i = 0; i < 3; ++i) o[i].resize(n), r[i].resize(n), op[i] = o[i].data(), rp[i] = r[i].data();
    ops::q_shift_mix(x.data(), s.B, {s.H, s.W}, s.C, s.s, s.gamma, 3, mu, op);
    ops::q_shift_mix_ref(x.data(), s.B, {s.H, s.W}, s.C, s.s, s.gamma, 3, mu, rp);
    for (int i = 0; i < 3; ++i) expect_close(o[i], r[i], "q_shift_mix");
    // By rows, in two parts, written in float32 and in bf16: the same values,
    // the bf16 ones rounded once.
    const std::int64_t rows = s.B * s.H * s.W, mid = rows / 3;
    std::vector<float> f[3];
    std::vector<ops::Bf16> h[3];
    float* fp[3];
    ops::Bf16* hp[3];
    for (int i = 0; i < 3; ++i) f[i].resize(n), h[i].resize(n), fp[i] = f[i].data(), hp[i] = h[i].data();
    for (const auto& [r0, r1] : {std::pair{std::int64_t{0}, mid}, std::pair{mid, rows}}) {
      ops::q_shift_mix_rows(x.data(), {s.H, s.W}, s.C, s.s, s.gamma, 3, mu, fp, r0, r1);
      ops::q_shift_mix_rows(x.data(), {s.H, s.W}, s.C, s.s, s.gamma, 3, mu, hp, r0, r1);
    }
    for (int i = 0; i < 3; ++i)
      for (std::int64_t j = 0; j < n; ++j) {
        ASSERT_EQ(f[i][j], o[i][j]) << "mix by rows " << j;
        ASSERT_EQ(h[i][j].bits, ops::to_bf16(o[i][j]).bits) << "bf16 mix " << j;
      }
  }
}

// Round to nearest even on the 16 dropped bits; NaN stays NaN, infinities stay.
TEST(Ops, Bf16Rounding) {
  const auto bits = [](float f) { return ops::to_bf16(f).bits; };
  EXPECT_EQ(bits(1.0f), 0x3f80);
  EXPECT_EQ(bits(-2.5f), 0xc020);
  EXPECT_EQ(bits(1.0f + 0x1p-8f), 0x3f80);            // a tie: rounds to the even 0x3f80
  EXPECT_EQ(bits(1.0f + 0x1p-7f + 0x1p-8f), 0x3f82);  // a tie: rounds to the even 0x3f82
  EXPECT_EQ(bits(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // above the tie: up
  EXPECT_EQ(bits(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_TRUE(std::isnan(ops::to_float(ops::to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(ops::to_float(ops::to_bf16(3.140625f)), 3.140625f);  // representable: exact
}

// Packed linears (with and without bias) with every epilogue against the
// reference linear followed by the same element-wise steps in float64.
TEST(Ops, PackedLinearEpiloguesMatchReference) {
  std::mt19937 rng(9);
  const std::int64_t shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {196, 192, 192}, {33, 100, 768}, {50, 768, 192}};
  for (const auto& s : shapes)
    for (DType dtype : {DType::F32, DType::BF16})
      for (bool with_bias : {false, true}) {
        if (dtype == DType::BF16 && !__builtin_cpu_supports("avx512bf16")) continue;
        const std::int64_t M = s[0], N = s[1], K = s[2];
        const auto x = test::random_vector(M * K, rng), W = test::random_vector(N * K, rng),
                   scale = test::random_vector(N, rng), mul = test::random_vector(M * N, rng),
                   old = test::random_vector(M * N, rng), bias = test::random_vector(N, rng);
        // bf16 weights: the reference sees x and W rounded to bf16, so only the
        // float32 accumulation order differs. The row scale applies to W and bias.
        const auto rounded = [&](std::vector<float> v) {
          if (dtype == DType::BF16)
            for (float& f : v) f = ops::to_float(ops::to_bf16(f));
          return v;
        };
        std::vector<float> Ws(N * K), bs(N);
        for (std::int64_t n = 0; n < N; ++n) {
          for (std::int64_t k = 0; k < K; ++k) Ws[n * K + k] = W[n * K + k] * scale[n];
          bs[n] = bias[n] * scale[n];
        }
        std::vector<float> z(M * N);
        ops::linear_ref(rounded(x).data(), rounded(Ws).data(), with_bias ? bs.data() : nullptr, z.data(), M, N, K);
        ops::PackedLinear linear(W.data(), N, K, dtype, scale.data(), with_bias ? bias.data() : nullptr);
        const std::string what = std::string(dtype_name(dtype)) + " " + std::to_string(M) + "x" + std::to_string(N) +
                                 "x" + std::to_string(K) + (with_bias ? " bias" : "");
        for (ops::Activation act : {ops::Activation::None, ops::Activation::Sigmoid, ops::Activation::ReluSquare,
                                    ops::Activation::Gelu})
          for (bool with_mul : {false, true})
            for (bool accumulate : {false, true}) {
              std::vector<float> want(M * N), got = old;
              for (std::int64_t i = 0; i < M * N; ++i) {
                double v = z[i];
                if (act == ops::Activation::Sigmoid) v = 1 / (1 + std::exp(-v));
                if (act == ops::Activation::ReluSquare) v = std::max(v, 0.0) * std::max(v, 0.0);
                if (act == ops::Activation::Gelu) v = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
                if (with_mul) v *= mul[i];
                want[i] = static_cast<float>(accumulate ? old[i] + v : v);
              }
              const ops::Epilogue epilogue{act, with_mul ? mul.data() : nullptr, accumulate};
              linear({const_cast<float*>(x.data()), DType::F32}, {got.data(), DType::F32}, M, epilogue);
              // Never oneDNN's reference matmul (~100x slower): where a fused chain would take it, the
              // epilogue's tail follows the GEMM instead (on AVX2, a gate multiply with a residual sum).
              if (dtype == DType::F32) {
                EXPECT_FALSE(linear.implementation(M, DType::F32, DType::F32, epilogue).starts_with("ref"))
                    << what << " act " << int(act) << (with_mul ? " mul" : "") << (accumulate ? " accumulate" : "")
                    << ": " << linear.implementation(M, DType::F32, DType::F32, epilogue);
              }
              // The GEMM's kOpTol error in z, carried through the epilogue by its
              // largest slope (σ: 1/4, relu²: 2·max|z|, GELU: 1.13, ·mul: max|mul|),
              // plus kOpTol of the result for the epilogue's own float32 steps.
              const double zmax = test::max_abs(z.data(), z.size());
              const double slope = act == ops::Activation::Sigmoid      ? 0.25
                                   : act == ops::Activation::ReluSquare ? 2 * zmax
                                   : act == ops::Activation::Gelu       ? 1.13
                                                                        : 1.0;
              const double bound = kOpTol * std::max(1.0, zmax) * slope *
                                       (with_mul ? test::max_abs(mul.data(), mul.size()) : 1.0) +
                                   kOpTol * std::max(1.0, test::max_abs(want.data(), want.size()));
              EXPECT_LE(test::max_abs_diff(got.data(), want.data(), got.size()), bound)
                  << what << " act " << int(act) << (with_mul ? " mul" : "") << (accumulate ? " accumulate" : "");
            }
        if (dtype != DType::BF16) continue;
        // bf16 in and out: the input taken as is, the output rounded once.
        const auto xr = rounded(x);
        std::vector<ops::Bf16> xb(M * K), yb(M * N);
        for (std::int64_t i = 0; i < M * K; ++i) xb[i] = ops::to_bf16(xr[i]);
        linear({xb.data(), DType::BF16}, {yb.data(), DType::BF16}, M);
        std::vector<float> y(M * N);
        for (std::int64_t i = 0; i < M * N; ++i) y[i] = ops::to_float(yb[i]);
        // One bf16 rounding of the output (8 significant bits: at most 2^-8 of
        // the value) on top of the float32 accumulation's kOpTol.
        const double bound = (0x1p-8 + kOpTol) * std::max(1.0, test::max_abs(z.data(), z.size()));
        EXPECT_LE(test::max_abs_diff(y.data(), z.data(), y.size()), bound) << what << " bf16 output";
      }
}

// One packed linear used from several threads at once (images in groups, one
// group per thread): each thread's results are its own.
TEST(Ops, PackedLinearFromSeveralThreads) {
  std::mt19937 rng(10);
  const std::int64_t M = 64, N = 96, K = 80;
  const auto W = test::random_vector(N * K, rng);
  ops::PackedLinear linear(W.data(), N, K, DType::F32);
  std::vector<std::vector<float>> xs, ys(4, std::vector<float>(M * N)), want(4, std::vector<float>(M * N));
  for (int t = 0; t < 4; ++t) {
    xs.push_back(test::random_vector(M * K, rng));
    ops::linear_ref(xs[t].data(), W.data(), nullptr, want[t].data(), M, N, K);
  }
#pragma omp parallel for num_threads(4) schedule(static, 1)
  for (int t = 0; t < 4; ++t)
    for (int rep = 0; rep < 20; ++rep) linear({xs[t].data(), DType::F32}, {ys[t].data(), DType::F32}, M);
  for (int t = 0; t < 4; ++t) expect_close(ys[t], want[t], "thread " + std::to_string(t));
  linear({nullptr, DType::F32}, {nullptr, DType::F32}, 0);  // no rows: nothing to do (a thread's empty share)
}

// The shift itself, by hand, on a 2×3 grid with C = 5 (q = 1: left, right,
// up, down, copy).
TEST(Ops, QShiftDirections) {
  const std::int64_t H = 2, W = 3, C = 5, T = H * W;
  std::vector<float> x(T * C), xx(T * C);
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t c = 0; c < C; ++c) x[t * C + c] = static_cast<float>(10 * t + c);
  ops::q_shift_ref(x.data(), xx.data(), 1, {H, W}, C, 1, 0.25);
  const auto at = [&](std::int64_t h, std::int64_t w, std::int64_t c) { return xx[(h * W + w) * C + c]; };
  const auto src = [&](std::int64_t h, std::int64_t w, std::int64_t c) { return x[(h * W + w) * C + c]; };
  EXPECT_EQ(at(0, 0, 0), 0.0f);               // left neighbour of column 0: zero
  EXPECT_EQ(at(1, 2, 0), src(1, 1, 0));       // from the left
  EXPECT_EQ(at(0, 1, 1), src(0, 2, 1));       // from the right
  EXPECT_EQ(at(0, 2, 1), 0.0f);
  EXPECT_EQ(at(1, 1, 2), src(0, 1, 2));       // from above
  EXPECT_EQ(at(0, 1, 2), 0.0f);
  EXPECT_EQ(at(0, 2, 3), src(1, 2, 3));       // from below
  EXPECT_EQ(at(1, 2, 3), 0.0f);
  EXPECT_EQ(at(1, 0, 4), src(1, 0, 4));       // remainder copied
}

TEST(Ops, PatchEmbedMatchesReference) {
  std::mt19937 rng(4);
  const std::int64_t shapes[][5] = {{1, 3, 16, 16, 16}, {2, 3, 37, 27, 4}, {1, 1, 5, 9, 3}, {1, 3, 40, 33, 16}};
  for (const auto& s : shapes) {
    const std::int64_t B = s[0], Cin = s[1], H = s[2], W = s[3], p = s[4], C = 24;
    const ops::Grid g = ops::patch_grid(H, W, p);
    const auto x = test::random_vector(B * Cin * H * W, rng), w = test::random_vector(C * Cin * p * p, rng),
               b = test::random_vector(C, rng);
    std::vector<float> y(B * g.tokens() * C), yr(y.size()), scratch(B * g.tokens() * Cin * p * p, 1e9f);
    ops::patch_embed(x.data(), w.data(), b.data(), y.data(), B, Cin, H, W, C, p, scratch.data());
    ops::patch_embed_ref(x.data(), w.data(), b.data(), yr.data(), B, Cin, H, W, C, p);
    expect_close(y, yr, "patch_embed");
  }
}

TEST(Ops, PosEmbedResizeMatchesReference) {
  std::mt19937 rng(5);
  const std::int64_t grids[][4] = {{8, 8, 10, 7}, {12, 12, 24, 24}, {14, 14, 7, 9}, {1, 1, 3, 2}, {14, 14, 14, 14}};
  for (const auto& g : grids) {
    const std::int64_t C = 11;
    const auto src = test::random_vector(g[0] * g[1] * C, rng);
    std::vector<float> y(g[2] * g[3] * C), yr(y.size());
    ops::resize_pos_embed(src.data(), {g[0], g[1]}, y.data(), {g[2], g[3]}, C);
    ops::resize_pos_embed_ref(src.data(), {g[0], g[1]}, yr.data(), {g[2], g[3]}, C);
    expect_close(y, yr, "resize_pos_embed");
    if (g[0] == g[2] && g[1] == g[3]) expect_close(y, src, "same-size resize is the identity");
  }
}

}  // namespace
}  // namespace vrwkv
