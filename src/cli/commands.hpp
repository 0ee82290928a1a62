// The subcommands of the vrwkv program, one file each.
#pragma once

#include <CLI/CLI.hpp>

namespace vrwkv::cli {

void add_classify(CLI::App& app);
void add_segment(CLI::App& app);
void add_detect(CLI::App& app);
void add_run(CLI::App& app);
void add_convert(CLI::App& app);
void add_info(CLI::App& app);
void add_bench(CLI::App& app);
void add_grad(CLI::App& app);
void add_train(CLI::App& app);
void add_eval(CLI::App& app);
void add_plot(CLI::App& app);
void add_erf(CLI::App& app);

}  // namespace vrwkv::cli
