// The fixture of the tests that run the vrwkv program: a temporary folder
// per test, the program run with its output captured, and the error
// contract (exit code 2, one line on stderr naming the input).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

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

  std::string dir_;
};

}  // namespace vrwkv
