// Training curves: reading the trainer's metrics file (both record kinds, a
// last line cut short), its errors, the plot as PNG and SVG, and `vrwkv plot`
// under the error contract (exit code 2, one line on stderr, no output file).
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "common.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/plot.hpp"

namespace vrwkv {
namespace {

using test::input_error_of;

using test::slurp;

bool exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// Two epochs of a run: training records every 2 steps, validation at each epoch end.
const char* const kMetrics =
    "{\"step\": 2, \"epoch\": 0.5, \"loss\": 2.5, \"lr\": 0.001, \"grad_norm\": 2.3, \"images_per_second\": 812.0}\n"
    "{\"step\": 4, \"epoch\": 1.0, \"loss\": 2.0, \"lr\": 0.002, \"grad_norm\": 1.9, \"images_per_second\": 815.0}\n"
    "{\"step\": 4, \"epoch\": 1.0, \"val_top1\": 40.5, \"val_top5\": 80.25, \"val_loss\": 1.75}\n"
    "\n"
    "{\"step\": 6, \"epoch\": 1.5, \"loss\": 1.5, \"future_key\": [1, 2]}\n"
    "{\"step\": 7, \"note\": \"no loss, no val_top1: skipped\"}\n"
    "{\"step\": 8, \"epoch\": 2.0, \"loss\": null, \"lr\": 0.0005}\n"
    "{\"step\": 8, \"epoch\": 2.0, \"val_top1\": 55.0, \"val_top5\": 90.0, \"val_loss\": 1.25}\n";

class Curves : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "vrwkv_curves_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->test_suite_name() + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    ASSERT_EQ(std::system(("rm -rf '" + dir_ + "' && mkdir -p '" + dir_ + "'").c_str()), 0);
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  std::string write(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary) << bytes;
    return path(name);
  }

  std::string dir_;
};

TEST_F(Curves, ReadsBothRecordKinds) {
  const train::Curves c = train::read_metrics(write("metrics.jsonl", kMetrics));
  ASSERT_EQ(c.loss.size(), 4u);
  EXPECT_EQ(c.step, (std::vector<double>{2, 4, 6, 8}));
  EXPECT_EQ(c.epoch, (std::vector<double>{0.5, 1.0, 1.5, 2.0}));
  EXPECT_EQ(c.loss[0], 2.5);
  EXPECT_EQ(c.loss[2], 1.5);
  EXPECT_TRUE(std::isnan(c.loss[3]));  // null (a NaN loss as JSON writes it)
  EXPECT_EQ(c.lr[1], 0.002);
  EXPECT_TRUE(std::isnan(c.lr[2]));  // absent
  EXPECT_EQ(c.lr[3], 0.0005);
  EXPECT_EQ(c.val_epoch, (std::vector<double>{1.0, 2.0}));
  EXPECT_EQ(c.val_top1, (std::vector<double>{40.5, 55.0}));
  EXPECT_EQ(c.val_top5, (std::vector<double>{80.25, 90.0}));
  EXPECT_EQ(c.val_loss, (std::vector<double>{1.75, 1.25}));
}

TEST_F(Curves, ToleratesALastLineCutShort) {
  const train::Curves c =
      train::read_metrics(write("m.jsonl", std::string(kMetrics) + "{\"step\": 10, \"epoch\": 2.5, \"lo"));
  EXPECT_EQ(c.loss.size(), 4u);
  EXPECT_EQ(c.val_top1.size(), 2u);
  // A complete last line without a newline still counts.
  const train::Curves d = train::read_metrics(write("n.jsonl", "{\"epoch\": 0.1, \"loss\": 3}"));
  EXPECT_EQ(d.loss, (std::vector<double>{3}));
  EXPECT_TRUE(d.val_top1.empty());
}

TEST_F(Curves, ReadErrorsNameTheFileAndLine) {
  std::string m = input_error_of([&] { train::read_metrics(path("missing.jsonl")); });
  EXPECT_NE(m.find(path("missing.jsonl")), std::string::npos) << m;

  const std::string bad = write("bad.jsonl", "{\"epoch\": 0.1, \"loss\": 3}\n"
                                             "{\"epoch\": 0.2, \"loss\": 2}\n"
                                             "garbage here\n"
                                             "{\"epoch\": 0.3, \"loss\": 1}\n");
  m = input_error_of([&] { train::read_metrics(bad); });
  EXPECT_NE(m.find(bad + ":3:"), std::string::npos) << m;
  EXPECT_NE(m.find("garbage"), std::string::npos) << m;

  // A broken last line that does end in a newline was not cut short.
  const std::string broken = write("broken.jsonl", "{\"epoch\": 0.1, \"loss\": 3}\n{\"epoch\": 0.2, \"lo\n");
  m = input_error_of([&] { train::read_metrics(broken); });
  EXPECT_NE(m.find(broken + ":2:"), std::string::npos) << m;

  const std::string wrong_type = write("type.jsonl", "{\"epoch\": 0.1, \"loss\": \"high\"}\n");
  m = input_error_of([&] { train::read_metrics(wrong_type); });
  EXPECT_NE(m.find(wrong_type + ":1:"), std::string::npos) << m;
  EXPECT_NE(m.find("loss"), std::string::npos) << m;

  const std::string array = write("array.jsonl", "[1, 2]\n");
  m = input_error_of([&] { train::read_metrics(array); });
  EXPECT_NE(m.find(array + ":1:"), std::string::npos) << m;

  for (const char* text : {"", "\n\n", "{\"step\": 1}\n"}) {
    const std::string empty = write("empty.jsonl", text);
    m = input_error_of([&] { train::read_metrics(empty); });
    EXPECT_NE(m.find(empty), std::string::npos) << m;
    EXPECT_NE(m.find("no training or validation records"), std::string::npos) << m;
  }

  m = input_error_of([&] { train::read_metrics(dir_); });
  EXPECT_NE(m.find(dir_), std::string::npos) << m;
}

TEST_F(Curves, PlotsPngAndSvg) {
  const train::Curves a = train::read_metrics(write("a.jsonl", kMetrics));
  train::Curves b = a;
  for (double& v : b.loss) v *= 0.8;
  for (double& v : b.val_top1) v += 5;
  train::plot_curves({{"run a", a}, {"run b", b}}, path("c.png"));
  const std::string png = slurp(path("c.png"));
  ASSERT_GT(png.size(), 8u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));

  train::plot_curves({{"run a", a}}, path("c.svg"));
  const std::string svg = slurp(path("c.svg"));
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
}

TEST_F(Curves, PlotsWithoutValidationOrWithOnePoint) {
  const train::Curves only_train = train::read_metrics(write("t.jsonl", "{\"epoch\": 0.1, \"loss\": 3}\n"));
  train::plot_curves({{"t", only_train}}, path("t.png"));
  EXPECT_EQ(slurp(path("t.png")).substr(0, 4), "\x89PNG");
  const train::Curves only_val = train::read_metrics(write("v.jsonl", "{\"epoch\": 1, \"val_top1\": 50}\n"));
  train::plot_curves({{"v", only_val}, {"t", only_train}}, path("v.svg"));
  EXPECT_NE(slurp(path("v.svg")).find("<svg"), std::string::npos);
}

TEST_F(Curves, PlotBadExtensionWritesNothing) {
  const train::Curves c = train::read_metrics(write("a.jsonl", kMetrics));
  const std::string m = input_error_of([&] { train::plot_curves({{"a", c}}, path("c.gif")); });
  EXPECT_NE(m.find("c.gif"), std::string::npos) << m;
  EXPECT_FALSE(exists(path("c.gif")));
  // Nothing else left in the directory either (no temporary file).
  EXPECT_EQ(std::system(("test \"$(ls -A '" + dir_ + "')\" = a.jsonl").c_str()), 0);
}

// `vrwkv plot` end to end.
class CurvesCli : public Curves {
 protected:
  struct Result {
    int code;
    std::string out, err;
  };
  Result run(const std::string& args) const {
    const std::string cmd = std::string(VRWKV_CLI_PATH) + " " + args + " >'" + path("stdout") + "' 2>'" +
                            path("stderr") + "'";
    const int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(path("stdout")), slurp(path("stderr"))};
  }
  // Exit code 2, exactly one line on stderr that mentions `mention`.
  void expect_input_error(const Result& r, const std::string& mention) const {
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(mention), std::string::npos) << r.err;
  }
};

TEST_F(CurvesCli, PlotWritesImages) {
  ASSERT_EQ(std::system(("mkdir -p '" + path("run1") + "' '" + path("run2") + "'").c_str()), 0);
  write("run1/metrics.jsonl", kMetrics);
  write("run2/metrics.jsonl", kMetrics);
  Result r = run("plot " + path("run1/metrics.jsonl") + " -o " + path("x.png"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(slurp(path("x.png")).substr(0, 4), "\x89PNG");
  r = run("plot " + path("run1/metrics.jsonl") + " " + path("run2/metrics.jsonl") + " --output " + path("x.svg"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string svg = slurp(path("x.svg"));
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  r = run("plot " + path("run1/metrics.jsonl") + " " + path("run2/metrics.jsonl") + " --names a,b -o " +
          path("y.svg"));
  ASSERT_EQ(r.code, 0) << r.err;
}

TEST_F(CurvesCli, PlotErrors) {
  write("m.jsonl", kMetrics);
  expect_input_error(run("plot " + path("missing.jsonl") + " -o " + path("x.png")), path("missing.jsonl"));
  write("bad.jsonl", std::string("{\"epoch\": 0.1, \"loss\": 3}\nnot json\n") + kMetrics);
  expect_input_error(run("plot " + path("bad.jsonl") + " -o " + path("x.png")), path("bad.jsonl") + ":2:");
  expect_input_error(run("plot " + path("m.jsonl") + " -o " + path("x.gif")), "x.gif");
  expect_input_error(run("plot " + path("m.jsonl") + " " + path("m.jsonl") + " --names a -o " + path("x.png")),
                     "--names");
  expect_input_error(run("plot " + path("m.jsonl")), "output");
  EXPECT_FALSE(exists(path("x.png")));
  EXPECT_FALSE(exists(path("x.gif")));
}

}  // namespace
}  // namespace vrwkv
