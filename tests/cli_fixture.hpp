// The fixture of the tests that run the vrwkv program: a temporary folder
// per test, the program run with its output captured, and the error
// contract (exit code 2, one line on stderr naming the input).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "common.hpp"

namespace vrwkv {

struct CliResult {
  int code;
  std::string out, err;
};


class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "vrwkv_cli_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    ASSERT_EQ(std::system(("rm -rf '" + dir_ + "' && mkdir -p '" + dir_ + "'").c_str()), 0);
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  CliResult run(const std::string& args) const {
    const std::string cmd = std::string(VRWKV_CLI_PATH) + " " + args + " >'" + path("stdout") + "' 2>'" +
                            path("stderr") + "'";
    const int status = std::system(cmd.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, test::slurp(path("stdout")), test::slurp(path("stderr"))};
  }

  void write(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary) << bytes;
  }

  // Exit code 2, exactly one line on stderr that mentions `mention`.
  void expect_input_error(const CliResult& r, const std::string& mention) const {
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(mention), std::string::npos) << r.err;
  }

  // `vrwkv run` and `vrwkv grad` on a model case (test::case_path) with the
  // flags `flags`: features (each out index), logits, loss and every gradient
  // within the golden tolerances 2e-5 / 5e-5 · max(1, max|golden|). The
  // case's out indices are added to the flags.
  void expect_cli_reproduces_case(const std::string& name, std::string flags) const {
    const std::string base = test::case_path(name);
    std::ifstream f(base + ".json");
    const nlohmann::json j = nlohmann::json::parse(f);
    const std::string model = test::golden_beside(name, j.at("checkpoint"));
    if (j.at("backbone").at("out_indices").is_array()) {
      flags += " --out-indices ";
      for (const auto& i : j.at("backbone").at("out_indices")) flags += std::to_string(i.get<int>()) + ",";
      flags.pop_back();
    }
    const TensorMap g = read_safetensors(base + ".safetensors");
    CliResult r = run("run --model " + model + flags + " --input " + base + ".safetensors --output " + path("o.st"));
    ASSERT_EQ(r.code, 0) << name << ": " << r.err;
    const TensorMap out = read_safetensors(path("o.st"));
    int forward = 0;
    for (const auto& [key, t] : out)
      if (key == "logits" || key.starts_with("features")) {
        ASSERT_TRUE(g.count(key)) << name << " " << key;
        EXPECT_TRUE(test::close_to(t, g.at(key), test::kForwardTol)) << name << " " << key;
        ++forward;
      }
    EXPECT_GE(forward, 2) << name;
    r = run("grad --model " + model + flags + " --input " + base + ".safetensors --output " + path("g.st"));
    ASSERT_EQ(r.code, 0) << name << ": " << r.err;
    const TensorMap grads = read_safetensors(path("g.st"));
    int checked = 0;
    for (const auto& [key, t] : g)
      if (key == "loss" || key.starts_with("grad.")) {
        ASSERT_TRUE(grads.count(key)) << name << " " << key;
        EXPECT_TRUE(test::close_to(grads.at(key), t, test::kGradTol)) << name << " " << key;
        ++checked;
      }
    EXPECT_GT(checked, 30) << name;
  }

  std::string dir_;
};

}  // namespace vrwkv
