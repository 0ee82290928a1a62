// Never lose a user's file: outputs that are devices, FIFOs or symlinks; an
// output that is one of the inputs; a training folder that holds a run or is
// in use; output paths checked before the work; SIGINT/SIGTERM leaving no
// temporary file. Device nodes and FIFOs are made inside a temporary folder,
// never in the real /dev.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "common.hpp"
#include "vrwkv/safetensors.hpp"

namespace vrwkv {
namespace {

namespace fs = std::filesystem;

using test::slurp;

struct Result {
  int code;
  std::string err;
  double seconds;
};

class Outputs : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "vrwkv_outputs_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    fs::copy_file(std::string(VRWKV_SOURCE_DIR) + "/data/samples/fashion/0-t-shirt.png", path("img.png"));
    fs::copy_file(std::string(VRWKV_SOURCE_DIR) + "/models/vrwkv_fashion_mnist.safetensors", path("m.safetensors"));
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  Result run(const std::string& args) const {
    const std::string cmd =
        std::string(VRWKV_CLI_PATH) + " " + args + " >'" + path("stdout") + "' 2>'" + path("stderr") + "'";
    const auto t0 = std::chrono::steady_clock::now();
    const int status = std::system(cmd.c_str());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(path("stderr")), s};
  }
  std::string run_model(const std::string& out) const {
    return "run -m '" + path("m.safetensors") + "' '" + path("img.png") + "' -o '" + out + "'";
  }
  // Exit 2 with one line naming `mention`.
  static void expect_refused(const Result& r, const std::string& mention) {
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(mention), std::string::npos) << r.err;
  }
  // No .NAME.tmp.* file anywhere in the folder.
  void expect_no_temporaries() const {
    for (const auto& e : fs::recursive_directory_iterator(dir_))
      EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  }

  std::string dir_;
};

// A device output (a null device made here) is written, not replaced by a file.
TEST_F(Outputs, DeviceIsWrittenNotReplaced) {
  if (geteuid() != 0) GTEST_SKIP() << "making a device node needs root";
  ASSERT_EQ(mknod(path("null").c_str(), S_IFCHR | 0666, makedev(1, 3)), 0);
  const Result r = run(run_model(path("null")));
  EXPECT_EQ(r.code, 0) << r.err;
  struct stat st;
  ASSERT_EQ(lstat(path("null").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode)) << "the device became a regular file";
  expect_no_temporaries();
}

// A FIFO output gets the same bytes as a file output, and stays a FIFO.
TEST_F(Outputs, FifoAndStandardOutputGetTheFileBytes) {
  ASSERT_EQ(run(run_model(path("file.st"))).code, 0);
  const std::string want = slurp(path("file.st"));
  ASSERT_EQ(mkfifo(path("fifo").c_str(), 0600), 0);
  std::string got;
  std::thread reader([&] { got = slurp(path("fifo")); });
  const Result r = run(run_model(path("fifo")));
  reader.join();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(got, want);
  struct stat st;
  ASSERT_EQ(lstat(path("fifo").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  // "-o -": standard output.
  ASSERT_EQ(run(run_model("-")).code, 0);
  EXPECT_EQ(slurp(path("stdout")), want);
  expect_no_temporaries();
}

// A symlinked output keeps its link; the target is written and keeps its mode.
TEST_F(Outputs, SymlinkIsFollowedAndModeKept) {
  fs::create_directories(path("real"));
  fs::create_symlink("real/target.st", path("link.st"));  // dangling until written
  ASSERT_EQ(run(run_model(path("link.st"))).code, 0);
  EXPECT_TRUE(fs::is_symlink(path("link.st")));
  ASSERT_TRUE(fs::is_regular_file(path("real/target.st")));
  const std::string first = slurp(path("real/target.st"));
  EXPECT_GT(first.size(), 1000u);
  fs::permissions(path("real/target.st"), fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  ASSERT_EQ(run(run_model(path("link.st"))).code, 0);
  EXPECT_TRUE(fs::is_symlink(path("link.st")));
  EXPECT_EQ(fs::status(path("real/target.st")).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  EXPECT_EQ(slurp(path("real/target.st")), first);
  expect_no_temporaries();
}

// An output that is one of the inputs (by any name: a hard link too) is refused before any work.
TEST_F(Outputs, OutputThatIsAnInputIsRefused) {
  const std::string image = slurp(path("img.png")), model = slurp(path("m.safetensors"));
  expect_refused(run(run_model(path("img.png"))), "img.png");
  fs::create_hard_link(path("m.safetensors"), path("alias.safetensors"));
  expect_refused(run(run_model(path("alias.safetensors"))), "alias.safetensors");
  expect_refused(run("convert '" + path("m.safetensors") + "' '" + path("m.safetensors") + "'"), "m.safetensors");
  EXPECT_EQ(slurp(path("img.png")), image);
  EXPECT_EQ(slurp(path("m.safetensors")), model);
}

// Impossible output paths are refused at once (well under a second: before the work).
TEST_F(Outputs, BadOutputPathsAreRefusedBeforeTheWork) {
  fs::create_directories(path("folder"));
  for (const std::string& out : {path("folder"), std::string(""), path("missing/x.st")}) {
    const Result r = run(run_model(out));
    expect_refused(r, "--output");
    EXPECT_LT(r.seconds, 1.0) << out;
  }
  // bench measures for seconds: a bad --json must be refused before that.
  const Result r = run("bench -m vrwkv_t -b 1 -r 224 --json '" + path("folder") + "'");
  expect_refused(r, "--json");
  EXPECT_LT(r.seconds, 1.0);
  fs::create_directories(path("figure.png"));
  expect_refused(run("plot '" + path("m.safetensors") + "' -o '" + path("figure.png") + "'"), "is a directory");
}

// train into a folder that holds a run needs --resume or --force; a folder in use is refused at once.
TEST_F(Outputs, TrainRefusesAnExistingRunAndAConcurrentOne) {
  if (access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK) != 0 &&
      !std::getenv("VRWKV_FASHION_MNIST_DIR"))
    GTEST_SKIP() << "Fashion-MNIST is not installed";
  std::ofstream(path("config.json")) << R"({
    "model": {"embed_dims": 16, "depth": 1, "patch_size": 7, "in_channels": 1, "image_size": [28, 28]},
    "data": {"train": "fashion-mnist:train", "val": "", "train_limit": 64},
    "epochs": 1, "batch_size": 16, "seed": 1, "log_every": 1
  })";
  const std::string train = "train --threads 1 --no-progress -c '" + path("config.json") + "' -o '" + path("run") + "'";
  ASSERT_EQ(run(train).code, 0);
  const std::string model = slurp(path("run/model.safetensors"));
  expect_refused(run(train), "--resume");
  EXPECT_EQ(slurp(path("run/model.safetensors")), model);
  EXPECT_EQ(run(train + " --force").code, 0);
  // A second run while one holds the folder's lock.
  std::ofstream(path("long.json")) << R"({
    "model": {"embed_dims": 16, "depth": 1, "patch_size": 7, "in_channels": 1, "image_size": [28, 28]},
    "data": {"train": "fashion-mnist:train", "val": "", "train_limit": 4096},
    "epochs": 50, "batch_size": 16, "seed": 1, "log_every": 1
  })";
  const std::string out = path("busy");
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string cli = VRWKV_CLI_PATH, config = path("long.json");
    execl(cli.c_str(), cli.c_str(), "train", "--threads", "1", "--no-progress", "-c", config.c_str(), "-o",
          out.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(out + "/metrics.jsonl") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const Result second = run("train --threads 1 --no-progress -c '" + path("long.json") + "' -o '" + out + "' --force");
  expect_refused(second, "another vrwkv train");
  EXPECT_LT(second.seconds, 1.0);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGTERM) << status;
  EXPECT_TRUE(fs::exists(out + "/checkpoint.safetensors"));
  expect_no_temporaries();
}

// Impossible values in a model file's metadata or in flags: exit 2 naming the
// file and the field, in well under a second and with no large allocation
// (peak memory of the child under 200 MB, measured by wait4).
TEST_F(Outputs, ImpossibleModelValuesAreRefusedCheaply) {
  Metadata meta;
  const TensorMap tensors = read_safetensors(path("m.safetensors"), &meta);
  const nlohmann::json config = nlohmann::json::parse(meta.at("vrwkv.config"));
  const auto variant = [&](const std::string& name, const std::function<void(nlohmann::json&)>& change) {
    nlohmann::json c = config;
    change(c);
    Metadata m = meta;
    m["vrwkv.config"] = c.dump();
    write_safetensors(path(name), tensors, m);
    return path(name);
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {variant("depth_1e6.st", [](nlohmann::json& c) { c["depth"] = 1000000; }), "depth"},
      {variant("depth_0.st", [](nlohmann::json& c) { c["depth"] = 0; }), "depth"},
      {variant("depth_-1.st", [](nlohmann::json& c) { c["depth"] = -1; }), "depth"},
      {variant("wide.st", [](nlohmann::json& c) { c["embed_dims"] = 2147483648LL; }), "embed_dims"},
      {variant("big.st", [](nlohmann::json& c) { c["embed_dims"] = 1024, c["depth"] = 40; }), "tensor"},
      {variant("out99.st", [](nlohmann::json& c) { c["out_indices"] = {99}; }), "out index 99"},
  };
  const std::string image = path("img.png");
  auto measured = cases;
  measured.push_back({path("m.safetensors") + "' --pos-grid '2000x2000", "pos_embed"});
  for (const auto& [model, mention] : measured) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const std::string err = path("stderr");
      if (!freopen(err.c_str(), "w", stderr) || !freopen("/dev/null", "w", stdout)) _exit(126);
      const std::string cmd = std::string("exec '") + VRWKV_CLI_PATH + "' classify -m '" + model + "' '" + image + "'";
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    const auto t0 = std::chrono::steady_clock::now();
    int status = 0;
    struct rusage usage {};
    wait4(pid, &status, 0, &usage);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string err = slurp(path("stderr"));
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << model << ": " << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
    EXPECT_NE(err.find(mention), std::string::npos) << err;
    EXPECT_LT(seconds, 1.0) << model;
    EXPECT_LT(usage.ru_maxrss, 200 * 1024) << model << ": " << usage.ru_maxrss << " KiB";  // ru_maxrss in KiB
  }
}

// run writes its output batch by batch: to a file or to standard output
// (assembled in memory there) the same bytes, and the same tensors whatever
// the batch size (within float32 rounding: GEMMs over other row counts may sum
// in another order).
TEST_F(Outputs, RunStreamsInBatches) {
  std::string images;
  for (const auto& e : fs::directory_iterator(std::string(VRWKV_SOURCE_DIR) + "/data/samples/fashion"))
    images += " '" + e.path().string() + "'";
  const std::string base = "run -m '" + path("m.safetensors") + "'" + images;
  ASSERT_EQ(run(base + " --batch 3 -o '" + path("b3.st") + "'").code, 0);
  ASSERT_EQ(run(base + " --batch 3 -o -").code, 0);
  EXPECT_TRUE(slurp(path("stdout")) == slurp(path("b3.st"))) << "standard output differs from the file";
  ASSERT_EQ(run(base + " --batch 16 -o '" + path("b16.st") + "'").code, 0);
  const TensorMap a = read_safetensors(path("b3.st")), b = read_safetensors(path("b16.st"));
  ASSERT_EQ(a.size(), 3u);  // features, input, logits
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(test::close_to(t, b.at(name), 1e-5)) << name;
  }
  EXPECT_EQ(a.at("input").dim(0), 10);
}

// SIGINT or SIGTERM at random moments of a convert: exit 130/143 (or 0 when it
// had finished, or death by the signal before main() set its handlers), never
// a temporary file left, never a partial output.
TEST_F(Outputs, SignalsDuringConvertLeaveNoTemporaryFile) {
  const std::string checkpoint = test::golden("vrwkv_t_224_b2.pth");
  ASSERT_EQ(run("convert '" + checkpoint + "' '" + path("whole.st") + "'").code, 0);
  const std::string whole = slurp(path("whole.st"));
  std::mt19937 rng(static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
  int interrupted = 0;
  for (int i = 0; i < 12; ++i) {
    const int sig = i % 2 ? SIGTERM : SIGINT;
    const std::string out = path("c" + std::to_string(i) + ".st");
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const std::string cli = VRWKV_CLI_PATH;
      if (!freopen("/dev/null", "w", stderr)) _exit(126);
      execl(cli.c_str(), cli.c_str(), "convert", checkpoint.c_str(), out.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(2000, 100000)(rng)));
    kill(pid, sig);
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) {
      // Before main() set its handlers (process start-up): nothing written yet.
      EXPECT_EQ(WTERMSIG(status), sig);
      EXPECT_FALSE(fs::exists(out));
      continue;
    }
    const int code = WEXITSTATUS(status);
    if (code == 0) {
      EXPECT_EQ(slurp(out), whole);
    } else {
      EXPECT_EQ(code, 128 + sig);
      EXPECT_FALSE(fs::exists(out)) << "a partial output";
      ++interrupted;
    }
  }
  expect_no_temporaries();
  RecordProperty("interrupted", interrupted);
}

}  // namespace
}  // namespace vrwkv
