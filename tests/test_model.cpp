// The model beyond the goldens: configurations, resolutions and batch sizes the
// goldens do not cover, fast path against reference path; loading errors.
#include <omp.h>
#include <cmath>
#include <functional>
#include <limits>

#include "common.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/model.hpp"
#include "vrwkv/presets.hpp"

namespace vrwkv {
namespace {

// A random state dict for a configuration, values in ranges like trained ones.
TensorMap random_state_dict(const Config& c, std::mt19937& rng) {
  TensorMap sd;
  for (const auto& [name, shape] : parameter_shapes(c.arch)) {
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
  base.arch.embed_dims = 40, base.arch.depth = 3, base.arch.patch_size = 4, base.arch.hidden_dims = 120, base.arch.pos_grid_h = 5,
  base.arch.pos_grid_w = 6, base.arch.num_classes = 7, base.run.out_indices = {2};
  std::vector<Variant> v;
  Config c = base;
  v.push_back({"default paper", c, 2, 20, 24});
  c.run.wkv = WkvSemantics::Official, c.run.wkv_chunks = 4;
  v.push_back({"official S=4, resized grid", c, 1, 33, 17});
  c = base, c.arch.post_norm = true, c.arch.layer_scale = true, c.arch.key_norm = true, c.arch.head = HeadKind::Mlp, c.arch.head_hidden = 9;
  v.push_back({"post-norm, layer scale, key_norm, MLP head", c, 3, 9, 31});
  c = base, c.arch.shift_pixel = 2, c.arch.channel_gamma = 0.125, c.run.out_indices = {0, 2}, c.arch.final_norm = false;
  v.push_back({"shift 2, gamma 1/8, two out indices, no final norm", c, 1, 24, 24});
  c = base, c.arch.head = HeadKind::None, c.arch.shift_pixel = 0, c.arch.shift = TokenShift::None;
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
      ASSERT_EQ(a.features.size(), v.config.run.out_indices.size()) << v.name;
      for (std::size_t i = 0; i < a.features.size(); ++i)
        EXPECT_TRUE(test::close_to(a.features[i], b.features[i], test::kForwardTol)) << v.name << " features " << i;
      if (v.config.arch.head != HeadKind::None) {
        EXPECT_EQ(a.logits.shape(), (Shape{v.B, v.config.arch.num_classes})) << v.name;
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
    const Tensor row = all.logits.view(b * v.config.arch.num_classes, {1, v.config.arch.num_classes});
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
  EXPECT_EQ(inferred.arch.embed_dims, c.arch.embed_dims);
  EXPECT_EQ(inferred.arch.hidden_dims, c.arch.hidden_dims);
  EXPECT_EQ(inferred.arch.head, HeadKind::Mlp);
  EXPECT_EQ(inferred.arch.head_hidden, 9);
  EXPECT_TRUE(inferred.arch.key_norm && inferred.arch.layer_scale && inferred.arch.post_norm);
  EXPECT_EQ(inferred.arch.pos_grid_h, 30);  // 5×6 is not square: the length, until --pos-grid says otherwise
  Config o = inferred;
  ConfigOverrides ov;
  ov.pos_grid_h = 5, ov.pos_grid_w = 6, ov.post_norm = false, ov.out_indices = std::vector<std::int64_t>{-1, 0};
  apply_overrides(o, ov, "x");
  EXPECT_EQ(o.arch.pos_grid_w, 6);
  EXPECT_FALSE(o.arch.post_norm);
  EXPECT_EQ(o.run.out_indices, (std::vector<std::int64_t>{0, 2}));
  ConfigOverrides bad;
  bad.out_indices = std::vector<std::int64_t>{3};
  EXPECT_THROW(apply_overrides(o, bad, "x"), Error);
  bad = {};
  bad.channel_gamma = 0.3;
  EXPECT_THROW(apply_overrides(o, bad, "x"), Error);
  EXPECT_EQ(config_from_json(config_to_json(c), "x").arch.head_hidden, c.arch.head_hidden);
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
  c.arch.final_norm = false;
  c.arch.head = HeadKind::None;
  const TensorMap sd = random_state_dict(c, rng);
  const std::string path = ::testing::TempDir() + "vrwkv_dense.safetensors";
  TensorMap dense = sd;
  for (const char* extra : {"backbone.level_embed", "backbone.spm.stem.0.weight", "neck.fpn_convs.0.conv.weight",
                            "decode_head.conv_seg.weight"})
    dense.emplace(extra, Tensor(DType::F32, {2}));
  write_safetensors(path, dense);
  LoadReport report;
  const Model m = Model::load(path, {}, &report);
  EXPECT_FALSE(m.config().arch.final_norm);
  EXPECT_EQ(m.config().arch.head, HeadKind::None);
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

namespace vrwkv {
namespace {

// Impossible values are refused by one check, whatever their source (file
// metadata, flags, a training configuration), before parameters are allocated.
TEST(ModelConfig, ImpossibleValuesAreRefusedBeforeAllocation) {
  Config good;
  good.run.out_indices = {11};
  check_config(good, "x");
  const auto refused = [&](const std::function<void(Config&)>& change, const char* what) {
    Config c = good;
    change(c);
    EXPECT_THROW(check_config(c, "x"), Error) << what;
    // The same value in safetensors metadata.
    EXPECT_THROW(config_from_json(config_to_json(c), "m.safetensors"), Error) << what;
  };
  // Numbers no integer holds, written as floats (converting them would be undefined): refused.
  for (const char* key : {"\"embed_dims\": 192", "\"depth\": 12", "\"wkv_chunks\": 32", "\"shift_pixel\": 1"}) {
    std::string text = config_to_json(good);
    const std::string k(key), name = k.substr(0, k.find(':'));
    const std::size_t at = text.find(name + ":");
    ASSERT_NE(at, std::string::npos) << text;
    const std::size_t end = text.find_first_of(",}", at);
    text = text.substr(0, at) + name + ":1.5e300" + text.substr(end);
    EXPECT_NE(test::input_error_of([&] { config_from_json(text, "m.safetensors"); }).find("whole number"),
              std::string::npos)
        << text;
  }
  refused([](Config& c) { c.arch.depth = 0; }, "depth 0");
  refused([](Config& c) { c.arch.depth = -1; }, "depth -1");
  refused([](Config& c) { c.arch.depth = 1000000; }, "depth 1e6");
  refused([](Config& c) { c.arch.embed_dims = 2147483648LL; }, "embed_dims 2^31");
  refused([](Config& c) { c.arch.patch_size = 0; }, "patch 0");
  refused([](Config& c) { c.arch.pos_grid_h = 20000; }, "pos grid");
  refused([](Config& c) { c.run.out_indices = {99}; }, "out index 99");
  refused([](Config& c) { c.run.out_indices = {}; }, "no out index");
  refused([](Config& c) { c.run.out_indices = {5, 3}; }, "descending out indices");
  refused([](Config& c) { c.run.wkv_chunks = 0; }, "chunks 0");
  refused([](Config& c) { c.arch.channel_gamma = 0.5; }, "gamma 0.5");
  refused([](Config& c) { c.arch.num_classes = 0; }, "a head of no classes");
  refused([](Config& c) { c.labels = {"a", "b"}; }, "2 names for 1000 classes");
  refused([](Config& c) { c.preprocessing = {Preprocess::Resize, {0, std::nanf(""), 0}, {1, 1, 1}}; }, "NaN mean");
}

// A non-finite weight is refused at load, a non-finite input at the forward.
TEST(ModelConfig, NonFiniteWeightsAndInputsAreRefused) {
  Config c;
  c.arch.embed_dims = 8, c.arch.hidden_dims = 16, c.arch.depth = 1, c.arch.patch_size = 4, c.arch.num_classes = 3;
  c.arch.pos_grid_h = c.arch.pos_grid_w = 2;
  c.run.out_indices = {0};
  TensorMap p = initial_parameters(c.arch, 1);
  const Model model = Model::from_state_dict(p, c);
  Tensor input(DType::F32, {1, 3, 8, 8});
  input.f32()[17] = std::numeric_limits<float>::infinity();
  try {
    model.forward(input);
    ADD_FAILURE() << "an infinite pixel was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Error::Kind::Input);
    EXPECT_NE(std::string(e.what()).find("element 17"), std::string::npos) << e.what();
  }
  p.at("backbone.layers.0.att.key.weight").f32()[3] = std::nanf("");
  try {
    Model::from_state_dict(p, c, "m.pth");
    ADD_FAILURE() << "a NaN weight was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Error::Kind::Input);
    EXPECT_NE(std::string(e.what()).find("m.pth: tensor 'backbone.layers.0.att.key.weight' holds a non-finite"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace vrwkv
