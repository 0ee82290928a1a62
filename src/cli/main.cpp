// vrwkv: the command-line program. It parses arguments and calls the library;
// exit codes: 0 success, 2 bad input or usage, 1 failure at run time.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <new>

#include "commands.hpp"
#include "mpi.hpp"
#include "signals.hpp"
#include "vrwkv/distributed.hpp"
#include "vrwkv/error.hpp"

namespace {
// OpenMP threads that wait by spinning collapse when the host time-slices the
// cores (measured here: 31 images/s with OMP_WAIT_POLICY=active against 70 with
// a short spin, 49 passive). libgomp reads its settings once, when it is
// loaded, so when the user has chosen none the program runs itself again with
// a short spin. OMP_WAIT_POLICY or GOMP_SPINCOUNT in the environment win.
void choose_wait_policy(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  setenv("GOMP_SPINCOUNT", "10000", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then go on with the defaults
}
}  // namespace

int main(int argc, char** argv) {
  choose_wait_policy(argv);
  vrwkv::cli::install_signal_handlers();
  CLI::App app{"vrwkv: Vision-RWKV inference on the CPU, from official checkpoints"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "vrwkv 0.1.0");
  vrwkv::cli::add_classify(app);
  vrwkv::cli::add_segment(app);
  vrwkv::cli::add_detect(app);
  vrwkv::cli::add_run(app);
  vrwkv::cli::add_convert(app);
  vrwkv::cli::add_info(app);
  vrwkv::cli::add_bench(app);
  vrwkv::cli::add_grad(app);
  vrwkv::cli::add_train(app);
  vrwkv::cli::add_eval(app);
  vrwkv::cli::add_plot(app);
  vrwkv::cli::add_erf(app);
  const auto is_command = [&](const std::string& name) {
    for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
      if (sub->check_name(name)) return true;
    return false;
  };
  if (argc > 1 && argv[1][0] != '-' && !is_command(argv[1])) {
    std::fprintf(stderr, "vrwkv: unknown command '%s' (expected classify, segment, run, grad, train, eval, convert, info, bench or plot; see --help)\n", argv[1]);
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // Under mpirun every rank has the same command line: rank 0 alone says what is wrong with it.
    if (!vrwkv::cli::launched_by_mpirun() || vrwkv::cli::launcher_rank() == 0)
      std::fprintf(stderr, "vrwkv: %s (see --help)\n", e.what());
    return 2;
  } catch (const vrwkv::train::PeerFailure& e) {
    return e.exit_code();  // another rank of `mpirun ... vrwkv train` failed and said why
  } catch (const vrwkv::Error& e) {
    std::fprintf(stderr, "vrwkv: %s\n", e.what());
    return e.kind() == vrwkv::Error::Kind::Input ? 2 : 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "vrwkv: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vrwkv: %s\n", e.what());
    return 1;
  }
  // A command that stopped cleanly on a signal exits as the signal asked.
  if (const int sig = vrwkv::cli::stop_signal().load()) return 128 + sig;
  return 0;
}
