// Backward passes: every op's fast backward against its float64 reference,
// every reference against finite differences of the forward, the Bi-WKV
// gradients against the golden vectors, and the whole model's gradients
// against the official code's (golden grad.* tensors) and finite differences.
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "common.hpp"
#include "ops/biwkv.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/patch_embed.hpp"
#include "ops/pos_embed.hpp"
#include "ops/qshift.hpp"
#include "vrwkv/backward.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/presets.hpp"

namespace vrwkv {
namespace {

using Vec = std::vector<float>;

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// Central differences of L(x) = Σ forward(x)·g at `probes` coordinates of x,
// against the analytic gradient `grad`. The forwards round to float32, so L
// carries ~1e-7 relative noise; with step h the difference quotient is good
// to about noise/h + h²·L''' : 2e-3 relative to max(1, |grad|) bounds both.
void check_fd(Vec& x, const Vec& grad, const std::function<double()>& loss, std::mt19937& rng, const char* what,
              int probes = 24, float h = 1e-3f, double tol = 2e-3) {
  ASSERT_EQ(x.size(), grad.size());
  const double scale = std::max(1.0, test::max_abs(grad.data(), grad.size()));
  std::uniform_int_distribution<std::size_t> pick(0, x.size() - 1);
  for (int p = 0; p < probes; ++p) {
    const std::size_t i = p < 3 ? (p * (x.size() - 1)) / 2 : pick(rng);  // ends and middle, then random
    const float x0 = x[i];
    x[i] = x0 + h;
    const double up = loss();
    x[i] = x0 - h;
    const double down = loss();
    x[i] = x0;
    const double fd = (up - down) / (static_cast<double>(x0 + h) - static_cast<double>(x0 - h));
    EXPECT_NEAR(fd, grad[i], tol * scale) << what << " coordinate " << i;
  }
}

// ---------------------------------------------------------------------------
// Ops

TEST(LinearBackward, FastMatchesReferenceAndDifferences) {
  std::mt19937 rng(1);
  const std::int64_t M = 13, N = 7, K = 11;
  Vec x = test::random_vector(M * K, rng), W = test::random_vector(N * K, rng), b = test::random_vector(N, rng);
  const Vec gy = test::random_vector(M * N, rng);
  Vec dx(M * K), dW(N * K), db(N), rx(M * K, 0.5f), rW(N * K, 0.5f), rb(N, 0.5f);
  std::fill(dx.begin(), dx.end(), 0.5f), std::fill(dW.begin(), dW.end(), 0.5f), std::fill(db.begin(), db.end(), 0.5f);
  // Both add to what is there (0.5 everywhere).
  ops::linear_backward(x.data(), W.data(), gy.data(), dx.data(), dW.data(), db.data(), M, N, K);
  ops::linear_backward_ref(x.data(), W.data(), gy.data(), rx.data(), rW.data(), rb.data(), M, N, K);
  // float32 GEMM sums of ≤ 13 products of magnitude ≤ 1: 1e-5 covers their rounding.
  EXPECT_LE(test::max_abs_diff(dx.data(), rx.data(), dx.size()), 1e-5);
  EXPECT_LE(test::max_abs_diff(dW.data(), rW.data(), dW.size()), 1e-5);
  EXPECT_LE(test::max_abs_diff(db.data(), rb.data(), db.size()), 1e-5);
  for (float& v : rx) v -= 0.5f;
  for (float& v : rW) v -= 0.5f;
  Vec y(M * N);
  const auto loss = [&] {
    ops::linear_ref(x.data(), W.data(), b.data(), y.data(), M, N, K);
    return dot(y, gy);
  };
  check_fd(x, rx, loss, rng, "dx");
  check_fd(W, rW, loss, rng, "dW");
}

TEST(LayerNormBackward, FastMatchesReferenceAndDifferences) {
  std::mt19937 rng(2);
  for (const auto& [N, C] : {std::pair<std::int64_t, std::int64_t>{5, 3}, {9, 37}, {4, 130}}) {
    Vec x = test::random_vector(N * C, rng, -2, 3), w = test::random_vector(C, rng, 0.5, 1.5),
        b = test::random_vector(C, rng);
    const Vec gy = test::random_vector(N * C, rng);
    Vec dx(N * C), dw(C), db(C), rx(N * C), rw(C), rb(C);
    ops::layernorm_backward(x.data(), w.data(), gy.data(), dx.data(), dw.data(), db.data(), N, C);
    ops::layernorm_backward_ref(x.data(), w.data(), gy.data(), rx.data(), rw.data(), rb.data(), N, C);
    // float32 row statistics against float64: rstd·|g| ≲ 10 here, rounding ~1e-6 relative.
    EXPECT_LE(test::max_abs_diff(dx.data(), rx.data(), dx.size()), 2e-5) << N << "x" << C;
    EXPECT_LE(test::max_abs_diff(dw.data(), rw.data(), dw.size()), 2e-5) << N << "x" << C;
    EXPECT_LE(test::max_abs_diff(db.data(), rb.data(), db.size()), 2e-5) << N << "x" << C;
    Vec y(N * C);
    const auto loss = [&] {
      ops::layernorm_ref(x.data(), w.data(), b.data(), y.data(), N, C);
      return dot(y, gy);
    };
    check_fd(x, rx, loss, rng, "dx");
    check_fd(w, rw, loss, rng, "dweight");
    check_fd(b, rb, loss, rng, "dbias");
  }
}

TEST(QShiftBackward, FastMatchesReferenceAndDifferences) {
  std::mt19937 rng(3);
  struct Shape {
    std::int64_t B, H, W, C;
    int s;
    double gamma;
  };
  for (const Shape sh : {Shape{1, 1, 1, 4, 1, 0.25}, Shape{2, 3, 5, 8, 1, 0.25}, Shape{1, 4, 3, 13, 2, 0.25},
                         Shape{2, 5, 4, 10, 1, 0.125}, Shape{1, 3, 3, 6, 0, 0.25}}) {
    const ops::Grid grid{sh.H, sh.W};
    const std::int64_t n = sh.B * grid.tokens() * sh.C;
    Vec x = test::random_vector(n, rng);
    Vec mu[3] = {test::random_vector(sh.C, rng, 0, 1), test::random_vector(sh.C, rng, 0, 1),
                 test::random_vector(sh.C, rng, 0, 1)};
    const Vec g[3] = {test::random_vector(n, rng), test::random_vector(n, rng), test::random_vector(n, rng)};
    const float* mup[3] = {mu[0].data(), mu[1].data(), mu[2].data()};
    const float* gp[3] = {g[0].data(), g[1].data(), g[2].data()};
    Vec dx(n), rx(n), dmu[3] = {Vec(sh.C), Vec(sh.C), Vec(sh.C)}, rmu[3] = {Vec(sh.C), Vec(sh.C), Vec(sh.C)};
    float* dmup[3] = {dmu[0].data(), dmu[1].data(), dmu[2].data()};
    float* rmup[3] = {rmu[0].data(), rmu[1].data(), rmu[2].data()};
    ops::q_shift_mix_backward(x.data(), sh.B, grid, sh.C, sh.s, sh.gamma, 3, mup, gp, dx.data(), dmup);
    ops::q_shift_mix_backward_ref(x.data(), sh.B, grid, sh.C, sh.s, sh.gamma, 3, mup, gp, rx.data(), rmup);
    // Sums of ≤ 5 terms per element; dmu sums B·T terms of magnitude ≤ 2.
    EXPECT_LE(test::max_abs_diff(dx.data(), rx.data(), n), 1e-5);
    for (int i = 0; i < 3; ++i) EXPECT_LE(test::max_abs_diff(dmu[i].data(), rmu[i].data(), sh.C), 1e-5);
    Vec out[3] = {Vec(n), Vec(n), Vec(n)};
    float* outp[3] = {out[0].data(), out[1].data(), out[2].data()};
    const auto loss = [&] {
      ops::q_shift_mix_ref(x.data(), sh.B, grid, sh.C, sh.s, sh.gamma, 3, mup, outp);
      return dot(out[0], g[0]) + dot(out[1], g[1]) + dot(out[2], g[2]);
    };
    check_fd(x, rx, loss, rng, "dx");
    if (sh.s > 0) check_fd(mu[1], rmu[1], loss, rng, "dmu");
  }
}

TEST(PatchEmbedBackward, FastMatchesReferenceAndDifferences) {
  std::mt19937 rng(4);
  const std::int64_t B = 2, Cin = 3, H = 9, W = 7, C = 5, p = 4;  // padded to 12×8
  const ops::Grid g = ops::patch_grid(H, W, p);
  const Vec x = test::random_vector(B * Cin * H * W, rng);
  Vec w = test::random_vector(C * Cin * p * p, rng), b = test::random_vector(C, rng);
  const Vec gy = test::random_vector(B * g.tokens() * C, rng);
  Vec scratch(B * g.tokens() * Cin * p * p), dw(w.size()), db(C), rw(w.size()), rb(C);
  ops::patch_embed_backward(x.data(), gy.data(), dw.data(), db.data(), B, Cin, H, W, C, p, scratch.data());
  ops::patch_embed_backward_ref(x.data(), gy.data(), rw.data(), rb.data(), B, Cin, H, W, C, p);
  EXPECT_LE(test::max_abs_diff(dw.data(), rw.data(), dw.size()), 1e-5);
  EXPECT_LE(test::max_abs_diff(db.data(), rb.data(), db.size()), 1e-5);
  Vec y(B * g.tokens() * C);
  const auto loss = [&] {
    ops::patch_embed_ref(x.data(), w.data(), b.data(), y.data(), B, Cin, H, W, C, p);
    return dot(y, gy);
  };
  check_fd(w, rw, loss, rng, "dweight");
  check_fd(b, rb, loss, rng, "dbias");
}

TEST(PosEmbedBackward, MatchesDifferences) {
  std::mt19937 rng(5);
  for (const auto& [from, to] : {std::pair<ops::Grid, ops::Grid>{{8, 8}, {10, 7}}, {{3, 5}, {2, 9}}, {{4, 4}, {4, 4}}}) {
    const std::int64_t C = 3;
    Vec src = test::random_vector(from.tokens() * C, rng);
    const Vec gy = test::random_vector(to.tokens() * C, rng);
    Vec dsrc(src.size()), y(to.tokens() * C);
    ops::resize_pos_embed_backward(gy.data(), to, dsrc.data(), from, C);
    const auto loss = [&] {
      ops::resize_pos_embed_ref(src.data(), from, y.data(), to, C);
      return dot(y, gy);
    };
    check_fd(src, dsrc, loss, rng, "dsrc");
  }
}

// ---------------------------------------------------------------------------
// Bi-WKV

// golden T{T}.grad.{w,u,k,v} = d Σ y·g / d input, paper ("") and official S=32 ("kernel.").
TEST(BiWkvBackward, Golden) {
  const TensorMap g = read_safetensors(test::golden("biwkv.safetensors"));
  int checked = 0;
  for (const std::int64_t T : {1, 2, 7, 50, 196}) {
    const std::string p = "T" + std::to_string(T) + ".";
    const Tensor &k = g.at(p + "k"), &v = g.at(p + "v"), &gy = g.at(p + "g");
    const std::int64_t B = k.dim(0), C = k.dim(2);
    for (const char* form : {"", "kernel."}) {
      const bool paper = form[0] == '\0';
      const ops::Wkv wkv{paper ? WkvSemantics::Paper : WkvSemantics::Official, 32};
      for (int fast = 0; fast < 2; ++fast) {
        Tensor gw(DType::F32, {C}), gu(DType::F32, {C}), gk(DType::F32, k.shape()), gv(DType::F32, k.shape());
        if (fast)
          ops::biwkv_backward(g.at(p + "w").f32(), g.at(p + "u").f32(), k.f32(), v.f32(), gy.f32(), gw.f32(),
                              gu.f32(), gk.f32(), gv.f32(), B, T, C, wkv);
        else
          ops::biwkv_backward_ref(g.at(p + "w").f32(), g.at(p + "u").f32(), k.f32(), v.f32(), gy.f32(), gw.f32(),
                                  gu.f32(), gk.f32(), gv.f32(), B, T, C, wkv);
        const std::string what = p + form + (fast ? " fast" : " reference");
        EXPECT_TRUE(test::close_to(gw, g.at(p + form + "grad.w"), test::kGradTol)) << what << " w";
        EXPECT_TRUE(test::close_to(gu, g.at(p + form + "grad.u"), test::kGradTol)) << what << " u";
        EXPECT_TRUE(test::close_to(gk, g.at(p + form + "grad.k"), test::kGradTol)) << what << " k";
        EXPECT_TRUE(test::close_to(gv, g.at(p + form + "grad.v"), test::kGradTol)) << what << " v";
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 20);
  // The uni direction's golden operator (golden/ablation).
  const TensorMap gu_ = read_safetensors(test::golden("ablation/ablation_uniwkv_op.safetensors"));
  for (const std::int64_t T : {1, 2, 7, 50, 196}) {
    const std::string p = "T" + std::to_string(T) + ".";
    const Tensor &k = gu_.at(p + "k"), &v = gu_.at(p + "v"), &gy = gu_.at(p + "g");
    const std::int64_t B = k.dim(0), C = k.dim(2);
    const ops::Wkv wkv{WkvSemantics::Paper, 32, WkvDirection::Uni};
    for (int fast = 0; fast < 2; ++fast) {
      Tensor gw(DType::F32, {C}), gu(DType::F32, {C}), gk(DType::F32, k.shape()), gv(DType::F32, k.shape());
      (fast ? ops::biwkv_backward : ops::biwkv_backward_ref)(gu_.at(p + "w").f32(), gu_.at(p + "u").f32(), k.f32(),
                                                             v.f32(), gy.f32(), gw.f32(), gu.f32(), gk.f32(),
                                                             gv.f32(), B, T, C, wkv);
      const std::string what = p + "uni" + (fast ? " fast" : " reference");
      EXPECT_TRUE(test::close_to(gw, gu_.at(p + "grad.w"), test::kGradTol)) << what << " w";
      EXPECT_TRUE(test::close_to(gu, gu_.at(p + "grad.u"), test::kGradTol)) << what << " u";
      EXPECT_TRUE(test::close_to(gk, gu_.at(p + "grad.k"), test::kGradTol)) << what << " k";
      EXPECT_TRUE(test::close_to(gv, gu_.at(p + "grad.v"), test::kGradTol)) << what << " v";
    }
  }
}

// The O(T·C) scans against the O(T²) float64 definition, and the definition
// against finite differences of the forward, on awkward shapes and decays of
// both signs.
TEST(BiWkvBackward, ScanMatchesDefinitionAndDifferences) {
  std::mt19937 rng(6);
  const std::int64_t shapes[][3] = {{1, 1, 3}, {2, 2, 5}, {1, 33, 13}, {2, 100, 40}, {1, 197, 9}};
  for (const auto& s : shapes) {
    const std::int64_t B = s[0], T = s[1], C = s[2];
    Vec w = test::random_vector(C, rng, -8, 8), u = test::random_vector(C, rng, -3, 3);
    for (auto& x : w) x /= T;
    for (auto& x : u) x /= T;
    Vec k = test::random_vector(B * T * C, rng, -4, 4), v = test::random_vector(B * T * C, rng, -2, 2);
    const Vec gy = test::random_vector(B * T * C, rng);
    // Both float64, rounded once: 1e-6 relative to the largest gradient.
    const auto close = [](const Vec& a, const Vec& b) {
      return test::max_abs_diff(a.data(), b.data(), a.size()) <= 1e-6 * std::max(1.0, test::max_abs(b.data(), b.size()));
    };
    const std::string shape = "B=" + std::to_string(B) + " T=" + std::to_string(T) + " C=" + std::to_string(C);
    for (const ops::Wkv wkv : {ops::Wkv{WkvSemantics::Paper, 32}, ops::Wkv{WkvSemantics::Official, 1},
                               ops::Wkv{WkvSemantics::Official, 4}, ops::Wkv{WkvSemantics::Official, 16},
                               ops::Wkv{WkvSemantics::Official, 32},
                               ops::Wkv{WkvSemantics::Paper, 32, WkvDirection::Uni}}) {
      Vec gw(C), gu(C), gk(B * T * C), gv(B * T * C), rw(C), ru(C), rk(B * T * C), rv(B * T * C);
      ops::biwkv_backward(w.data(), u.data(), k.data(), v.data(), gy.data(), gw.data(), gu.data(), gk.data(),
                          gv.data(), B, T, C, wkv);
      ops::biwkv_backward_ref(w.data(), u.data(), k.data(), v.data(), gy.data(), rw.data(), ru.data(), rk.data(),
                              rv.data(), B, T, C, wkv);
      const std::string what =
          shape + " " + to_string(wkv.semantics) + " S=" + std::to_string(wkv.chunks) + " " + to_string(wkv.direction);
      EXPECT_TRUE(close(gw, rw)) << what << " w";
      EXPECT_TRUE(close(gu, ru)) << what << " u";
      EXPECT_TRUE(close(gk, rk)) << what << " k";
      EXPECT_TRUE(close(gv, rv)) << what << " v";
    }
    {  // the uni direction with RWKV-4's operands: w = e^{decay} from e^{-3} to e^{3}, u unscaled
      Vec w4(C), u4 = test::random_vector(C, rng, -3, 3);
      for (std::int64_t c = 0; c < C; ++c) w4[c] = std::exp(6.0f * static_cast<float>(c) / C - 3.0f);
      const ops::Wkv uni{WkvSemantics::Paper, 32, WkvDirection::Uni};
      Vec gw(C), gu(C), gk(B * T * C), gv(B * T * C), rw(C), ru(C), rk(B * T * C), rv(B * T * C);
      ops::biwkv_backward(w4.data(), u4.data(), k.data(), v.data(), gy.data(), gw.data(), gu.data(), gk.data(),
                          gv.data(), B, T, C, uni);
      ops::biwkv_backward_ref(w4.data(), u4.data(), k.data(), v.data(), gy.data(), rw.data(), ru.data(), rk.data(),
                              rv.data(), B, T, C, uni);
      EXPECT_TRUE(close(gw, rw)) << shape << " uni rwkv4 w";
      EXPECT_TRUE(close(gu, ru)) << shape << " uni rwkv4 u";
      EXPECT_TRUE(close(gk, rk)) << shape << " uni rwkv4 k";
      EXPECT_TRUE(close(gv, rv)) << shape << " uni rwkv4 v";
    }
    if (T > 100) continue;  // the O(T²) forward per probe is slow enough
    for (const ops::Wkv wkv : {ops::Wkv{WkvSemantics::Paper, 4}, ops::Wkv{WkvSemantics::Official, 4},
                               ops::Wkv{WkvSemantics::Paper, 4, WkvDirection::Uni}}) {
      Vec ew(C), eu(C), ek(B * T * C), ev(B * T * C), y(B * T * C);
      ops::biwkv_backward_ref(w.data(), u.data(), k.data(), v.data(), gy.data(), ew.data(), eu.data(), ek.data(),
                              ev.data(), B, T, C, wkv);
      const auto loss = [&] {
        ops::biwkv_ref(w.data(), u.data(), k.data(), v.data(), y.data(), B, T, C, wkv);
        return dot(y, gy);
      };
      const std::string what = shape + " " + to_string(wkv.semantics) + " " + to_string(wkv.direction);
      check_fd(k, ek, loss, rng, (what + " dk").c_str(), 12);
      check_fd(v, ev, loss, rng, (what + " dv").c_str(), 12);
      // w and u are O(1/T) and enter through e^{±T·w}: a smaller step.
      check_fd(w, ew, loss, rng, (what + " dw").c_str(), 4, 1e-4f);
      check_fd(u, eu, loss, rng, (what + " du").c_str(), 4, 1e-4f);
    }
  }
}

// ---------------------------------------------------------------------------
// The model

// Every golden case with gradients, through the library: loss and every
// grad.<parameter> within 5e-5·max(1, max|golden|) (golden README).
TEST(ModelBackward, GoldenGradients) {
  for (const char* name : {"tiny_default", "tiny_postnorm_ls0p5", "tiny_keynorm", "tiny_shift0", "tiny_in37x27_pad",
                           "tiny_outidx01_nofinalnorm", "tiny_default_kernelwkv", "vrwkv_t_224_b2",
                           "v6/v6_tiny_default", "v6/v6_tiny_postnorm_ls_in37x27", "data/v6/v6_in48x40_pos8to12x10",
                           "data/v6/v6_w192_postnorm_in40x56", "data/v6/v6_keynorm_out01",
                           "ablation/ablation_shift_none", "ablation/ablation_shift_1d", "ablation/ablation_wkv_uni",
                           "ablation/ablation_rwkv_orig", "data/ablation/abl_rwkv4_1d_uni_w96_in40x24",
                           "data/ablation/abl_rwkv4_q_uni_postnorm_in36x44",
                           "data/ablation/abl_none_uni_w128_keynorm_out01", "data/ablation/abl_1d_bi_shift2_in32x48"}) {
    const Model model = test::load_golden_model(name);
    const TensorMap golden = read_safetensors(test::case_path(name) + ".safetensors");
    Gradients grads(model);
    Backprop backprop(model);
    const LossResult r =
        backprop.run(golden.at("input"), one_hot(golden.at("labels"), model.config().arch.num_classes), grads);
    EXPECT_NEAR(r.loss, golden.at("loss").f32()[0], test::kGradTol * std::max(1.0f, golden.at("loss").f32()[0]))
        << name;
    int checked = 0;
    for (const auto& [param, g] : grads.tensors) {
      EXPECT_TRUE(test::close_to(g, golden.at("grad." + param), test::kGradTol)) << name << " " << param;
      ++checked;
    }
    EXPECT_EQ(checked, static_cast<int>(parameter_shapes(model.architecture()).size()));
    // Recomputing blocks in the backward gives the same bits.
    Gradients again(model);
    BackwardOptions recompute;
    recompute.recompute = true;
    backprop.run(golden.at("input"), one_hot(golden.at("labels"), model.config().arch.num_classes), again, recompute);
    EXPECT_EQ(test::max_abs_diff(grads.storage.f32(), again.storage.f32(), grads.storage.numel()), 0.0) << name;
  }
}

// Features the goldens do not cover, against finite differences of the loss:
// an MLP head, drop path, layer scale with post-norm and key norm, a resized
// position grid, shift 2 with γ = 1/8, a non-square padded input.
TEST(ModelBackward, MatchesDifferencesOnEveryFeature) {
  Config c;
  c.arch.embed_dims = 24, c.arch.hidden_dims = 40, c.arch.depth = 3, c.arch.patch_size = 4, c.arch.in_channels = 2;
  c.arch.pos_grid_h = 3, c.arch.pos_grid_w = 2;
  c.arch.post_norm = c.arch.layer_scale = c.arch.key_norm = true;
  c.arch.shift_pixel = 2, c.arch.channel_gamma = 0.125;
  c.arch.head = HeadKind::Mlp, c.arch.head_hidden = 16, c.arch.num_classes = 5;
  c.run.out_indices = {2};
  c.run.wkv = WkvSemantics::Paper;
  TensorMap p = initial_parameters(c.arch, 3, 0.7);
  std::mt19937 rng(9);
  for (auto& [name, t] : p)  // move every parameter away from its structured initial value
    for (std::int64_t i = 0; i < t.numel(); ++i) t.f32()[i] += 0.2f * test::random_vector(1, rng)[0];
  Model model = Model::from_state_dict(p, c);
  Tensor input(DType::F32, {2, 2, 13, 10});  // grid 4×3 (padded), pos grid 3×2 resized
  const Vec in = test::random_vector(input.numel(), rng);
  std::copy(in.begin(), in.end(), input.f32());
  Tensor labels(DType::I64, {2});
  labels.data<std::int64_t>()[0] = 3, labels.data<std::int64_t>()[1] = 0;
  const Tensor targets = one_hot(labels, 5);
  BackwardOptions o;
  o.drop_path = {0.0, 0.5, 0.5};  // with this seed, some samples of blocks 1 and 2 are dropped
  o.seed = 12;
  Gradients grads(model), scratch(model);
  Backprop backprop(model);
  backprop.run(input, targets, grads, o);
  Tensor storage = model.parameter_storage();
  Vec theta(storage.f32(), storage.f32() + storage.numel());
  const Vec grad(grads.storage.f32(), grads.storage.f32() + grads.storage.numel());
  const auto loss = [&] {
    std::copy(theta.begin(), theta.end(), storage.f32());
    return backprop.run(input, targets, scratch, o).loss;
  };
  // Probe every parameter tensor at a few coordinates.
  std::int64_t offset = 0;
  for (const auto& [name, shape] : parameter_shapes(c.arch)) {
    const std::int64_t n = shape_numel(shape);
    Vec sub_theta(theta.begin() + offset, theta.begin() + offset + n), sub_grad(grad.begin() + offset, grad.begin() + offset + n);
    const auto sub_loss = [&] {
      std::copy(sub_theta.begin(), sub_theta.end(), theta.begin() + offset);
      return loss();
    };
    // The loss is O(1) and sums float32 activations: h = 1e-2, tolerance 3e-3.
    check_fd(sub_theta, sub_grad, sub_loss, rng, name.c_str(), 3, 1e-2f, 3e-3);
    std::copy(sub_theta.begin(), sub_theta.end(), theta.begin() + offset);
    offset += n;
  }
}

TEST(ModelBackward, RefusesWhatItCannotDerive) {
  Config c;
  c.arch.embed_dims = 8, c.arch.hidden_dims = 16, c.arch.depth = 1, c.arch.patch_size = 4, c.arch.num_classes = 3, c.run.out_indices = {0};
  c.arch.pos_grid_h = c.arch.pos_grid_w = 2;
  c.run.wkv = WkvSemantics::Paper;
  const Model paper = Model::from_state_dict(initial_parameters(c.arch, 1), c);
  Gradients g(paper);
  Tensor input(DType::F32, {1, 3, 8, 8}), labels(DType::I64, {1});
  c.arch.head = HeadKind::None;
  const Model headless = Model::from_state_dict(initial_parameters(c.arch, 1), c);
  Gradients gh(headless);
  EXPECT_THROW(Backprop(headless).run(input, one_hot(labels, 3), gh), Error);
  labels.data<std::int64_t>()[0] = 3;
  EXPECT_THROW(one_hot(labels, 3), Error);
  EXPECT_THROW(Backprop(paper).run(input, Tensor(DType::F32, {2, 3}), g), Error);
  EXPECT_THROW(Backprop(paper).run(Tensor(DType::F32, {1, 2, 8, 8}), Tensor(DType::F32, {1, 3}), g), Error);
}

}  // namespace
}  // namespace vrwkv

namespace vrwkv {
namespace {

// The backbone's backward from gradients on any set of block outputs (the
// seam dense heads use), and the input gradient: L = Σ_i <G_i, y_i> for
// blocks 0 and 2 of 3, against finite differences of the same forward, pre-
// and post-norm.
TEST(ModelBackward, FromBlockOutputsToParametersAndInput) {
  for (const bool post : {false, true}) {
    Config c;
    c.arch.embed_dims = 16, c.arch.hidden_dims = 24, c.arch.depth = 3, c.arch.patch_size = 4;
    c.arch.pos_grid_h = c.arch.pos_grid_w = 2;
    c.arch.post_norm = c.arch.layer_scale = post;
    c.arch.head = HeadKind::None, c.arch.num_classes = 0;
    c.run.out_indices = {2};
    c.run.wkv = WkvSemantics::Paper;
    TensorMap p = initial_parameters(c.arch, 5, 0.6);
    std::mt19937 rng(post ? 21 : 20);
    for (auto& [name, t] : p)
      for (std::int64_t i = 0; i < t.numel(); ++i) t.f32()[i] += 0.2f * test::random_vector(1, rng)[0];
    Model model = Model::from_state_dict(p, c);
    Tensor input(DType::F32, {2, 3, 9, 8});  // grid 3×2 (padded): the position grid is resized
    const Vec in = test::random_vector(input.numel(), rng);
    std::copy(in.begin(), in.end(), input.f32());
    Backprop backprop(model);
    backprop.forward(input, 2);
    const std::int64_t n = backprop.block_output(0).numel();
    std::map<std::int64_t, Tensor> d;
    for (std::int64_t i : {0, 2}) {
      d[i] = Tensor(DType::F32, backprop.block_output(i).shape());
      const Vec g = test::random_vector(n, rng);
      std::copy(g.begin(), g.end(), d[i].f32());
    }
    Gradients grads(model);
    Tensor d_input;
    backprop.backward(d, grads, {}, &d_input);
    ASSERT_EQ(d_input.shape(), input.shape());

    Tensor storage = model.parameter_storage();
    Vec theta(storage.f32(), storage.f32() + storage.numel()), x(in);
    const auto loss = [&] {
      std::copy(theta.begin(), theta.end(), storage.f32());
      std::copy(x.begin(), x.end(), input.f32());
      backprop.forward(input, 2);
      double l = 0;
      for (const auto& [i, g] : d) {
        const Tensor y = backprop.block_output(i);
        for (std::int64_t j = 0; j < n; ++j) l += static_cast<double>(g.f32()[j]) * y.f32()[j];
      }
      return l;
    };
    // L sums ~200 float32 products of O(1): h = 1e-2, tolerance 3e-3 of max(1, |grad|) (check_fd).
    const Vec grad(grads.storage.f32(), grads.storage.f32() + grads.storage.numel());
    check_fd(theta, grad, loss, rng, post ? "post-norm parameters" : "pre-norm parameters", 40, 1e-2f, 3e-3);
    const Vec gx(d_input.f32(), d_input.f32() + d_input.numel());
    check_fd(x, gx, loss, rng, post ? "post-norm input" : "pre-norm input", 24, 1e-2f, 3e-3);
  }
}

// Gradients only on block 0: the blocks above it take no part, and a bad seam is refused.
TEST(ModelBackward, SeamChecksItsArguments) {
  Config c;
  c.arch.embed_dims = 8, c.arch.hidden_dims = 16, c.arch.depth = 2, c.arch.patch_size = 4, c.arch.num_classes = 3;
  c.arch.pos_grid_h = c.arch.pos_grid_w = 2;
  c.run.out_indices = {1};
  c.run.wkv = WkvSemantics::Paper;
  const Model model = Model::from_state_dict(initial_parameters(c.arch, 1), c);
  Backprop backprop(model);
  Gradients g(model);
  EXPECT_THROW(backprop.backward({}, g), Error);  // no forward yet
  Tensor input(DType::F32, {1, 3, 8, 8});
  backprop.forward(input, 1);
  EXPECT_THROW(backprop.backward({{2, backprop.block_output(1)}}, g), Error);             // block 2 was not run
  EXPECT_THROW(backprop.backward({{0, Tensor(DType::F32, {1, 4, 7})}}, g), Error);        // wrong shape
  EXPECT_THROW(backprop.forward(input, 2), Error);                                          // past the last block
  Tensor ones(DType::F32, backprop.block_output(0).shape());
  std::fill(ones.f32(), ones.f32() + ones.numel(), 1.0f);
  backprop.backward({{0, ones}}, g);
  // Block 1's parameters get no gradient from block 0's output.
  for (const auto& [name, t] : g.tensors) {
    if (name.starts_with("backbone.layers.1.")) {
      EXPECT_EQ(test::max_abs(t.f32(), t.numel()), 0.0) << name;
    }
  }
  EXPECT_GT(test::max_abs(g.tensors.at("backbone.layers.0.att.key.weight").f32(), 64), 0.0);
}

}  // namespace
}  // namespace vrwkv
