// The model beyond the goldens: configurations, resolutions and batch sizes the
// goldens do not cover, fast path against reference path; loading errors.
#include <omp.h>

#include "common.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/model.hpp"

namespace vrwkv {
namespace {

// A random state dict for a configuration, values in ranges like trained ones.
TensorMap random_state_dict(const Config& c, std::mt19937& rng) {
  TensorMap sd;
  for (const auto& [name, shape] : parameter_shapes(c)) {
    Tensor t(DType::F32, shape);
    const bool decay = name.find("spatial_decay") != std::string::npos;
    const auto v = test::random_vector(t.numel(), rng, decay ? -5 : -0.3f, decay ? 3 : 0.3f);
    std::copy(v.begin(), v.end(), t.f32());
    if (name.find("spatial_mix") != std::string::npos || name.find("ln") != std::string::npos)
      for (std::int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = 0.5f + t.f32()[i];
    sd.emplace(name, t);
  }
  return sd;
}

struct Variant {
  const char* name;
  Config config;
  std::int64_t B, H, W;
};

std::vector<Variant> variants() {
  Config base;
  base.embed_dims = 40, base.depth = 3, base.patch_size = 4, base.hidden_dims = 120, base.pos_grid_h = 5,
  base.pos_grid_w = 6, base.num_classes = 7, base.out_indices = {2};
  std::vector<Variant> v;
  Config c = base;
  v.push_back({"default paper", c, 2, 20, 24});
  c.wkv = WkvSemantics::Official, c.wkv_chunks = 4;
  v.push_back({"official S=4, resized grid", c, 1, 33, 17});
  c = base, c.post_norm = true, c.layer_scale = true, c.key_norm = true, c.head = HeadKind::Mlp, c.head_hidden = 9;
  v.push_back({"post-norm, layer scale, key_norm, MLP head", c, 3, 9, 31});
  c = base, c.shift_pixel = 2, c.channel_gamma = 0.125, c.out_indices = {0, 2}, c.final_norm = false;
  v.push_back({"shift 2, gamma 1/8, two out indices, no final norm", c, 1, 24, 24});
  c = base, c.head = HeadKind::None, c.shift_pixel = 0;
  v.push_back({"no head, no shift, one token", c, 2, 3, 4});
  return v;
}

// The fast path with 1, 2 and 3 threads: B = 1, 2, 3 then run as one image
// group shared by a team of threads, or as one group per thread.
TEST(Model, FastPathMatchesReferenceOnVariants) {
  std::mt19937 rng(9);
  const int threads = omp_get_max_threads();
  for (const Variant& v : variants())
    for (int t : {1, 2, 3}) {
      const Model m = Model::from_state_dict(random_state_dict(v.config, rng), v.config);
      Tensor x(DType::F32, {v.B, 3, v.H, v.W});
      const auto data = test::random_vector(x.numel(), rng, -2, 2);
      std::copy(data.begin(), data.end(), x.f32());
      ForwardOptions fast, ref;
      fast.keep_blocks = ref.keep_blocks = true;
      ref.reference = true;
      omp_set_num_threads(t);
      const Outputs a = m.forward(x, fast);
      omp_set_num_threads(threads);
      const Outputs b = m.forward(x, ref);
      SCOPED_TRACE(std::to_string(t) + " threads");
      ASSERT_EQ(a.blocks.size(), b.blocks.size());
      for (std::size_t i = 0; i < a.blocks.size(); ++i)
        EXPECT_TRUE(test::close_to(a.blocks[i], b.blocks[i], test::kForwardTol)) << v.name << " block " << i;
      ASSERT_EQ(a.features.size(), v.config.out_indices.size()) << v.name;
      for (std::size_t i = 0; i < a.features.size(); ++i)
        EXPECT_TRUE(test::close_to(a.features[i], b.features[i], test::kForwardTol)) << v.name << " features " << i;
      if (v.config.head != HeadKind::None) {
        EXPECT_EQ(a.logits.shape(), (Shape{v.B, v.config.num_classes})) << v.name;
        EXPECT_TRUE(test::close_to(a.logits, b.logits, test::kForwardTol)) << v.name;
      }
    }
}

// Images of a batch are independent: running them together or one by one
// gives the same result.
TEST(Model, BatchIsIndependentPerImage) {
  std::mt19937 rng(10);
  const Variant v = variants()[0];
  const Model m = Model::from_state_dict(random_state_dict(v.config, rng), v.config);
  Tensor x(DType::F32, {3, 3, 16, 12});
  const auto data = test::random_vector(x.numel(), rng, -2, 2);
  std::copy(data.begin(), data.end(), x.f32());
  const Outputs all = m.forward(x);
  for (std::int64_t b = 0; b < 3; ++b) {
    Tensor one = x.view(b * 3 * 16 * 12, {1, 3, 16, 12}).clone();
    const Outputs o = m.forward(one);
    const Tensor row = all.logits.view(b * v.config.num_classes, {1, v.config.num_classes});
    EXPECT_TRUE(test::close_to(o.logits, row, 1e-6)) << "image " << b;
  }
}

TEST(Model, RejectsWrongInputShape) {
  std::mt19937 rng(12);
  const Variant v = variants()[0];
  const Model m = Model::from_state_dict(random_state_dict(v.config, rng), v.config);
  EXPECT_THROW(m.forward(Tensor(DType::F32, {1, 4, 8, 8})), Error);
  EXPECT_THROW(m.forward(Tensor(DType::F32, {3, 8, 8})), Error);
  EXPECT_THROW(m.forward(Tensor(DType::F64, {1, 3, 8, 8})), Error);
  EXPECT_THROW(m.forward(Tensor(DType::F32, {0, 3, 8, 8})), Error);
}

TEST(Model, MissingOrMisshapenTensorIsAnInputError) {
  std::mt19937 rng(13);
  const Config c = variants()[0].config;
  TensorMap sd = random_state_dict(c, rng);
  TensorMap missing = sd;
  missing.erase("backbone.layers.1.att.key.weight");
  try {
    Model::from_state_dict(missing, c, "m.pth");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Error::Kind::Input);
    EXPECT_NE(std::string(e.what()).find("m.pth: missing tensor 'backbone.layers.1.att.key.weight'"),
              std::string::npos) << e.what();
  }
  TensorMap wrong = sd;
  wrong["backbone.layers.0.ffn.key.weight"] = Tensor(DType::F32, {3, 3});
  EXPECT_THROW(Model::from_state_dict(wrong, c, "m.pth"), Error);
}

TEST(Model, InferredConfigRoundTripsAndOverridesApply) {
  std::mt19937 rng(14);
  Config c = variants()[2].config;
  const TensorMap sd = random_state_dict(c, rng);
  const Config inferred = infer_config(sd, "x");
  EXPECT_EQ(inferred.embed_dims, c.embed_dims);
  EXPECT_EQ(inferred.hidden_dims, c.hidden_dims);
  EXPECT_EQ(inferred.head, HeadKind::Mlp);
  EXPECT_EQ(inferred.head_hidden, 9);
  EXPECT_TRUE(inferred.key_norm && inferred.layer_scale && inferred.post_norm);
  EXPECT_EQ(inferred.pos_grid_h, 30);  // 5×6 is not square: the length, until --pos-grid says otherwise
  Config o = inferred;
  ConfigOverrides ov;
  ov.pos_grid_h = 5, ov.pos_grid_w = 6, ov.post_norm = false, ov.out_indices = std::vector<std::int64_t>{-1, 0};
  apply_overrides(o, ov, "x");
  EXPECT_EQ(o.pos_grid_w, 6);
  EXPECT_FALSE(o.post_norm);
  EXPECT_EQ(o.out_indices, (std::vector<std::int64_t>{0, 2}));
  ConfigOverrides bad;
  bad.out_indices = std::vector<std::int64_t>{3};
  EXPECT_THROW(apply_overrides(o, bad, "x"), Error);
  bad = {};
  bad.channel_gamma = 0.3;
  EXPECT_THROW(apply_overrides(o, bad, "x"), Error);
  EXPECT_EQ(config_from_json(config_to_json(c), "x").head_hidden, c.head_hidden);
}

}  // namespace
}  // namespace vrwkv

namespace vrwkv {
namespace {

// The backbone of a detection/segmentation checkpoint (VRWKV.md 5.4): adapter
// and head keys are ignored and listed; there is no final norm. Also the
// DataParallel "module." prefix and a backbone saved without "backbone.".
TEST(Model, LoadsBackbonePartOfDenseCheckpoints) {
  std::mt19937 rng(15);
  Config c = variants()[0].config;
  c.final_norm = false;
  c.head = HeadKind::None;
  const TensorMap sd = random_state_dict(c, rng);
  const std::string path = ::testing::TempDir() + "vrwkv_dense.safetensors";
  TensorMap dense = sd;
  for (const char* extra : {"backbone.level_embed", "backbone.spm.stem.0.weight", "neck.fpn_convs.0.conv.weight",
                            "decode_head.conv_seg.weight"})
    dense.emplace(extra, Tensor(DType::F32, {2}));
  write_safetensors(path, dense);
  LoadReport report;
  const Model m = Model::load(path, {}, &report);
  EXPECT_FALSE(m.config().final_norm);
  EXPECT_EQ(m.config().head, HeadKind::None);
  EXPECT_EQ(report.ignored.size(), 4u);

  TensorMap prefixed, bare;
  for (const auto& [k, t] : sd) {
    prefixed.emplace("module." + k, t);
    bare.emplace(k.substr(std::string("backbone.").size()), t);
  }
  for (const TensorMap* variant : {&prefixed, &bare}) {
    write_safetensors(path, *variant);
    const Model v = Model::load(path);
    EXPECT_EQ(v.parameter_count(), m.parameter_count());
  }
  std::remove(path.c_str());
}

}  // namespace
}  // namespace vrwkv
