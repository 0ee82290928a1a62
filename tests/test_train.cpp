// The training loop: AdamW, clipping and the schedule against their
// definitions, the configuration file, fine-tuning with a new head, and
// resuming — after a clean stop and after SIGKILL at a random step — giving
// bit-identical final weights.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "common.hpp"
#include "vrwkv/distributed.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/optimizer.hpp"
#include "vrwkv/presets.hpp"
#include "vrwkv/train.hpp"

namespace vrwkv {
namespace {

namespace fs = std::filesystem;

// mmcls paramwise_cfg norm_decay_mult = bias_decay_mult = 0, by name: no
// decay on biases and on LayerNorm weights (the 1-D ".weight" tensors).
bool mmcls_decays(const std::string& name, const Shape& shape) {
  if (name.ends_with(".bias")) return false;
  return !(name.ends_with(".weight") && shape.size() == 1);
}

TEST(AdamW, MatchesPyTorchUpdateRule) {
  Config c;
  c.arch.embed_dims = 4, c.arch.hidden_dims = 8, c.arch.depth = 1, c.arch.patch_size = 2, c.arch.num_classes = 2, c.arch.pos_grid_h = 1;
  c.arch.pos_grid_w = 1, c.run.out_indices = {0};
  const auto shapes = parameter_shapes(c.arch);
  std::int64_t P = 0;
  for (const auto& [name, shape] : shapes) P += shape_numel(shape);
  train::AdamWOptions o;
  o.lr = 0.01, o.weight_decay = 0.1;
  train::AdamW opt(c.arch, o);
  std::mt19937 rng(3);
  std::vector<float> theta = test::random_vector(P, rng), ref(theta.begin(), theta.end());
  std::vector<double> m(P), v(P);
  for (int t = 1; t <= 3; ++t) {
    const std::vector<float> g = test::random_vector(P, rng);
    const double lr = 0.01 * t;
    opt.step(theta.data(), g.data(), lr);
    // torch.optim.AdamW, in float64: decoupled decay, bias-corrected moments.
    std::int64_t i = 0;
    for (const auto& [name, shape] : shapes)
      for (std::int64_t j = 0; j < shape_numel(shape); ++j, ++i) {
        m[i] = 0.9 * m[i] + 0.1 * g[i];
        v[i] = 0.999 * v[i] + 0.001 * double(g[i]) * g[i];
        double p = ref[i];
        if (mmcls_decays(name, shape)) p *= 1 - lr * 0.1;
        p -= lr / (1 - std::pow(0.9, t)) * m[i] / (std::sqrt(v[i] / (1 - std::pow(0.999, t))) + 1e-8);
        ref[i] = static_cast<float>(p);
      }
  }
  // float32 state against float64: a few ulp of |θ| ≤ 1 after three steps.
  EXPECT_LE(test::max_abs_diff(theta.data(), ref.data(), P), 1e-6);
}

// ZeRO-1: AdamW over slices of the parameters, one per rank, updates every element exactly as the whole does.
TEST(AdamW, SlicesUpdateExactlyAsTheWhole) {
  const Architecture a = preset_config("vrwkv_t").arch;
  std::int64_t P = 0;
  for (const auto& [name, shape] : parameter_shapes(a)) P += shape_numel(shape);
  train::AdamWOptions o;
  o.weight_decay = 0.05;
  std::mt19937 rng(5);
  const std::vector<float> start = test::random_vector(P, rng);
  std::vector<float> whole = start, sliced = start;
  train::AdamW full(a, o);
  const std::vector<std::int64_t> cut = train::even_slices(P, 3);
  std::vector<train::AdamW> parts;
  for (int r = 0; r < 3; ++r) parts.emplace_back(a, o, cut[r], cut[r + 1]);
  for (int t = 1; t <= 3; ++t) {
    const std::vector<float> g = test::random_vector(P, rng);
    full.step(whole.data(), g.data(), 1e-3 * t);
    for (train::AdamW& part : parts) part.step(sliced.data(), g.data(), 1e-3 * t);
  }
  EXPECT_EQ(0, std::memcmp(whole.data(), sliced.data(), P * sizeof(float)));
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(parts[r].begin(), cut[r]);
    EXPECT_EQ(0, std::memcmp(parts[r].m().f32(), full.m().f32() + cut[r], (cut[r + 1] - cut[r]) * sizeof(float)));
  }
  EXPECT_THROW(train::AdamW(a, o, 10, 5), Error);
  EXPECT_THROW(train::AdamW(a, o, 0, P + 1), Error);
}

TEST(AdamW, NoDecayRulesOfMmcls) {
  // VRWKV-L has every kind of parameter (layer scale, key norms, MLP head).
  Architecture l = preset_config("vrwkv_l").arch;
  EXPECT_FALSE(train::is_decayed(l, "backbone.layers.0.ln1.weight"));
  EXPECT_FALSE(train::is_decayed(l, "backbone.layers.0.att.key_norm.bias"));
  EXPECT_FALSE(train::is_decayed(l, "head.2.bias"));
  EXPECT_FALSE(train::is_decayed(l, "backbone.patch_embed.projection.bias"));
  EXPECT_TRUE(train::is_decayed(l, "backbone.layers.0.att.key.weight"));
  EXPECT_TRUE(train::is_decayed(l, "backbone.pos_embed"));
  EXPECT_TRUE(train::is_decayed(l, "backbone.layers.0.att.spatial_decay"));
  EXPECT_TRUE(train::is_decayed(l, "backbone.layers.0.att.spatial_mix_k"));
  EXPECT_TRUE(train::is_decayed(l, "backbone.layers.0.gamma1"));
  EXPECT_TRUE(train::is_decayed(l, "backbone.patch_embed.projection.weight"));
  EXPECT_THROW(train::is_decayed(l, "backbone.layers.0.att.nothing"), Error);
  // The table's decay column is mmcls's rule for every parameter.
  l.depth = 2;
  for (const Architecture& a : std::vector<Architecture>{l, preset_config("vrwkv_t").arch})
    for (const auto& [name, shape] : parameter_shapes(a)) EXPECT_EQ(train::is_decayed(a, name), mmcls_decays(name, shape)) << name;
}

TEST(Optimizer, ClipAndSchedule) {
  std::vector<float> g = {3, 4, 0, 0};  // norm 5
  EXPECT_DOUBLE_EQ(train::clip_grad_norm(g.data(), 4, 10.0), 5.0);
  EXPECT_EQ(g[0], 3.0f);  // under the limit: untouched
  EXPECT_NEAR(train::clip_grad_norm(g.data(), 4, 1.0), 5.0, 1e-12);
  EXPECT_NEAR(std::hypot(g[0], g[1]), 1.0, 1e-6);
  train::Schedule s;
  s.base_lr = 1e-3, s.min_lr_ratio = 1e-2, s.warmup_iters = 10, s.warmup_ratio = 1e-3, s.total_iters = 100;
  EXPECT_NEAR(s.lr(0), 1e-3 * 1e-3, 1e-15);                   // warm-up starts at ratio·lr
  EXPECT_NEAR(s.lr(100), 1e-5, 1e-15);                        // cosine ends at min_lr
  EXPECT_NEAR(s.lr(50), 1e-5 + (1e-3 - 1e-5) * 0.5, 1e-15);   // half-way
  const double cos10 = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + std::cos(M_PI * 0.1));
  EXPECT_NEAR(s.lr(10), cos10, 1e-15);  // warm-up over
  // mmcv scales the regular (cosine) lr by the warm-up factor 1 − (1 − i/warmup)·(1 − ratio).
  EXPECT_NEAR(s.lr(5), (1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + std::cos(M_PI * 0.05))) * (1 - 0.5 * (1 - 1e-3)), 1e-15);
}

TEST(TrainConfig, JsonRoundTripAndErrors) {
  std::ifstream f(std::string(VRWKV_SOURCE_DIR) + "/configs/fashion_mnist.json");
  std::stringstream text;
  text << f.rdbuf();
  const train::TrainConfig c = train::train_config_from_json(text.str(), "fashion_mnist.json");
  const std::string again = train::train_config_to_json(train::train_config_from_json(train::train_config_to_json(c), "x"));
  EXPECT_EQ(again, train::train_config_to_json(c));
  EXPECT_THROW(train::train_config_from_json(R"({"epochz": 3})", "t.json"), Error);
  EXPECT_THROW(train::train_config_from_json(R"({"optim": {"lr": -1}})", "t.json"), Error);
  EXPECT_THROW(train::train_config_from_json(R"({"model": {"image_size": [30, 28], "patch_size": 4}})", "t.json"),
               Error);
  EXPECT_THROW(train::train_config_from_json(R"({"batch_size": "big"})", "t.json"), Error);
  EXPECT_THROW(train::train_config_from_json("{", "t.json"), Error);
  // The VRWKV6 configuration round-trips; VRWKV-only keys and head sizes beside presets are refused.
  std::ifstream f6(std::string(VRWKV_SOURCE_DIR) + "/configs/fashion_mnist_vrwkv6.json");
  std::stringstream text6;
  text6 << f6.rdbuf();
  const train::TrainConfig c6 = train::train_config_from_json(text6.str(), "fashion_mnist_vrwkv6.json");
  EXPECT_EQ(c6.model.block, BlockKind::Vrwkv6);
  EXPECT_EQ(c6.model.head_size, 32);
  EXPECT_EQ(train::train_config_to_json(train::train_config_from_json(train::train_config_to_json(c6), "x")),
            train::train_config_to_json(c6));
  for (const char* bad : {R"({"model": {"block": "vrwkv6", "channel_gamma": 0.25, "embed_dims": 64, "depth": 1,
                                        "patch_size": 4}})",
                          R"({"model": {"preset": "vrwkv6_t", "head_size": 32}})",
                          R"({"model": {"head_size": 32, "embed_dims": 64, "depth": 1, "patch_size": 4}})",
                          R"({"model": {"block": "vrwkv7"}})"})
    EXPECT_THROW(train::train_config_from_json(bad, "t.json"), Error) << bad;
}

// Fine-tuning an official checkpoint on a dataset with other classes: the
// backbone is kept, the head replaced, the semantics switched to paper.
TEST(TrainModel, FineTuneReplacesTheHead) {
  const std::string dir = ::testing::TempDir() + "vrwkv_finetune_" + std::to_string(getpid());
  for (const char* cls : {"a", "b", "c"}) {
    fs::create_directories(dir + "/" + cls);
    fs::copy_file(std::string(VRWKV_SOURCE_DIR) + "/data/samples/text.png", dir + "/" + cls + "/x.png");
  }
  train::TrainConfig tc;
  tc.init = test::golden("tiny_default.pth");
  const auto data = train::open_dataset("imagefolder:" + dir);
  const Model m = train::initial_model(tc, *data);
  const Model start = Model::load(tc.init);
  EXPECT_EQ(m.config().arch.num_classes, 3);
  EXPECT_EQ(m.config().run.wkv, WkvSemantics::Paper);
  EXPECT_EQ(m.parameters().at("head.fc.weight").shape(), (Shape{3, 64}));
  const Tensor &a = m.parameters().at("backbone.layers.1.att.key.weight"),
               &b = start.parameters().at("backbone.layers.1.att.key.weight");
  EXPECT_EQ(test::max_abs_diff(a.f32(), b.f32(), a.numel()), 0.0);
  // A VRWKV6 checkpoint fine-tunes the same way (it has no Bi-WKV semantics to set).
  tc.init = test::golden("v6/v6_tiny_default.pth");
  const Model m6 = train::initial_model(tc, *data);
  EXPECT_EQ(m6.config().arch.block, BlockKind::Vrwkv6);
  EXPECT_EQ(m6.parameters().at("head.fc.weight").shape(), (Shape{3, 128}));
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------
// Resume

class Resume : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "vrwkv_resume_" + std::to_string(getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // A small run that exercises every piece of optimizer and data state:
    // augmentations, Mixup/CutMix, drop path, EMA, warm-up and cosine.
    std::ofstream(dir_ + "/config.json") << R"({
      "model": {"embed_dims": 16, "depth": 2, "patch_size": 7, "in_channels": 1, "image_size": [28, 28]},
      "data": {"train": "fashion-mnist:train", "val": "", "train_limit": 192},
      "augment": {"random_crop_padding": 2, "hflip": 0.5, "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 0.5},
      "optim": {"lr": 3e-3, "warmup_epochs": 1, "drop_path": 0.3, "ema_decay": 0.9},
      "epochs": 3, "batch_size": 16, "seed": 5, "checkpoint_every": 1, "log_every": 1
    })";
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs `vrwkv train ARGS` with 2 threads; returns the exit code.
  int train(const std::string& args) const {
    const std::string cmd = std::string(VRWKV_CLI_PATH) + " train --threads 2 --no-progress " + args + " 2>>'" +
                            dir_ + "/stderr'";
    const int status = std::system(cmd.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  // The tensors of a finished run's model, compared bit for bit.
  void expect_same_model(const std::string& a, const std::string& b) const {
    const TensorMap x = read_safetensors(a + "/model.safetensors"), y = read_safetensors(b + "/model.safetensors");
    ASSERT_EQ(x.size(), y.size());
    for (const auto& [name, t] : x) {
      ASSERT_TRUE(y.count(name)) << name;
      ASSERT_EQ(t.nbytes(), y.at(name).nbytes()) << name;
      EXPECT_EQ(std::memcmp(t.raw(), y.at(name).raw(), t.nbytes()), 0) << name << " differs";
    }
  }

  std::string dir_;
};

TEST_F(Resume, AfterAStopGivesTheSameWeights) {
  if (access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK) != 0 &&
      !std::getenv("VRWKV_FASHION_MNIST_DIR"))
    GTEST_SKIP() << "Fashion-MNIST is not installed";
  ASSERT_EQ(train("-c " + dir_ + "/config.json -o " + dir_ + "/straight"), 0);
  ASSERT_EQ(train("-c " + dir_ + "/config.json -o " + dir_ + "/stopped --stop-after 17"), 0);
  EXPECT_FALSE(fs::exists(dir_ + "/stopped/model.safetensors"));
  ASSERT_EQ(train("-o " + dir_ + "/stopped --resume"), 0);
  expect_same_model(dir_ + "/straight", dir_ + "/stopped");
  // The metrics of the resumed run continue the first part's without repeating steps.
  std::ifstream metrics(dir_ + "/stopped/metrics.jsonl");
  std::int64_t last = 0;
  for (std::string line; std::getline(metrics, line);) {
    const std::int64_t step = nlohmann::json::parse(line).at("step");
    EXPECT_GT(step, last) << line;
    last = step;
  }
  EXPECT_EQ(last, 36);
}

// SIGKILL at a random moment of the run (mid-step or mid-checkpoint), then
// --resume: the same final weights, and no temporary file left behind.
TEST_F(Resume, AfterSigkillGivesTheSameWeights) {
  if (access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK) != 0 &&
      !std::getenv("VRWKV_FASHION_MNIST_DIR"))
    GTEST_SKIP() << "Fashion-MNIST is not installed";
  ASSERT_EQ(train("-c " + dir_ + "/config.json -o " + dir_ + "/straight"), 0);
  const std::string out = dir_ + "/killed";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string cli = VRWKV_CLI_PATH, config = dir_ + "/config.json";
    execl(cli.c_str(), cli.c_str(), "train", "--threads", "2", "--no-progress", "-c", config.c_str(), "-o",
          out.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Kill as soon as a random step (of 36) has been logged: mid-step or mid-checkpoint.
  std::mt19937 rng(static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
  const int target = std::uniform_int_distribution<int>(2, 30)(rng);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  for (bool reached = false; !reached && std::chrono::steady_clock::now() < deadline;) {
    std::ifstream metrics(out + "/metrics.jsonl");
    for (std::string line; std::getline(metrics, line);) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);  // a line being written may be cut
      if (j.is_object() && j.value("step", 0) >= target) reached = true;
    }
    if (!reached) std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the run ended before step " << target << " could be reached and killed";
  ASSERT_TRUE(fs::exists(out + "/checkpoint.safetensors"));
  ASSERT_EQ(train("-o " + out + " --resume"), 0);
  expect_same_model(dir_ + "/straight", out);
  for (const auto& entry : fs::directory_iterator(out))
    EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();
}

// SIGINT or SIGTERM at a random step of a run whose periodic checkpoints are
// far apart: the run finishes the step, writes a checkpoint of exactly that
// step, says so and exits 130 or 143; --resume then gives the same final
// weights as an uninterrupted run, and no temporary file is left.
TEST_F(Resume, AfterSigintOrSigtermGivesTheSameWeights) {
  if (access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK) != 0 &&
      !std::getenv("VRWKV_FASHION_MNIST_DIR"))
    GTEST_SKIP() << "Fashion-MNIST is not installed";
  std::string text;
  {
    std::ifstream in(dir_ + "/config.json");
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  text.replace(text.find("\"checkpoint_every\": 1"), 21, "\"checkpoint_every\": 1000");
  std::ofstream(dir_ + "/sparse.json") << text;
  ASSERT_EQ(train("-c " + dir_ + "/sparse.json -o " + dir_ + "/straight"), 0);
  std::mt19937 rng(static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
  for (const int sig : {SIGINT, SIGTERM}) {
    const std::string out = dir_ + "/signalled" + std::to_string(sig);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const std::string cli = VRWKV_CLI_PATH, config = dir_ + "/sparse.json", err = dir_ + "/signal_stderr";
      if (!freopen(err.c_str(), "w", stderr)) _exit(126);
      execl(cli.c_str(), cli.c_str(), "train", "--threads", "2", "--no-progress", "-c", config.c_str(), "-o",
            out.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // Signal once the run has said it started (its handlers are set by then) and logged a random step.
    const int target = std::uniform_int_distribution<int>(2, 30)(rng);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    for (bool reached = false; !reached && std::chrono::steady_clock::now() < deadline;) {
      std::ifstream started(dir_ + "/signal_stderr");
      const std::string said((std::istreambuf_iterator<char>(started)), {});
      std::ifstream metrics(out + "/metrics.jsonl");
      for (std::string line; std::getline(metrics, line);) {
        const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_object() && j.value("step", 0) >= target) reached = said.find("vrwkv train:") != std::string::npos;
      }
      if (!reached) std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    kill(pid, sig);
    int status = 0;
    waitpid(pid, &status, 0);
    std::ifstream err(dir_ + "/signal_stderr");
    const std::string said((std::istreambuf_iterator<char>(err)), {});
    ASSERT_TRUE(WIFEXITED(status)) << "sent signal " << sig << ", died of signal " << WTERMSIG(status) << ": " << said;
    ASSERT_EQ(WEXITSTATUS(status), 128 + sig) << "the run ended before step " << target << " could be signalled";
    EXPECT_NE(said.find("stopped by signal"), std::string::npos) << said;
    // The checkpoint holds the last step the run logged (log_every 1): no step is lost.
    Metadata meta;
    read_safetensors(out + "/checkpoint.safetensors", &meta);
    const std::int64_t saved = nlohmann::json::parse(meta.at("vrwkv.state")).at("step");
    std::int64_t logged = 0;
    std::ifstream metrics(out + "/metrics.jsonl");
    for (std::string line; std::getline(metrics, line);) logged = nlohmann::json::parse(line).at("step");
    EXPECT_EQ(saved, logged) << "signal " << sig;
    EXPECT_GE(saved, target);
    for (const auto& entry : fs::directory_iterator(out))
      EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();
    ASSERT_EQ(train("-o " + out + " --resume"), 0);
    expect_same_model(dir_ + "/straight", out);
  }
}

}  // namespace
}  // namespace vrwkv
