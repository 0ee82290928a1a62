// Bi-WKV6 (VRWKV6.md A.5): the operator goldens (float64 closed form and its
// autograd), an O(T²) closed form written here for the awkward shapes, the
// thread split, and long sequences against float64.
#include "ops/wkv6.hpp"

#include <cmath>

#include "common.hpp"

namespace vrwkv {
namespace {

using Vec = std::vector<float>;

// The closed form of VRWKV6.md A.5 in float64, O(T²·N) per head: the
// definition the scans must meet.
Vec closed_form(const Vec& r, const Vec& k, const Vec& v, const Vec& w, const Vec& u, std::int64_t B, std::int64_t T,
                std::int64_t C, std::int64_t N) {
  Vec y(B * T * C);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t c0 = 0; c0 < C; c0 += N)
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t i = 0; i < N; ++i) {
          double acc = 0;
          for (std::int64_t j = 0; j < N; ++j) {
            const auto at = [&](std::int64_t s, std::int64_t ch) { return (b * T + s) * C + c0 + ch; };
            for (std::int64_t s = 0; s < T; ++s) {
              double a;
              if (s == t) {
                a = static_cast<double>(u[c0 + j]) * k[at(t, j)];
              } else {
                double logp = 0;  // log Π δ_m = −Σ exp(w_m), m strictly between
                for (std::int64_t m = std::min(s, t) + 1; m < std::max(s, t); ++m) logp -= std::exp(double(w[at(m, j)]));
                a = std::exp(logp) * k[at(s, j)];
              }
              acc += r[at(t, j)] * a * v[at(s, i)];
            }
          }
          y[(b * T + t) * C + c0 + i] = static_cast<float>(acc);
        }
  return y;
}

double max_abs(const Vec& a) { return test::max_abs(a.data(), static_cast<std::int64_t>(a.size())); }
double max_diff(const Vec& a, const Vec& b) {
  return test::max_abs_diff(a.data(), b.data(), static_cast<std::int64_t>(a.size()));
}

// Every T of an operator file (the golden: B 2, H 2, N 64; T 1, 2, 7, 64, 200): y and
// the gradients of Σ y·g, fast and reference, within the golden README's
// 2e-5 / 5e-5 · max(1, max|golden|) (a float32 run of the official code lands
// at ≤ 4.2e-7 of max|golden|).
int check_operator_file(const std::string& path, std::initializer_list<int> Ts) {
  const TensorMap g = read_safetensors(path);
  int checked = 0;
  for (int T : Ts) {
    const std::string p = "T" + std::to_string(T) + ".";
    const Tensor &r = g.at(p + "r"), &k = g.at(p + "k"), &v = g.at(p + "v"), &w = g.at(p + "w"), &gy = g.at(p + "g");
    const Tensor u = g.at(p + "u");
    const std::int64_t B = r.dim(0), C = r.dim(2), N = u.dim(1);
    EXPECT_EQ(r.dim(1), T);
    if (r.dim(1) != T) continue;
    for (bool reference : {false, true}) {
      const std::string what = p + (reference ? " (reference)" : " (fast)");
      Tensor y(DType::F32, r.shape());
      (reference ? ops::wkv6_ref : ops::wkv6)(r.f32(), k.f32(), v.f32(), w.f32(), u.f32(), y.f32(), B, T, C, N);
      EXPECT_TRUE(test::close_to(y, g.at(p + "y"), test::kForwardTol)) << what << " y";
      Tensor gr = Tensor(DType::F32, r.shape()), gk = Tensor(DType::F32, r.shape()),
             gv = Tensor(DType::F32, r.shape()), gw = Tensor(DType::F32, r.shape()),
             gu = Tensor(DType::F32, u.shape());
      (reference ? ops::wkv6_backward_ref : ops::wkv6_backward)(r.f32(), k.f32(), v.f32(), w.f32(), u.f32(), gy.f32(),
                                                                 gr.f32(), gk.f32(), gv.f32(), gw.f32(), gu.f32(), B,
                                                                 T, C, N);
      EXPECT_TRUE(test::close_to(gr, g.at(p + "grad.r"), test::kGradTol)) << what << " gr";
      EXPECT_TRUE(test::close_to(gk, g.at(p + "grad.k"), test::kGradTol)) << what << " gk";
      EXPECT_TRUE(test::close_to(gv, g.at(p + "grad.v"), test::kGradTol)) << what << " gv";
      EXPECT_TRUE(test::close_to(gw, g.at(p + "grad.w"), test::kGradTol)) << what << " gw";
      EXPECT_TRUE(test::close_to(gu, g.at(p + "grad.u"), test::kGradTol)) << what << " gu";
    }
    ++checked;
  }
  return checked;
}

TEST(Wkv6Golden, ForwardAndGradients) {
  EXPECT_EQ(check_operator_file(test::golden("v6/v6_wkv6_op.safetensors"), {1, 2, 7, 64, 200}), 5);
}

// The official backward kernel's limit, T = 256 (one head; tools/v6_pytorch.py --make-op-case, float64
// autograd of the masked closed form).
TEST(Wkv6Golden, ForwardAndGradientsAt256Tokens) {
  EXPECT_EQ(check_operator_file(std::string(VRWKV_SOURCE_DIR) + "/tests/data/v6/v6_wkv6_op_t256.safetensors", {256}),
            1);
}

// Shapes the goldens do not have: heads of 16 and 40 channels (a partial
// value block), three heads, T up to 23, against the closed form; the scan
// split into team shares gives the same bits as the parallel call.
TEST(Wkv6, ScansMatchTheClosedFormOnAwkwardShapes) {
  std::mt19937 rng(61);
  struct Shape {
    std::int64_t B, T, H, N;
  };
  for (const Shape s : {Shape{1, 1, 1, 16}, Shape{2, 5, 3, 16}, Shape{1, 23, 2, 40}, Shape{3, 9, 1, 64}}) {
    const std::int64_t C = s.H * s.N, n = s.B * s.T * C;
    const Vec r = test::random_vector(n, rng), k = test::random_vector(n, rng), v = test::random_vector(n, rng),
              w = test::random_vector(n, rng, -3.0f, 1.0f), u = test::random_vector(C, rng);
    const Vec want = closed_form(r, k, v, w, u, s.B, s.T, C, s.N);
    Vec y(n), yr(n), ys(n);
    ops::wkv6(r.data(), k.data(), v.data(), w.data(), u.data(), y.data(), s.B, s.T, C, s.N);
    ops::wkv6_ref(r.data(), k.data(), v.data(), w.data(), u.data(), yr.data(), s.B, s.T, C, s.N);
    Vec decay(n);
    ops::wkv6_decays(w.data(), decay.data(), n);
    for (int share = 0; share < 3; ++share)
      ops::wkv6_share(r.data(), k.data(), v.data(), decay.data(), u.data(), ys.data(), s.B, s.T, C, s.N, share, 3);
    const std::string what = "B" + std::to_string(s.B) + " T" + std::to_string(s.T) + " N" + std::to_string(s.N);
    // float32 scans: a few ulps of the largest partial sum.
    EXPECT_LE(max_diff(y, want), 2e-6 * std::max(1.0, max_abs(want))) << what;
    EXPECT_LE(max_diff(yr, want), 1e-6 * std::max(1.0, max_abs(want))) << what;  // float64, stored as float32
    EXPECT_EQ(max_diff(y, ys), 0.0) << what;
  }
}

// The gradient against central differences of the float64 forward on the
// same awkward shapes (the goldens hold N = 64 only).
TEST(Wkv6, BackwardMatchesDifferences) {
  std::mt19937 rng(62);
  const std::int64_t B = 2, T = 6, H = 2, N = 40, C = H * N, n = B * T * C;
  Vec r = test::random_vector(n, rng), k = test::random_vector(n, rng), v = test::random_vector(n, rng),
      w = test::random_vector(n, rng, -3.0f, 1.0f), u = test::random_vector(C, rng);
  const Vec gy = test::random_vector(n, rng);
  Vec gr(n), gk(n), gv(n), gw(n), gu(C), fr(n), fk(n), fv(n), fw(n), fu(C);
  ops::wkv6_backward_ref(r.data(), k.data(), v.data(), w.data(), u.data(), gy.data(), gr.data(), gk.data(),
                         gv.data(), gw.data(), gu.data(), B, T, C, N);
  ops::wkv6_backward(r.data(), k.data(), v.data(), w.data(), u.data(), gy.data(), fr.data(), fk.data(), fv.data(),
                     fw.data(), fu.data(), B, T, C, N);
  const auto loss = [&] {
    Vec y(n);
    ops::wkv6_ref(r.data(), k.data(), v.data(), w.data(), u.data(), y.data(), B, T, C, N);
    double s = 0;
    for (std::int64_t i = 0; i < n; ++i) s += double(y[i]) * gy[i];
    return s;
  };
  std::uniform_int_distribution<std::int64_t> pick(0, n - 1);
  for (auto [x, g, f, name] : {std::tuple{&r, &gr, &fr, "r"}, std::tuple{&k, &gk, &fk, "k"},
                               std::tuple{&v, &gv, &fv, "v"}, std::tuple{&w, &gw, &fw, "w"},
                               std::tuple{&u, &gu, &fu, "u"}}) {
    // The fast (float32) gradient equals the float64 one to float32 rounding.
    EXPECT_LE(max_diff(*f, *g), 2e-6 * std::max(1.0, max_abs(*g))) << name;
    for (int probe = 0; probe < 12; ++probe) {
      const std::int64_t i = x == &u ? pick(rng) % C : pick(rng);
      const float keep = (*x)[i], h = 1e-2f;
      (*x)[i] = keep + h;
      const double up = loss();
      (*x)[i] = keep - h;
      const double down = loss();
      (*x)[i] = keep;
      // Central difference, error O(h²·|third derivative|) on O(1) inputs; the
      // loss is stored through float32 y (|y| ≲ 10): 1e-3 absolute covers both.
      EXPECT_NEAR((up - down) / (2 * h), (*g)[i], 1e-3) << name << "[" << i << "]";
    }
  }
}

// Long sequences with the official initial decay range (w from −6 to −1:
// δ from 0.9975 to 0.69, memories of hundreds of tokens): the float32 scans
// against the float64 ones, relative to max|float64|. Seen at both lengths:
// y ≤ 2.8e-7, gr, gk ≤ 3.7e-7, gv, gw ≤ 3.3e-7 (float32 states: a few ulps of
// the largest partial sums); gu, a sum over all T tokens, is accumulated in
// float64 (≤ 1.2e-7). Bound: 2e-6.
TEST(Wkv6, LongSequencesStayAccurate) {
  std::mt19937 rng(63);
  for (std::int64_t T : {4096, 16384}) {
    const std::int64_t B = 1, N = 64, C = 64, n = B * T * C;
    const Vec r = test::random_vector(n, rng), k = test::random_vector(n, rng), v = test::random_vector(n, rng),
              w = test::random_vector(n, rng, -6.0f, -1.0f), u = test::random_vector(C, rng),
              gy = test::random_vector(n, rng);
    Vec y(n), yr(n);
    ops::wkv6(r.data(), k.data(), v.data(), w.data(), u.data(), y.data(), B, T, C, N);
    ops::wkv6_ref(r.data(), k.data(), v.data(), w.data(), u.data(), yr.data(), B, T, C, N);
    const std::string what = "T " + std::to_string(T);
    EXPECT_LE(max_diff(y, yr), 2e-6 * max_abs(yr)) << what << " y";
    Vec fr(n), fk(n), fv(n), fw(n), fu(C), gr(n), gk(n), gv(n), gw(n), gu(C);
    ops::wkv6_backward(r.data(), k.data(), v.data(), w.data(), u.data(), gy.data(), fr.data(), fk.data(), fv.data(),
                       fw.data(), fu.data(), B, T, C, N);
    ops::wkv6_backward_ref(r.data(), k.data(), v.data(), w.data(), u.data(), gy.data(), gr.data(), gk.data(),
                           gv.data(), gw.data(), gu.data(), B, T, C, N);
    EXPECT_LE(max_diff(fr, gr), 2e-6 * max_abs(gr)) << what << " gr";
    EXPECT_LE(max_diff(fk, gk), 2e-6 * max_abs(gk)) << what << " gk";
    EXPECT_LE(max_diff(fv, gv), 2e-6 * max_abs(gv)) << what << " gv";
    EXPECT_LE(max_diff(fw, gw), 2e-6 * max_abs(gw)) << what << " gw";
    EXPECT_LE(max_diff(fu, gu), 2e-6 * max_abs(gu)) << what << " gu";
  }
}

}  // namespace
}  // namespace vrwkv
