// The backbone's stages (embed, run_blocks, feature_map, head) against the
// whole forward, and the Context: two models with different thread counts at
// once in one process.
#include <omp.h>

#include <thread>

#include "common.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/model.hpp"

namespace vrwkv {
namespace {

Tensor random_input(Shape shape, std::uint32_t seed) {
  std::mt19937 rng(seed);
  Tensor t(DType::F32, std::move(shape));
  const auto v = test::random_vector(t.numel(), rng);
  std::copy(v.begin(), v.end(), t.f32());
  return t;
}

// The stages, split anywhere, give the forward's features and logits bit for
// bit: the fast path fuses work across blocks only inside a range, and each
// range starts with what the fused version would have made.
TEST(Stages, ComposeToTheForwardAtEverySplit) {
  for (const char* name : {"tiny_default", "tiny_postnorm_ls0p5", "tiny_keynorm"}) {
    const Model model = test::load_golden_model(name);
    const Architecture& a = model.architecture();
    for (const bool reference : {false, true})
      for (const std::int64_t B : {1, 4}) {
        ForwardOptions o;
        o.reference = reference;
        const Tensor input = random_input({B, a.in_channels, 32, 48}, 7);
        const Outputs whole = model.forward(input, o);
        for (std::int64_t split = 0; split <= a.depth; ++split) {
          Tokens x = model.embed(input, o);
          model.run_blocks(x, 0, split, o);
          model.run_blocks(x, split, a.depth, o);
          const Tensor f = model.feature_map(x, a.final_norm, o);
          ASSERT_EQ(f.shape(), whole.features.back().shape());
          EXPECT_EQ(test::max_abs_diff(f.f32(), whole.features.back().f32(), f.numel()), 0.0)
              << name << " split " << split << (reference ? " reference" : " fast") << " B " << B;
          if (a.head != HeadKind::None) {
            const Tensor logits = model.head(average_pool(f), o);
            EXPECT_EQ(test::max_abs_diff(logits.f32(), whole.logits.f32(), logits.numel()), 0.0) << name;
          }
        }
      }
  }
}

// Work between the ranges reaches the later blocks (an adapter's seam): a
// change to the tokens after block 0 changes the output.
TEST(Stages, CallerWorkBetweenRangesIsSeen) {
  const Model model = test::load_golden_model("tiny_default");
  const Architecture& a = model.architecture();
  const Tensor input = random_input({1, a.in_channels, 32, 32}, 3);
  Tokens x = model.embed(input), y = model.embed(input);
  model.run_blocks(x, 0, 1);
  model.run_blocks(y, 0, 1);
  y.x.f32()[5] += 1.0f;
  model.run_blocks(x, 1, a.depth);
  model.run_blocks(y, 1, a.depth);
  EXPECT_GT(test::max_abs_diff(x.x.f32(), y.x.f32(), x.x.numel()), 1e-3);
}

TEST(Stages, RefuseBadRangesAndTokens) {
  const Model model = test::load_golden_model("tiny_default");
  const Architecture& a = model.architecture();
  Tokens x = model.embed(random_input({1, a.in_channels, 32, 32}, 1));
  EXPECT_THROW(model.run_blocks(x, 1, 0), Error);
  EXPECT_THROW(model.run_blocks(x, 0, a.depth + 1), Error);
  EXPECT_THROW(model.run_blocks(x, -1, 1), Error);
  Tokens bad = x;
  bad.grid_w += 1;  // grid and token count disagree
  EXPECT_THROW(model.run_blocks(bad, 0, 1), Error);
  EXPECT_THROW(model.feature_map(bad, false), Error);
  EXPECT_THROW(model.embed(Tensor(DType::F32, {1, a.in_channels + 1, 32, 32})), Error);
  EXPECT_THROW(model.head(Tensor(DType::F32, {1, a.embed_dims + 1})), Error);
  model.run_blocks(x, 2, 2);  // an empty range does nothing
}

// Two models in one process, one with 1 thread and one with 2, run at the
// same time from two threads: each gives exactly what it gives alone, and
// neither changes the calling thread's own OpenMP setting.
TEST(Context, TwoModelsWithDifferentThreadCountsRunAtOnce) {
  const Model a = test::load_golden_model("tiny_default");
  const Model b = test::load_golden_model("tiny_postnorm_ls0p5");
  const Tensor xa = random_input({4, a.architecture().in_channels, 64, 64}, 11);
  const Tensor xb = random_input({3, b.architecture().in_channels, 48, 80}, 12);
  const Context one{1}, two{2};
  const Tensor alone_a = a.forward(xa, {}, one).logits, alone_b = b.forward(xb, {}, two).logits;
  Tensor together_a[8], together_b[8];
  int seen_a = -1, seen_b = -1;
  std::thread ta([&] {
    omp_set_num_threads(5);
    for (Tensor& t : together_a) t = a.forward(xa, {}, one).logits;
    seen_a = omp_get_max_threads();
  });
  std::thread tb([&] {
    omp_set_num_threads(7);
    for (Tensor& t : together_b) t = b.forward(xb, {}, two).logits;
    seen_b = omp_get_max_threads();
  });
  ta.join();
  tb.join();
  for (const Tensor& t : together_a) EXPECT_EQ(test::max_abs_diff(t.f32(), alone_a.f32(), t.numel()), 0.0);
  for (const Tensor& t : together_b) EXPECT_EQ(test::max_abs_diff(t.f32(), alone_b.f32(), t.numel()), 0.0);
  EXPECT_EQ(seen_a, 5);
  EXPECT_EQ(seen_b, 7);
}

// A call's thread count is the context's while it runs, whatever the caller set.
TEST(Context, ThreadsAreTheContextsDuringACall) {
  EXPECT_EQ(Context{3}.resolved_threads(), 3);
  EXPECT_EQ(Context{}.resolved_threads(), omp_get_num_procs());
  const Model model = test::load_golden_model("tiny_default");
  const Tensor x = random_input({2, model.architecture().in_channels, 32, 32}, 5);
  omp_set_num_threads(1);
  const Tensor one = model.forward(x, {}, Context{1}).logits;
  const Tensor two = model.forward(x, {}, Context{2}).logits;
  EXPECT_EQ(omp_get_max_threads(), 1);
  // One group of two images or one per thread: GEMMs over other row counts may
  // sum in another order, so float32 rounding, 1e-5·max(1, |logits|), apart.
  EXPECT_TRUE(test::close_to(two, one, 1e-5));
}

}  // namespace
}  // namespace vrwkv
