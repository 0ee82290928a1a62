// The effective receptive field (vrwkv::receptive_field, `vrwkv erf`): models
// whose receptive field is known by construction give exactly that support,
// and the command's outputs and errors.
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cli_fixture.hpp"
#include "common.hpp"
#include "vrwkv/backward.hpp"
#include "vrwkv/model.hpp"
#include "vrwkv/presets.hpp"

namespace vrwkv {
namespace {

constexpr std::int64_t kPatch = 4, kGridH = 6, kGridW = 5;

// A one-block model on a 6×5 grid of 4×4 patches (input 24×20, one channel),
// random weights, with the variant asked for; attention_off zeroes
// att.output, so that only the Channel Mix (whose only cross-token path is
// its shift) mixes tokens.
Model model(TokenShift shift, WkvDirection direction, bool attention_off) {
  Config c;
  Architecture& a = c.arch;
  a.embed_dims = 16, a.depth = 1, a.patch_size = kPatch, a.in_channels = 1, a.hidden_dims = 64;
  a.pos_grid_h = kGridH, a.pos_grid_w = kGridW, a.num_classes = 3;
  a.shift = shift, a.shift_pixel = shift == TokenShift::None ? 0 : 1, a.wkv_direction = direction;
  c.run.wkv = WkvSemantics::Paper, c.run.out_indices = {0};
  TensorMap p = initial_parameters(a, 1);
  std::mt19937 rng(2);
  for (auto& [name, t] : p) {
    // Every weight away from its init (the mixing ramps reach μ = 0 and 1 at the ends, where a path vanishes).
    const bool mix = name.find("spatial_mix") != std::string::npos;
    const std::vector<float> r = test::random_vector(t.numel(), rng, mix ? 0.2f : -0.5f, mix ? 0.8f : 0.5f);
    std::copy(r.begin(), r.end(), t.f32());
    if (attention_off && name.ends_with("att.output.weight")) std::fill(t.f32(), t.f32() + t.numel(), 0.0f);
  }
  return Model::from_state_dict(p, c, "erf test model");
}

// The patches (row, column) whose pixels the map must cover; all others must be exactly 0.
void expect_support(const Model& m, const std::set<std::pair<int, int>>& patches, const std::string& what) {
  std::mt19937 rng(4);
  Tensor input(DType::F32, {2, 1, kGridH * kPatch, kGridW * kPatch});
  const std::vector<float> x = test::random_vector(input.numel(), rng);
  std::copy(x.begin(), x.end(), input.f32());
  const Tensor map = receptive_field(m, input);
  ASSERT_EQ(map.shape(), (std::vector<std::int64_t>{kGridH * kPatch, kGridW * kPatch}));
  int inside = 0, outside = 0;
  for (std::int64_t y = 0; y < map.dim(0); ++y)
    for (std::int64_t xx = 0; xx < map.dim(1); ++xx) {
      const float v = map.f32()[y * map.dim(1) + xx];
      if (patches.count({static_cast<int>(y / kPatch), static_cast<int>(xx / kPatch)})) {
        EXPECT_GT(v, 0.0f) << what << " pixel " << y << "," << xx;
        ++inside;
      } else {
        EXPECT_EQ(v, 0.0f) << what << " pixel " << y << "," << xx;
        ++outside;
      }
    }
  EXPECT_EQ(inside, static_cast<int>(patches.size()) * kPatch * kPatch) << what;
  EXPECT_GT(outside, 0) << what;
}

// The central token is (3, 2). Without attention its output sees its own
// patch and what the shift brings: Q-Shift its four neighbours, the 1-D shift
// the token before it in raster order, no shift nothing else.
TEST(ReceptiveField, LocalByConstruction) {
  expect_support(model(TokenShift::Q, WkvDirection::Bi, true), {{3, 2}, {3, 1}, {3, 3}, {2, 2}, {4, 2}}, "q-shift");
  expect_support(model(TokenShift::OneD, WkvDirection::Bi, true), {{3, 2}, {3, 1}}, "1-d shift");
  expect_support(model(TokenShift::None, WkvDirection::Bi, true), {{3, 2}}, "no shift");
}

// With attention and no shift: the uni-directional WKV sees the tokens up to
// the centre in raster order, the bidirectional one every token.
TEST(ReceptiveField, AttentionDirection) {
  std::set<std::pair<int, int>> causal, all;
  for (int r = 0; r < kGridH; ++r)
    for (int c = 0; c < kGridW; ++c) {
      all.insert({r, c});
      if (r * kGridW + c <= 3 * kGridW + 2) causal.insert({r, c});
    }
  expect_support(model(TokenShift::None, WkvDirection::Uni, false), causal, "uni");
  Model bi = model(TokenShift::None, WkvDirection::Bi, false);
  std::mt19937 rng(4);
  Tensor input(DType::F32, {2, 1, kGridH * kPatch, kGridW * kPatch});
  const std::vector<float> x = test::random_vector(input.numel(), rng);
  std::copy(x.begin(), x.end(), input.f32());
  const Tensor map = receptive_field(bi, input);
  for (std::int64_t i = 0; i < map.numel(); ++i) ASSERT_GT(map.f32()[i], 0.0f) << "bi pixel " << i;
}

bool have_fashion_mnist() {
  return access("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz", R_OK) == 0 ||
         access("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte", R_OK) == 0;
}

// The command: a figure and the raw maps for two models; its errors write nothing.
TEST_F(Cli, ErfWritesTheFigureAndTheMaps) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "Fashion-MNIST is not installed";
  const std::string m = std::string(VRWKV_SOURCE_DIR) + "/models/vrwkv_fashion_mnist.safetensors";
  CliResult r = run("erf --model " + m + " " + m + " --names a,b --data fashion-mnist:test -n 20 --batch 8 -o " +
                    path("erf.png") + " --json " + path("erf.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(test::slurp(path("erf.png")).substr(1, 3), "PNG");
  std::ifstream f(path("erf.json"));
  const nlohmann::json j = nlohmann::json::parse(f);
  ASSERT_EQ(j.at("models").size(), 2u);
  const auto& a = j.at("models").at(0);
  EXPECT_EQ(a.at("name"), "a");
  EXPECT_EQ(a.at("images"), 20);
  ASSERT_EQ(a.at("map").size(), 28u);
  EXPECT_EQ(a.at("map").at(0).size(), 28u);
  EXPECT_EQ(a.at("map"), j.at("models").at(1).at("map"));  // the same model twice: the same map
  // Positional models alone: no default model is added.
  r = run("erf " + m + " --data fashion-mnist:test -n 4 -o " + path("one.svg") + " --json " + path("one.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream f1(path("one.json"));
  EXPECT_EQ(nlohmann::json::parse(f1).at("models").size(), 1u);

  expect_input_error(run("erf --model " + m + " --data fashion-mnist:test -o " + path("x.jpg")), ".png or .svg");
  expect_input_error(run("erf --model " + m + " --names a,b --data fashion-mnist:test -o " + path("x.png")), "--names");
  expect_input_error(run("erf --model " + path("none.safetensors") + " --data fashion-mnist:test -o " + path("x.png")),
                     "none.safetensors");
  expect_input_error(run("erf --model " + m + " --data imagefolder:" + path("nothing") + " -o " + path("x.png") +
                         " --json " + path("x.json")),
                     "nothing");
  EXPECT_NE(access(path("x.png").c_str(), F_OK), 0);
  EXPECT_NE(access(path("x.json").c_str(), F_OK), 0);
}

}  // namespace
}  // namespace vrwkv
