// The ablation's variants of the VRWKV block (ABLATION.md B.3) beyond the
// golden forward and gradients (test_model_golden.cpp, test_backward.cpp) and
// the uni WKV operator (test_biwkv.cpp): the 1-D shift against its
// definition, every case through `vrwkv run` / `vrwkv grad` with the variant
// flags, the variant recorded in converted and trained models, and the
// errors of impossible combinations.
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cli_fixture.hpp"
#include "common.hpp"
#include "ops/qshift.hpp"
#include "vrwkv/train.hpp"
#include "vrwkv/model.hpp"

namespace vrwkv {
namespace {

using Vec = std::vector<float>;

// RWKV's token shift on a 1×T grid with every channel in the first group is
// out[t] = x[t−s] (zeros for t < s) within each image, for the fast and the
// reference mixes; the backward sends each gradient back s tokens later.
TEST(OneDShift, IsTheRasterOrderTokenShift) {
  std::mt19937 rng(3);
  const std::int64_t B = 2, C = 10;
  const ops::Grid image{5, 7};
  const ops::Grid grid = ops::one_d_shift_grid(image);
  const std::int64_t T = image.tokens(), n = B * T * C;
  for (const int s : {1, 2, 8}) {
    const Vec x = test::random_vector(n, rng), mu = test::random_vector(C, rng, 0, 1);
    Vec want(n), fast(n), ref(n);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t c = 0; c < C; ++c) {
          const std::int64_t j = (b * T + t) * C + c;
          const float xx = t >= s ? x[j - s * C] : 0.0f;
          want[j] = x[j] * mu[c] + xx * (1.0f - mu[c]);
        }
    const float* m[1] = {mu.data()};
    float* of[1] = {fast.data()};
    float* orf[1] = {ref.data()};
    ops::q_shift_mix(x.data(), B, grid, C, s, ops::kOneDShiftGamma, 1, m, of);
    ops::q_shift_mix_ref(x.data(), B, grid, C, s, ops::kOneDShiftGamma, 1, m, orf);
    // One multiply-add per element in float32 on both sides: within 1e-6 of |x| ≤ 1.
    EXPECT_LE(test::max_abs_diff(fast.data(), want.data(), n), 1e-6) << "s=" << s;
    EXPECT_LE(test::max_abs_diff(ref.data(), want.data(), n), 1e-6) << "s=" << s;

    const Vec dout = test::random_vector(n, rng);
    Vec dx(n), dxr(n), dmu(C), dmur(C), dx_want(n);
    const float* d[1] = {dout.data()};
    float* dm[1] = {dmu.data()};
    float* dmr[1] = {dmur.data()};
    ops::q_shift_mix_backward(x.data(), B, grid, C, s, ops::kOneDShiftGamma, 1, m, d, dx.data(), dm);
    ops::q_shift_mix_backward_ref(x.data(), B, grid, C, s, ops::kOneDShiftGamma, 1, m, d, dxr.data(), dmr);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t c = 0; c < C; ++c) {
          const std::int64_t j = (b * T + t) * C + c;
          dx_want[j] = dout[j] * mu[c] + (t + s < T ? dout[j + s * C] * (1.0f - mu[c]) : 0.0f);
        }
    EXPECT_LE(test::max_abs_diff(dx.data(), dx_want.data(), n), 1e-6) << "s=" << s;
    EXPECT_LE(test::max_abs_diff(dxr.data(), dx_want.data(), n), 1e-6) << "s=" << s;
    // dμ sums B·T = 70 products of magnitude ≤ 2 in float32, in two orders: their rounding
    // (≈ √70 · 2 · 6e-8 ≈ 1e-6) stays well within 1e-6 · B·T.
    EXPECT_LE(test::max_abs_diff(dmu.data(), dmur.data(), C), 1e-6 * B * T) << "s=" << s;
  }
}

// The variant options of a case's description: the json's variant (and
// shift distance) as flags.
std::string variant_flags(const nlohmann::json& j) {
  const auto& v = j.at("variant");
  const std::string impl = j.at("wkv_impl");
  std::string flags = " --wkv " + std::string(impl == "sum" || impl == "uni" ? "paper" : "official") + " --shift " +
                      v.at("shift").get<std::string>() + " --wkv-direction " +
                      v.at("wkv_direction").get<std::string>() + " --wkv-decay " + v.at("wkv_decay").get<std::string>();
  const int s = j.at("backbone").at("shift_pixel");
  if (s > 1) flags += " --shift-pixel " + std::to_string(s);
  return flags;
}

nlohmann::json description(const std::string& name) {
  std::ifstream f(test::case_path(name) + ".json");
  return nlohmann::json::parse(f);
}

const char* const kCases[] = {"ablation/ablation_shift_none",
                              "ablation/ablation_shift_1d",
                              "ablation/ablation_wkv_uni",
                              "ablation/ablation_rwkv_orig",
                              "data/ablation/abl_rwkv4_1d_uni_w96_in40x24",
                              "data/ablation/abl_rwkv4_q_uni_postnorm_in36x44",
                              "data/ablation/abl_none_uni_w128_keynorm_out01",
                              "data/ablation/abl_1d_bi_shift2_in32x48"};

// Every ablation case through the program with its variant flags: features,
// logits, loss and every gradient within 2e-5 / 5e-5 · max(1, max|golden|).
TEST_F(Cli, AblationRunAndGradReproduceEveryCase) {
  for (const char* name : kCases) {
    const nlohmann::json j = description(name);
    // The golden's own spelling of its flags, where it has one, is ours.
    if (j.contains("variant_cli")) {
      EXPECT_EQ(" " + j.at("variant_cli").get<std::string>(), variant_flags(j)) << name;
    }
    expect_cli_reproduces_case(name, variant_flags(j));
  }
}

// The variant flags change the result: without them a uni or 1-D case is the
// VRWKV model and misses its golden logits by far more than the tolerance.
TEST_F(Cli, AblationFlagsAreNeeded) {
  for (const char* name : {"ablation/ablation_wkv_uni", "ablation/ablation_shift_1d",
                           "data/ablation/abl_rwkv4_1d_uni_w96_in40x24"}) {
    const std::string base = test::case_path(name);
    const nlohmann::json j = description(name);
    std::string flags = variant_flags(j);
    flags = flags.substr(0, flags.find(" --shift "));  // the semantics only
    ASSERT_EQ(run("run --model " + test::golden_beside(name, j.at("checkpoint")) + flags + " --input " + base +
                  ".safetensors -o " + path("o.st"))
                  .code,
              0);
    const Tensor logits = read_safetensors(path("o.st")).at("logits");
    EXPECT_FALSE(test::close_to(logits, read_safetensors(base + ".safetensors").at("logits"), 100 * test::kForwardTol))
        << name;
  }
}

// A converted model records its variant: it runs without flags exactly as the
// checkpoint with them, and info names it.
TEST_F(Cli, AblationVariantIsRecordedInConvertedModels) {
  const std::string name = "data/ablation/abl_rwkv4_1d_uni_w96_in40x24";
  const nlohmann::json j = description(name);
  const std::string ckpt = test::golden_beside(name, j.at("checkpoint")), in = test::case_path(name) + ".safetensors";
  ASSERT_EQ(run("convert " + ckpt + " " + path("m.safetensors") + variant_flags(j)).code, 0);
  CliResult r = run("info " + path("m.safetensors"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("shift         1d"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("uni-directional (causal), w = exp(spatial_decay)"), std::string::npos) << r.out;
  ASSERT_EQ(run("run --model " + ckpt + variant_flags(j) + " --input " + in + " -o " + path("a.st")).code, 0);
  ASSERT_EQ(run("run --model " + path("m.safetensors") + " --input " + in + " -o " + path("b.st")).code, 0);
  EXPECT_EQ(test::slurp(path("a.st")), test::slurp(path("b.st")));
}

// Impossible combinations are one-line input errors that name the option, and write nothing.
TEST_F(Cli, AblationRefusesImpossibleVariants) {
  const auto cmd = [&](const std::string& model, const std::string& flags) {
    return "run --model " + test::golden(model + ".pth") + " --input " + test::golden(model + ".safetensors") +
           " -o " + path("o.st") + flags;
  };
  expect_input_error(run(cmd("tiny_default", " --shift diagonal")), "--shift");
  expect_input_error(run(cmd("tiny_default", " --wkv-direction both")), "--wkv-direction");
  expect_input_error(run(cmd("tiny_default", " --wkv-decay rwkv5")), "--wkv-decay");
  expect_input_error(run(cmd("tiny_default", " --wkv-decay rwkv4")), "--wkv-decay rwkv4");
  expect_input_error(run(cmd("tiny_default", " --shift none --shift-pixel 2")), "--shift none");
  expect_input_error(run(cmd("ablation/ablation_shift_none", " --shift q")), "--shift q");
  expect_input_error(run(cmd("ablation/ablation_shift_none", " --shift-pixel 1")), "no spatial_mix tensors");
  expect_input_error(run(cmd("v6/v6_tiny_default", " --shift 1d")), "--shift 1d");
  expect_input_error(run(cmd("v6/v6_tiny_default", " --wkv-direction uni")), "--wkv-direction");
  EXPECT_NE(access(path("o.st").c_str(), F_OK), 0);
}

// Training configurations take the variant (model.shift, model.wkv_direction,
// model.wkv_decay), refuse contradictions, and write it back.
TEST(AblationTrainConfig, VariantOptions) {
  const std::string model = R"("embed_dims": 16, "depth": 2, "patch_size": 7, "in_channels": 1, "image_size": [28, 28])";
  const train::TrainConfig c = train::train_config_from_json(
      R"({"model": {)" + model + R"(, "shift": "1d", "wkv_direction": "uni", "wkv_decay": "rwkv4"}})", "t.json");
  EXPECT_EQ(c.model.shift, TokenShift::OneD);
  EXPECT_EQ(c.model.wkv_direction, WkvDirection::Uni);
  EXPECT_EQ(c.model.wkv_decay, WkvDecay::Rwkv4);
  const train::TrainConfig again = train::train_config_from_json(train::train_config_to_json(c), "again");
  EXPECT_EQ(train::train_config_to_json(again), train::train_config_to_json(c));
  const train::TrainConfig none =
      train::train_config_from_json(R"({"model": {)" + model + R"(, "shift": "none"}})", "t.json");
  EXPECT_EQ(none.model.shift_pixel, 0);
  for (const std::string bad : {R"(, "shift": "2d")", R"(, "shift": "none", "shift_pixel": 1)",
                                R"(, "shift": "q", "shift_pixel": 0)", R"(, "wkv_decay": "rwkv4")",
                                R"(, "wkv_direction": "sideways")"})
    EXPECT_THROW(train::train_config_from_json(R"({"model": {)" + model + bad + "}}", "t.json"), Error) << bad;
  // A preset with a variant it cannot have is refused when the file is read, naming the file.
  try {
    train::train_config_from_json(R"({"model": {"preset": "vrwkv6_t", "wkv_direction": "uni"}})", "t.json");
    ADD_FAILURE() << "vrwkv6_t with wkv_direction uni was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("t.json"), std::string::npos) << e.what();
  }
}

// A variant given beside model.init says how to read the checkpoint (a .pth cannot tell it): the fine-tuned
// model is that variant, and a configuration without one keeps what the checkpoint records.
TEST(AblationTrainConfig, FineTuningAVariantCheckpoint) {
  const std::string init = test::golden("ablation/ablation_rwkv_orig.pth");
  train::TrainConfig tc = train::train_config_from_json(
      R"({"model": {"init": ")" + init + R"(", "shift": "1d", "wkv_direction": "uni"}})", "t.json");
  EXPECT_TRUE(tc.init_variant);
  struct Ten : train::Dataset {
    Ten() { class_names_.assign(10, "c"), name_ = "ten"; }
    std::int64_t size() const override { return 1; }
    std::int64_t label(std::int64_t) const override { return 0; }
    train::Image8 image(std::int64_t) const override { return {32, 32, 3, std::vector<std::uint8_t>(32 * 32 * 3)}; }
  } data;
  const Model m = train::initial_model(tc, data);
  EXPECT_EQ(m.architecture().shift, TokenShift::OneD);
  EXPECT_EQ(m.architecture().wkv_direction, WkvDirection::Uni);
  // Written back and read again (as --resume does), the variant stays.
  const train::TrainConfig again = train::train_config_from_json(train::train_config_to_json(tc), "again");
  EXPECT_TRUE(again.init_variant);
  EXPECT_EQ(train::initial_model(again, data).architecture().shift, TokenShift::OneD);
  // Without the keys: the checkpoint's own (a .pth: Q-Shift, bi), and none are written back.
  tc = train::train_config_from_json(R"({"model": {"init": ")" + init + R"("}})", "t.json");
  EXPECT_FALSE(tc.init_variant);
  EXPECT_EQ(train::initial_model(tc, data).architecture().shift, TokenShift::Q);
  EXPECT_EQ(train::train_config_to_json(tc).find("wkv_direction"), std::string::npos);
}

// A model trained with a variant records it; eval and info use it with no flags.
TEST_F(Cli, AblationTrainedModelKeepsItsVariant) {
  if (access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK) != 0 &&
      access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte", R_OK) != 0)
    GTEST_SKIP() << "Fashion-MNIST is not installed";
  write("c.json", R"({
    "model": {"embed_dims": 16, "depth": 2, "patch_size": 7, "in_channels": 1, "image_size": [28, 28],
              "shift": "1d", "wkv_direction": "uni", "wkv_decay": "rwkv4"},
    "data": {"train": "fashion-mnist:train", "val": "", "train_limit": 64},
    "epochs": 1, "batch_size": 16, "seed": 3})");
  CliResult r = run("train --threads 2 --no-progress -c " + path("c.json") + " -o " + path("run"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run("info " + path("run/model.safetensors"));
  EXPECT_NE(r.out.find("shift         1d"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("uni-directional (causal), w = exp(spatial_decay)"), std::string::npos) << r.out;
  r = run("eval --model " + path("run/model.safetensors") + " --data fashion-mnist:test --limit 32 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"top1\""), std::string::npos) << r.out;
}

}  // namespace
}  // namespace vrwkv
