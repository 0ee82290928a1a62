// Every golden model case of ../shared/golden (README "Cases"): the official
// checkpoint read directly, run in the case's Bi-WKV semantics, compared
// tensor by tensor (embed, every block, features, pooled, logits) on both the
// fast and the reference path.
#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common.hpp"
#include "vrwkv/model.hpp"

namespace vrwkv {
namespace {

struct Case {
  nlohmann::json json;
  TensorMap golden;
  Model model;
};

Case load_case(const std::string& name) {
  nlohmann::json j;
  Model m = test::load_golden_model(name, &j);
  return {j, read_safetensors(test::golden_beside(name, j.at("safetensors"))), std::move(m)};
}

// The configuration inferred from the checkpoint equals the one that made it.
void check_config(const Case& c) {
  const auto& bb = c.json.at("backbone");
  const Config& cfg = c.model.config();
  EXPECT_EQ(cfg.arch.embed_dims, bb.at("embed_dims").get<std::int64_t>());
  EXPECT_EQ(cfg.arch.depth, bb.at("depth").get<std::int64_t>());
  EXPECT_EQ(cfg.arch.patch_size, bb.at("patch_size").get<std::int64_t>());
  EXPECT_EQ(cfg.arch.hidden_dims, cfg.arch.embed_dims * bb.at("hidden_rate").get<std::int64_t>());
  EXPECT_EQ(cfg.arch.post_norm, bb.at("post_norm").get<bool>());
  EXPECT_EQ(cfg.arch.key_norm, bb.at("key_norm").get<bool>());
  EXPECT_EQ(cfg.arch.final_norm, bb.at("final_norm").get<bool>());
  EXPECT_EQ(cfg.arch.shift_pixel, bb.at("shift_pixel").get<int>());
  EXPECT_EQ(cfg.arch.layer_scale, !bb.at("init_values").is_null());
  EXPECT_EQ(cfg.arch.num_classes, c.json.at("num_classes").get<std::int64_t>());
  EXPECT_EQ(cfg.arch.pos_grid_h, c.json.at("train_grid").at(0).get<std::int64_t>());
  EXPECT_EQ(cfg.arch.pos_grid_w, c.json.at("train_grid").at(1).get<std::int64_t>());
  const bool v6 = c.json.value("model", "") == "VRWKV6";
  EXPECT_EQ(cfg.arch.block, v6 ? BlockKind::Vrwkv6 : BlockKind::Vrwkv);
  if (v6) {
    EXPECT_EQ(cfg.arch.embed_dims / cfg.arch.head_size, bb.at("num_heads").get<std::int64_t>());
  }
}

void check_outputs(const Case& c, bool reference) {
  ForwardOptions opt;
  opt.keep_blocks = true;
  opt.reference = reference;
  const Outputs out = c.model.forward(c.golden.at("input"), opt);
  const std::string path = reference ? " (reference path)" : " (fast path)";
  const TensorMap& g = c.golden;
  EXPECT_TRUE(test::close_to(out.embed, g.at("embed"), test::kForwardTol)) << "embed" << path;
  for (std::size_t i = 0; i < out.blocks.size(); ++i) {
    const std::string key = "block." + std::to_string(i);
    ASSERT_TRUE(g.count(key)) << key;
    EXPECT_TRUE(test::close_to(out.blocks[i], g.at(key), test::kForwardTol)) << key << path;
  }
  EXPECT_EQ(out.blocks.size(), static_cast<std::size_t>(c.model.config().arch.depth));
  const auto& idx = c.model.config().run.out_indices;
  if (idx.size() > 1)
    for (std::size_t i = 0; i < idx.size(); ++i) {
      const std::string key = "features." + std::to_string(idx[i]);
      ASSERT_TRUE(g.count(key)) << key;
      EXPECT_TRUE(test::close_to(out.features[i], g.at(key), test::kForwardTol)) << key << path;
    }
  EXPECT_TRUE(test::close_to(out.features.back(), g.at("features"), test::kForwardTol)) << "features" << path;
  EXPECT_TRUE(test::close_to(out.pooled, g.at("pooled"), test::kForwardTol)) << "pooled" << path;
  EXPECT_TRUE(test::close_to(out.logits, g.at("logits"), test::kForwardTol)) << "logits" << path;
}

class GoldenModel : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenModel, FastPathMatches) {
  const Case c = load_case(GetParam());
  check_config(c);
  check_outputs(c, false);
}

TEST_P(GoldenModel, ReferencePathMatches) { check_outputs(load_case(GetParam()), true); }

INSTANTIATE_TEST_SUITE_P(Cases, GoldenModel,
                         ::testing::Values("tiny_default", "tiny_postnorm_ls0p5", "tiny_keynorm", "tiny_shift0",
                                           "tiny_in37x27_pad", "tiny_outidx01_nofinalnorm", "tiny_default_kernelwkv",
                                           "vrwkv_t_224_b2", "vrwkv_t_224_b2_kernel32", "v6/v6_tiny_default",
                                           "v6/v6_tiny_postnorm_ls_in37x27",
                                           // VRWKV6 acceptance cases (tests/data/v6, tools/v6_pytorch.py):
                                           // another resolution with the pos-embed resized, width 192 with
                                           // post-norm, key norms with two out indices.
                                           "data/v6/v6_in48x40_pos8to12x10", "data/v6/v6_w192_postnorm_in40x56",
                                           "data/v6/v6_keynorm_out01",
                                           // The ablation's variants (golden/ablation).
                                           "ablation/ablation_shift_none", "ablation/ablation_shift_1d",
                                           "ablation/ablation_wkv_uni", "ablation/ablation_rwkv_orig",
                                           // Acceptance cases (tests/data/ablation, tools/ablation_pytorch.py):
                                           // other sizes and resolutions, RWKV-4's decay, shift 2, key norms.
                                           "data/ablation/abl_rwkv4_1d_uni_w96_in40x24",
                                           "data/ablation/abl_rwkv4_q_uni_postnorm_in36x44",
                                           "data/ablation/abl_none_uni_w128_keynorm_out01",
                                           "data/ablation/abl_1d_bi_shift2_in32x48"),
                         [](const ::testing::TestParamInfo<std::string>& p) {
                           std::string name = p.param;
                           std::replace(name.begin(), name.end(), '/', '_');
                           return name;
                         });

}  // namespace
}  // namespace vrwkv
