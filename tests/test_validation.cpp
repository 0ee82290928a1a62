// Check every value before the work (issue 9): impossible training
// configurations refused at once with little memory, non-finite values in
// options, configurations, inputs and weights, checkpoint checksums, short
// range messages, options a command does not use, one unreadable image in a
// classify or eval run, ImageFolder link loops, hostile safetensors headers
// and deflated .pth entries inflated without a second copy. Every bad input:
// exit 2, one line on stderr naming it, no output.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zip.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/listing.hpp"
#include "common.hpp"
#include "io/pth.hpp"
#include "vrwkv/data.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/safetensors.hpp"
#include "vrwkv/train.hpp"

namespace vrwkv {
namespace {

namespace fs = std::filesystem;

// Peak memory and time of a command. A child's peak resident size
// (RUSAGE_CHILDREN) includes what it inherited from the process that forked
// it, so the command is started by a fresh copy of this test program (about
// 12 MB) that does nothing else: when VRWKV_TEST_MEASURE holds a shell
// command, the program runs it, prints "EXIT MAXRSS_KB SECONDS" and ends
// before any test starts.
const bool kMeasureMode = [] {
  const char* cmd = std::getenv("VRWKV_TEST_MEASURE");
  if (!cmd) return false;
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd, static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rusage ru{};
  getrusage(RUSAGE_CHILDREN, &ru);
  std::printf("%d %ld %.6f\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1, ru.ru_maxrss, seconds);
  std::fflush(stdout);
  _exit(0);
}();

using test::slurp;

struct CliResult {
  int code;
  std::string out, err;
};

struct Measured {
  int code = -1;
  long max_rss_kb = 0;
  double seconds = 0;
  std::string err;
};

class Validation : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "vrwkv_validation_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  static std::string cli() { return VRWKV_CLI_PATH; }
  static std::string sample(const std::string& name) {
    return std::string(VRWKV_SOURCE_DIR) + "/data/samples/fashion/" + name;
  }

  CliResult run(const std::string& args) const {
    const std::string cmd = cli() + " " + args + " >'" + path("stdout") + "' 2>'" + path("stderr") + "'";
    const int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(path("stdout")), slurp(path("stderr"))};
  }

  // `vrwkv ARGS` started by a fresh process: its exit code, peak memory and time.
  Measured measure(const std::string& args) const {
    const std::string self = fs::read_symlink("/proc/self/exe").string();
    const std::string cmd = cli() + " " + args + " >/dev/null 2>'" + path("measured_stderr") + "'";
    const std::string env = "VRWKV_TEST_MEASURE=" + cmd, report = path("measured");
    const pid_t pid = fork();
    if (pid == 0) {
      const int fd = open(report.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || dup2(fd, 1) < 0) _exit(126);
      char* const argv[] = {const_cast<char*>(self.c_str()), nullptr};
      char* const envp[] = {const_cast<char*>(env.c_str()), nullptr};
      execve(self.c_str(), argv, envp);
      _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    Measured m;
    std::istringstream(slurp(report)) >> m.code >> m.max_rss_kb >> m.seconds;
    m.err = slurp(path("measured_stderr"));
    return m;
  }

  void write(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary) << bytes;
  }

  // Exit code 2, exactly one line on stderr that mentions every one of `mentions`.
  static void expect_input_error(const CliResult& r, std::initializer_list<std::string> mentions) {
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    for (const std::string& m : mentions) EXPECT_NE(r.err.find(m), std::string::npos) << m << " not in: " << r.err;
  }

  // An ImageFolder tree DIR/{a,b} with copies of the sample images.
  std::string image_folder(const std::string& name) const {
    const std::string root = path(name);
    fs::create_directories(root + "/a");
    fs::create_directories(root + "/b");
    fs::copy_file(sample("0-t-shirt.png"), root + "/a/0.png");
    fs::copy_file(sample("2-pullover.png"), root + "/a/1.png");
    fs::copy_file(sample("1-trouser.png"), root + "/b/0.png");
    fs::copy_file(sample("3-dress.png"), root + "/b/1.png");
    return root;
  }

  std::string dir_;
};

const char* kTinyModel =
    R"("model": {"embed_dims": 8, "depth": 1, "patch_size": 7, "in_channels": 1, "image_size": [28, 28]})";

// ---------------------------------------------------------------------------
// 1. Impossible model values in a training configuration

TEST_F(Validation, ImpossibleModelValuesAreRefusedAtOnceWithLittleMemory) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"("embed_dims": 16, "depth": 2, "patch_size": 0)", "patch_size"},
      {R"("embed_dims": 16, "depth": 0, "patch_size": 7)", "depth"},
      {R"("embed_dims": 16, "depth": -1, "patch_size": 7)", "depth"},
      {R"("embed_dims": 2147483648, "depth": 2, "patch_size": 7)", "embed_dims"},
      {R"("embed_dims": 9223372036854775807, "depth": 2, "patch_size": 7)", "embed_dims"},
      {R"("embed_dims": 16, "depth": 2, "patch_size": 5)", "image_size"},
      {R"("embed_dims": 16, "depth": 2, "patch_size": 7, "hidden_rate": 0)", "hidden_rate"},
      {R"("embed_dims": 16, "depth": 2, "patch_size": 7, "hidden_rate": 4611686018427387904)", "hidden_rate"},
      {R"("embed_dims": 16, "depth": 2, "patch_size": 7, "shift_pixel": -1)", "shift_pixel"},
      {R"("embed_dims": 16, "depth": 2, "patch_size": 7, "channel_gamma": 0)", "channel_gamma"},
      {R"("embed_dims": 16, "depth": 2, "patch_size": 7, "in_channels": 2)", "in_channels"},
      {R"("embed_dims": 65536, "depth": 1024, "patch_size": 7)", "memory"},
  };
  for (const auto& [model, field] : cases) {
    const std::string config = path("c.json");
    std::string m = model;
    if (m.find("in_channels") == std::string::npos) m += R"(, "in_channels": 1)";
    write("c.json", R"({"model": {)" + m + R"(, "image_size": [28, 28]}, "data": {"train": "imagefolder:)" +
                        path("nowhere") + R"("}})");
    const Measured r = measure("train -c '" + config + "' -o '" + path("out") + "'");
    EXPECT_EQ(r.code, 2) << model << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(config), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(field), std::string::npos) << field << " not in: " << r.err;
    EXPECT_LT(r.seconds, 1.0) << model;
    EXPECT_LT(r.max_rss_kb, 200 * 1024) << model;
    EXPECT_FALSE(fs::exists(path("out"))) << model;
  }
}

TEST(ValidationConfig, StrictTypesDuplicatesAndRanges) {
  const std::string m = std::string("{") + kTinyModel;
  const auto refused = [&](const std::string& json, const std::string& mention) {
    try {
      train::train_config_from_json(json, "t.json");
      ADD_FAILURE() << "accepted: " << json;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), Error::Kind::Input);
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind("t.json: ", 0), 0u) << msg;
      EXPECT_NE(msg.find(mention), std::string::npos) << mention << " not in: " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  };
  refused(m + R"(, "epochs": 1.5})", "epochs");
  refused(m + R"(, "batch_size": 1e30})", "batch_size");
  refused(m + R"(, "seed": -1})", "seed");
  refused(m + R"(, "epochs": 2, "epochs": 3})", "'epochs' is given twice");
  refused(R"({"model": {"embed_dims": 8, "depth": 1, "depth": 2, "patch_size": 7}})", "'model.depth' is given twice");
  refused(m + R"(, "optim": {"clip_grad": -1}})", "clip_grad");
  refused(m + R"(, "optim": {"lr": 1e999}})", "t.json");  // JSON has no infinity: an overflow is not a number
  refused(m + R"(, "optim": {"lr": "fast"}})", "optim.lr");
  refused(m + R"(, "data": {"std": [1e39, 1, 1]}})", "data.std");  // overflows a float
  refused(m + R"(, "data": {"mean": [1, 2]}})", "data.mean");
  refused(m + R"(, "data": {"mean": [1, 2, 3, 4]}})", "data.mean");
  refused(m + R"(, "augment": {"mix_prob": 1.5}})", "mix_prob");
  refused(R"({"epochs": 2})", "no \"model\" section");
  refused(R"({"model": {"embed_dims": 8}})", "model.depth, model.patch_size missing");
  refused(R"({"model": {"preset": "vrwkv_x"}})", "vrwkv_x");
  refused(R"({"model": {"preset": "vrwkv_t", "init": "x.pth"}})", "exclude");

  // Whole numbers written as floats are whole numbers; clip_grad 0 means no clipping.
  const train::TrainConfig c = train::train_config_from_json(m + R"(, "epochs": 2.0, "optim": {"clip_grad": 0}})", "t.json");
  EXPECT_EQ(c.epochs, 2);
  EXPECT_EQ(c.clip_grad, 0.0);
  EXPECT_EQ(c.model.pos_grid_h, 4);
  // A preset needs nothing else.
  EXPECT_NO_THROW(train::train_config_from_json(R"({"model": {"preset": "vrwkv_t"}})", "t.json"));
}

// Values set in code (or by a flag) after the file was read are checked too.
TEST_F(Validation, InitialModelChecksTheConfiguration) {
  train::TrainConfig tc;
  tc.model.embed_dims = 8, tc.model.depth = 1, tc.model.patch_size = 7, tc.model.hidden_dims = 32;
  tc.model.in_channels = 1, tc.model.pos_grid_h = tc.model.pos_grid_w = 4;
  const auto data = train::open_dataset("imagefolder:" + image_folder("data"));
  EXPECT_NO_THROW(train::initial_model(tc, *data));
  tc.adamw.lr = std::nan("");
  EXPECT_THROW(train::initial_model(tc, *data), Error);
  tc.adamw.lr = 1e-3, tc.label_smoothing = std::numeric_limits<double>::infinity();
  EXPECT_THROW(train::initial_model(tc, *data), Error);
}

// ---------------------------------------------------------------------------
// 2. Non-finite values; checkpoint checksums

TEST_F(Validation, NonFiniteOptionValuesAreRefused) {
  const std::string m = "-m " + test::golden("tiny_default.pth") + " -i " + test::golden("tiny_default.safetensors");
  expect_input_error(run("run " + m + " -o " + path("o.st") + " --channel-gamma nan"), {"--channel-gamma"});
  expect_input_error(run("run " + m + " -o " + path("o.st") + " --channel-gamma inf"), {"--channel-gamma"});
  // grad's --label-smoothing: refused by the loss itself, whatever the option parser lets through.
  expect_input_error(run("grad " + m + " -o " + path("g.st") + " --wkv paper --label-smoothing nan"), {"smoothing"});
  EXPECT_FALSE(fs::exists(path("o.st")));
  EXPECT_FALSE(fs::exists(path("g.st")));
}

TEST_F(Validation, NonFiniteInputPixelIsRefused) {
  TensorMap in = read_safetensors(test::golden("tiny_default.safetensors"));
  Tensor x = in.at("input").clone();
  x.f32()[5] = std::nanf("");
  write_safetensors(path("nan.st"), {{"input", x}});
  const CliResult r =
      run("run -m " + test::golden("tiny_default.pth") + " -i " + path("nan.st") + " -o " + path("o.st"));
  expect_input_error(r, {"non-finite"});
  EXPECT_FALSE(fs::exists(path("o.st")));
}

TEST_F(Validation, NonFiniteWeightsNeverClassify) {
  const Model model = Model::load(test::golden("tiny_default.pth"));
  TensorMap weights;
  for (const auto& [name, t] : model.parameters()) weights[name] = t.clone();
  weights.at("head.fc.weight").f32()[3] = std::numeric_limits<float>::infinity();
  write_safetensors(path("inf.st"), weights, {{"vrwkv.config", config_to_json(model.config())}});
  const CliResult r = run("classify -m " + path("inf.st") + " " + sample("0-t-shirt.png"));
  expect_input_error(r, {path("inf.st"), "head.fc.weight", "non-finite"});
  EXPECT_EQ(r.out, "");
}

TEST_F(Validation, CheckpointChecksumIsVerifiedOnResume) {
  const std::string data = image_folder("data");
  write("c.json", std::string("{") + kTinyModel + R"(, "data": {"train": "imagefolder:)" + data +
                      R"(", "val": ""}, "epochs": 2, "batch_size": 2, "checkpoint_every": 1, "log_every": 1})");
  const std::string out = path("run"), ckpt = out + "/checkpoint.safetensors";
  ASSERT_EQ(run("train --threads 1 --no-progress -c " + path("c.json") + " -o " + out + " --stop-after 1").code, 0);
  Metadata meta;
  const TensorMap saved = read_safetensors(ckpt, &meta);
  ASSERT_TRUE(meta.count("vrwkv.checksum"));
  EXPECT_EQ(meta.at("vrwkv.checksum").rfind("crc32:", 0), 0u) << meta.at("vrwkv.checksum");

  // One flipped bit in the tensor data.
  std::string bytes = slurp(ckpt);
  std::uint64_t header = 0;
  std::memcpy(&header, bytes.data(), 8);
  bytes[8 + header + 17] ^= 0x04;
  const std::string metrics = slurp(out + "/metrics.jsonl");
  write("run/checkpoint.safetensors", bytes);
  expect_input_error(run("train --threads 1 --no-progress -o " + out + " --resume"), {ckpt, "checksum mismatch"});
  EXPECT_EQ(slurp(ckpt), bytes);
  EXPECT_EQ(slurp(out + "/metrics.jsonl"), metrics);
  EXPECT_FALSE(fs::exists(out + "/model.safetensors"));

  // A checkpoint without a checksum (written before there were any) is accepted with a note.
  meta.erase("vrwkv.checksum");
  write_safetensors(ckpt, saved, meta);
  const CliResult r = run("train --threads 1 --no-progress -o " + out + " --resume");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("no vrwkv.checksum"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
}

// ---------------------------------------------------------------------------
// 3. Smaller edges

TEST_F(Validation, NegativeShiftPixelIsRefused) {
  const std::string m = "run -m " + test::golden("tiny_default.pth") + " -i " + test::golden("tiny_default.safetensors") +
                        " -o " + path("o.st");
  expect_input_error(run(m + " --shift-pixel -5"), {"--shift-pixel", "-5"});
  expect_input_error(run(m + " --shift-pixel 1.5"), {"--shift-pixel"});
  EXPECT_FALSE(fs::exists(path("o.st")));
}

// Range messages are short and name the option (CLI11's print DBL_MAX in full).
TEST_F(Validation, RangeMessagesAreShort) {
  for (const std::string& args :
       {std::string("eval --data fashion-mnist:test --limit -1"), std::string("eval --data fashion-mnist:test --limit 1.5"),
        std::string("eval --data fashion-mnist:test --batch 0"), std::string("classify --topk 0 x.png"),
        "run -m " + test::golden("tiny_default.pth") + " -i x -o " + path("o.st") + " --threads 0"}) {
    const CliResult r = run(args);
    EXPECT_EQ(r.code, 2) << args;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_LT(r.err.size(), 120u) << r.err;
    EXPECT_NE(r.err.find(": expected "), std::string::npos) << r.err;
  }
  const CliResult r = run("eval --data fashion-mnist:test --limit -1");
  EXPECT_NE(r.err.find("--limit: expected an integer >= 0, got '-1'"), std::string::npos) << r.err;
}

TEST_F(Validation, ConvertAndInfoRefuseOptionsTheyDoNotUse) {
  const std::string in = test::golden("tiny_default.pth");
  for (const std::string extra : {"--dtype bf16", "--model x.pth", "--threads 2"}) {
    CliResult r = run("convert " + in + " " + path("o.st") + " " + extra);
    EXPECT_EQ(r.code, 2) << extra << ": " << r.err;
    EXPECT_NE(r.err.find(extra.substr(0, extra.find(' '))), std::string::npos) << r.err;
    r = run("info " + in + " " + extra);
    EXPECT_EQ(r.code, 2) << extra << ": " << r.err;
  }
  EXPECT_FALSE(fs::exists(path("o.st")));
  EXPECT_EQ(run("convert " + in + " " + path("o.st") + " --wkv paper").code, 0);
}

TEST_F(Validation, InfoNamesTheIgnoredEntries) {
  const CliResult r = run("info " + test::golden("tiny_default.pth"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("ignored       1 entries not part of the model: meta\n"), std::string::npos) << r.out;
  EXPECT_EQ(cli::list_some({"a", "b"}), "a, b");
  EXPECT_EQ(cli::list_some({"a", "b", "c", "d", "e", "f", "g"}), "a, b, c, d, e and 2 more");
}

TEST_F(Validation, ClassifyGoesOnAfterAnUnreadableImage) {
  write("bad.png", "not an image");
  write("bad2.jpg", "not an image either");
  const std::string good1 = sample("0-t-shirt.png"), good2 = sample("1-trouser.png");
  CliResult r = run("classify --topk 1 " + path("bad.png") + " " + good1 + " " + path("bad2.jpg") + " " + good2);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 2) << r.out;
  EXPECT_EQ(r.out.rfind(good1 + ": ", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("\n" + good2 + ": "), std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 2) << r.err;  // one line per unreadable image
  EXPECT_NE(r.err.find(path("bad.png")), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(path("bad2.jpg")), std::string::npos) << r.err;
  // One bad image: one line. --strict: nothing after the first bad image.
  expect_input_error(run("classify " + good1 + " " + path("bad.png")), {path("bad.png")});
  r = run("classify --strict " + path("bad.png") + " " + good1);
  expect_input_error(r, {path("bad.png")});
  EXPECT_EQ(r.out, "");
}

TEST_F(Validation, EvalLeavesOutAnUnreadableImageWithoutChangingTheRest) {
  const std::string clean = image_folder("clean"), damaged = image_folder("damaged");
  write("damaged/b/broken.png", "\x89PNG\r\n\x1a\n but then nothing");
  const CliResult a = run("eval --data imagefolder:" + clean + " --json");
  ASSERT_EQ(a.code, 0) << a.err;
  const CliResult b = run("eval --data imagefolder:" + damaged + " --json");
  EXPECT_EQ(b.code, 2);
  EXPECT_EQ(std::count(b.err.begin(), b.err.end(), '\n'), 1) << b.err;
  EXPECT_NE(b.err.find(damaged + "/b/broken.png"), std::string::npos) << b.err;
  const nlohmann::json ja = nlohmann::json::parse(a.out), jb = nlohmann::json::parse(b.out);
  EXPECT_EQ(ja.at("images"), 4);
  EXPECT_FALSE(ja.contains("skipped"));
  EXPECT_EQ(jb.at("images"), 4);
  EXPECT_EQ(jb.at("skipped"), 1);
  EXPECT_EQ(jb.at("top1"), ja.at("top1"));
  // The same images: the same loss, up to the order of sums in a batch of another size.
  EXPECT_NEAR(jb.at("loss").get<double>(), ja.at("loss").get<double>(), 1e-5);
  const CliResult s = run("eval --strict --data imagefolder:" + damaged + " --json");
  expect_input_error(s, {"broken.png"});
  EXPECT_EQ(s.out, "");
}

TEST_F(Validation, ImageFolderDoesNotFollowLinksBackIntoTheTree) {
  const std::string root = image_folder("tree");
  fs::create_directories(root + "/a/deep");
  fs::create_directory_symlink("..", root + "/a/deep/up");          // a loop
  fs::create_directory_symlink(root + "/b", root + "/a/to_b");     // into another class
  fs::create_directory_symlink(root, root + "/b/to_root");          // to the top
  const std::string outside = path("outside");
  fs::create_directories(outside);
  fs::copy_file(sample("4-coat.png"), outside + "/coat.png");
  fs::create_directory_symlink(outside, root + "/b/ext1");          // outside the tree: followed, once
  fs::create_directory_symlink(outside, root + "/b/ext2");
  const auto data = train::open_dataset("imagefolder:" + root);
  EXPECT_EQ(data->size(), 5);
  std::vector<int> per_class(2);
  for (std::int64_t i = 0; i < data->size(); ++i) ++per_class.at(data->label(i));
  EXPECT_EQ(per_class, (std::vector<int>{2, 3}));
}

std::string header_file(const std::string& json, std::size_t data_bytes = 0) {
  std::string s(8, '\0');
  const std::uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s + json + std::string(data_bytes, '\0');
}

std::string safetensors_error(const std::string& bytes) {
  try {
    read_safetensors_memory(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), "f.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ValidationSafetensors, HeaderLimits) {
  // Over 100 MiB (the safetensors library's limit), in a file that has the bytes.
  std::string big = header_file("{}");
  const std::uint64_t n = (100u << 20) + 8;
  for (int i = 0; i < 8; ++i) big[i] = static_cast<char>(n >> (8 * i));
  big.resize(8 + n, ' ');
  EXPECT_NE(safetensors_error(big).find("exceeds the limit"), std::string::npos) << safetensors_error(big);
  // A header of many empty entries is refused while it is read, not held as a document.
  std::string entries = "{";
  for (int i = 0; i < 140000; ++i) {
    if (i) entries += ',';
    entries += "\"t";
    entries += std::to_string(i);
    entries += R"(":{"dtype":"F32","shape":[0],"data_offsets":[0,0]})";
  }
  entries += "}";
  EXPECT_NE(safetensors_error(header_file(entries)).find("more than 131072 tensors"), std::string::npos);
  // A tensor given twice; a shape of absurd rank; unknown keys of an entry (however deep) are skipped.
  EXPECT_NE(safetensors_error(header_file(R"({"x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},)"
                                          R"("x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})"))
                .find("appears twice"),
            std::string::npos);
  std::string rank = "[";
  for (int i = 0; i < 100; ++i) rank += (i ? ",1" : "1");
  EXPECT_NE(safetensors_error(header_file(R"({"x":{"dtype":"U8","shape":)" + rank + R"(],"data_offsets":[0,1]}})", 1))
                .find("dimensions"),
            std::string::npos);
  EXPECT_NE(safetensors_error(header_file(R"({"x":{"dtype":[1],"shape":[1],"data_offsets":[0,1]}})", 1))
                .find("unsupported dtype"),
            std::string::npos);
  const std::string ok = header_file(
      R"({"__metadata__":{"k":"v"},"x":{"extra":{"a":[1,{"b":null}]},"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 2);
  Metadata meta;
  const TensorMap t = read_safetensors_memory(reinterpret_cast<const std::uint8_t*>(ok.data()), ok.size(), "ok", &meta);
  EXPECT_EQ(t.at("x").shape(), (Shape{2}));
  EXPECT_EQ(meta.at("k"), "v");
}

// ---------------------------------------------------------------------------
// Deflated .pth entries: inflated into the tensor, not through a second copy.

// {'state_dict': {'x': FloatStorage 'data/0' of n elements}} as a zip with the storage deflated.
void write_deflated_pth(const std::string& file, const std::string& storage) {
  const std::int64_t n = static_cast<std::int64_t>(storage.size() / 4);
  std::string p = "\x80\x02}";
  const auto str = [&](const std::string& s) {
    p += 'X';
    for (int i = 0; i < 4; ++i) p += static_cast<char>((s.size() >> (8 * i)) & 0xff);
    p += s;
  };
  const auto integer = [&](std::int64_t v) {
    p += '\x8a';
    p += '\x08';
    for (int i = 0; i < 8; ++i) p += static_cast<char>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xff);
  };
  const auto ordered_dict = [&] { p += "ccollections\nOrderedDict\n)R"; };
  str("state_dict");
  ordered_dict();
  p += '(';
  str("x");
  p += "ctorch._utils\n_rebuild_tensor_v2\n(";
  p += '(';
  str("storage");
  p += "ctorch\nFloatStorage\n";
  str("0");
  str("cpu");
  integer(n);
  p += "tQ";
  integer(0);
  p += '(';
  integer(n);
  p += "t(";
  integer(1);
  p += "t\x89";
  ordered_dict();
  p += "tRus.";
  int err = 0;
  zip_t* za = zip_open(file.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  ASSERT_NE(za, nullptr);
  const std::string version = "3\n";
  const std::pair<std::string, const std::string*> entries[] = {
      {"archive/data.pkl", &p}, {"archive/data/0", &storage}, {"archive/version", &version}};
  for (const auto& [name, data] : entries) {
    zip_source_t* src = zip_source_buffer(za, data->data(), data->size(), 0);
    const zip_int64_t index = zip_file_add(za, name.c_str(), src, ZIP_FL_OVERWRITE);
    ASSERT_GE(index, 0);
    ASSERT_EQ(zip_set_file_compression(za, static_cast<zip_uint64_t>(index),
                                       name == "archive/data/0" ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 1),
              0);
  }
  ASSERT_EQ(zip_close(za), 0);
}

TEST_F(Validation, DeflatedEntriesAreInflatedWithoutASecondCopy) {
  // 48 MB of incompressible floats: the peak stays near one copy (it was two).
  constexpr std::size_t kBytes = 48u << 20;
  std::string storage(kBytes, '\0');
  std::mt19937_64 rng(7);
  for (std::size_t i = 0; i < kBytes; i += 8) {
    const std::uint64_t v = rng() & 0x3f3f3f3f3f3f3f3full;  // finite floats
    std::memcpy(&storage[i], &v, 8);
  }
  write_deflated_pth(path("big.pth"), storage);
  const PthStateDict sd = read_pth(path("big.pth"));
  ASSERT_EQ(sd.tensors.at("x").nbytes(), kBytes);
  EXPECT_EQ(std::memcmp(sd.tensors.at("x").raw(), storage.data(), kBytes), 0);
  const Measured m = measure("info " + path("big.pth"));
  EXPECT_EQ(m.code, 2) << m.err;  // read, then refused: not a Vision-RWKV model
  RecordProperty("max_rss_kb", static_cast<int>(m.max_rss_kb));
  if (!test::kAddressSanitizer) {
    EXPECT_LT(m.max_rss_kb, static_cast<long>(kBytes / 1024 * 3 / 2)) << m.err;
  }

  // Zeros deflate a thousandfold: the size is proven by a first pass, the tensor is still right.
  write_deflated_pth(path("zeros.pth"), std::string(4u << 20, '\0'));
  const PthStateDict z = read_pth(path("zeros.pth"));
  const Tensor& x = z.tensors.at("x");
  ASSERT_EQ(x.numel(), 1 << 20);
  EXPECT_EQ(*std::max_element(x.f32(), x.f32() + x.numel()), 0.0f);
}

}  // namespace
}  // namespace vrwkv
