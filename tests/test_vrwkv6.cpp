// VRWKV6 beyond the golden forward and gradients (test_model_golden.cpp,
// test_backward.cpp, test_wkv6.cpp): the presets' sizes against the official
// README, the initialisation rules, configuration inference and its errors,
// and the run / grad / info / convert contract of the program.
#include <nlohmann/json.hpp>

#include "cli_fixture.hpp"
#include "common.hpp"
#include "vrwkv/model.hpp"
#include "vrwkv/presets.hpp"

namespace vrwkv {
namespace {

std::int64_t parameters(const Architecture& a) {
  std::int64_t n = 0;
  for (const auto& [name, shape] : parameter_shapes(a)) n += shape_numel(shape);
  return n;
}

// VRWKV6.md A.2: the counts recomputed from the official module (README 7.6M / 27.7M / 104.9M) and the README's
// FLOPs at 224² (1.6G / 5.6G / 20.9G, rounded to 0.1 G; ours add the scans' 4·N·T·C, A.5).
TEST(Vrwkv6Presets, SizesAreTheOfficialOnes) {
  struct Want {
    const char* name;
    std::int64_t params;
    double gflops;
  };
  for (const Want& w : {Want{"vrwkv6_t", 7641256, 1.6}, Want{"vrwkv6_s", 27677032, 5.6},
                        Want{"vrwkv6_b", 104898280, 20.9}}) {
    const Config c = preset_config(w.name);
    EXPECT_EQ(c.arch.block, BlockKind::Vrwkv6) << w.name;
    EXPECT_EQ(parameters(c.arch), w.params) << w.name;
    const Model m = Model::from_state_dict(initial_parameters(c.arch, 0), c, w.name);
    EXPECT_NEAR(m.flops(224, 224) / 1e9, w.gflops, 0.05) << w.name;
  }
  EXPECT_EQ(parameter_shapes(preset_config("vrwkv6_t").arch).size(), 345u);  // VRWKV6-T has 345 tensors
}

// The fancy initialisation of VRWKV6.md A.3 at a few places (depth 12, C 192: r01 = i/11, r10 = 1 − i/12).
TEST(Vrwkv6Presets, InitialisationFollowsTheOfficialRules) {
  const Config c = preset_config("vrwkv6_t");
  const TensorMap p = initial_parameters(c.arch, 7);
  const auto at = [&](const std::string& name, std::int64_t i) { return double(p.at(name).f32()[i]); };
  const std::string b3 = "backbone.layers.3.att.";
  const double r01 = 3.0 / 11, r10 = 1 - 3.0 / 12, C = 192;
  EXPECT_NEAR(at(b3 + "time_maa_x", 50), 1 - std::pow(50 / C, r10), 1e-6);
  EXPECT_NEAR(at(b3 + "time_maa_v", 50), 1 - (std::pow(50 / C, r10) + 0.3 * r01), 1e-6);
  EXPECT_NEAR(at(b3 + "time_maa_g", 50), 1 - std::pow(50 / C, 0.5 * r10), 1e-6);
  EXPECT_NEAR(at(b3 + "time_decay", 50), -6 + 5 * std::pow(50 / (C - 1), 0.7 + 1.3 * r01), 1e-5);
  EXPECT_NEAR(at(b3 + "time_faaaa", 70), r01 * (1 - 70 / (C - 1)) + 0.1 * ((71 % 3) - 1), 1e-6);
  EXPECT_NEAR(at("backbone.layers.3.ffn.spatial_mix_k", 50), std::pow(50 / C, r10), 1e-6);
  EXPECT_EQ(at(b3 + "ln_x.weight", 5), 1.0);
  double lora = 0;
  for (const char* n : {"time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2"}) {
    const Tensor& t = p.at(b3 + n);
    lora = std::max(lora, test::max_abs(t.f32(), t.numel()));
  }
  EXPECT_LE(lora, 1e-4);
  EXPECT_GT(lora, 0.9e-4);
}

// Configuration inference: the kind from att.time_maa_w1, the head size from time_faaaa; a tensor whose shape
// breaks a rule is refused with its name.
TEST(Vrwkv6Config, InferenceAndErrors) {
  const TensorMap golden = [] {
    TensorMap sd;
    const Model m = test::load_golden_model("v6/v6_tiny_default");
    for (const auto& [name, t] : m.parameters()) sd.emplace(name, t.clone());
    return sd;
  }();
  const Config c = infer_config(golden, "v6");
  EXPECT_EQ(c.arch.block, BlockKind::Vrwkv6);
  EXPECT_EQ(c.arch.head_size, 64);
  EXPECT_EQ(c.arch.mix_rank, 32);
  EXPECT_EQ(c.arch.decay_rank, 64);
  EXPECT_EQ(c.arch.shift_pixel, 1);
  // A LoRA of the wrong width.
  TensorMap bad = golden;
  bad["backbone.layers.0.att.time_maa_w1"] = Tensor(DType::F32, {128, 150});
  const std::string e1 = test::input_error_of([&] { Model::from_state_dict(bad, infer_config(bad, "bad"), "bad"); });
  EXPECT_NE(e1.find("time_maa_w1"), std::string::npos) << e1;
  // Heads that do not make up the width.
  bad = golden;
  bad["backbone.layers.0.att.time_faaaa"] = Tensor(DType::F32, {3, 64});
  const std::string e2 = test::input_error_of([&] { infer_config(bad, "bad"); });
  EXPECT_NE(e2.find("time_faaaa"), std::string::npos) << e2;
  // Five LoRA blocks, not four.
  bad = golden;
  bad["backbone.layers.1.att.time_maa_w2"] = Tensor(DType::F32, {4, 32, 128});
  const std::string e3 = test::input_error_of([&] { infer_config(bad, "bad"); });
  EXPECT_NE(e3.find("time_maa_w2"), std::string::npos) << e3;
}

// `vrwkv run` and `vrwkv grad` on every VRWKV6 case (the goldens and tests/data/v6): features (each out index),
// logits, loss and every gradient within 2e-5 / 5e-5 · max(1, max|golden|).
TEST_F(Cli, Vrwkv6RunAndGradReproduceEveryCase) {
  for (const std::string name : {"v6/v6_tiny_default", "v6/v6_tiny_postnorm_ls_in37x27",
                                 "data/v6/v6_in48x40_pos8to12x10", "data/v6/v6_w192_postnorm_in40x56",
                                 "data/v6/v6_keynorm_out01"})
    expect_cli_reproduces_case(name, "");
}

// Options of the VRWKV block that VRWKV6 does not have are refused, not ignored.
TEST_F(Cli, Vrwkv6RefusesVrwkvOnlyOptions) {
  const std::string m = "run --model " + test::golden("v6/v6_tiny_default.pth") + " --input " +
                        test::golden("v6/v6_tiny_default.safetensors") + " -o " + path("o.st");
  expect_input_error(run(m + " --channel-gamma 0.125"), "--channel-gamma");
  expect_input_error(run(m + " --wkv paper"), "--wkv");
  EXPECT_NE(access(path("o.st").c_str(), F_OK), 0);
}

// info on a preset and on a checkpoint; convert keeps the kind (the same outputs from the converted file).
TEST_F(Cli, Vrwkv6InfoAndConvert) {
  CliResult r = run("info vrwkv6_t");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("block         vrwkv6"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("7641256"), std::string::npos) << r.out;
  const std::string ckpt = test::golden("v6/v6_tiny_postnorm_ls_in37x27.pth");
  const std::string in = test::golden("v6/v6_tiny_postnorm_ls_in37x27.safetensors");
  ASSERT_EQ(run("convert " + ckpt + " " + path("m.safetensors")).code, 0);
  r = run("info " + path("m.safetensors"));
  EXPECT_NE(r.out.find("heads         2 of 64"), std::string::npos) << r.out;
  ASSERT_EQ(run("run --model " + ckpt + " --input " + in + " --output " + path("a.st")).code, 0);
  ASSERT_EQ(run("run --model " + path("m.safetensors") + " --input " + in + " --output " + path("b.st")).code, 0);
  EXPECT_EQ(test::slurp(path("a.st")), test::slurp(path("b.st")));
}

}  // namespace
}  // namespace vrwkv
