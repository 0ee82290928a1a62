#include "signals.hpp"

#include <signal.h>
#include <unistd.h>

#include <cstring>

#include "vrwkv/atomic_file.hpp"

namespace vrwkv::cli {

namespace {

std::atomic<int> g_stop{0};
std::atomic<bool> g_graceful{false};

void say(const char* text) {
  const ssize_t n = write(STDERR_FILENO, text, std::strlen(text));
  (void)n;
}

extern "C" void on_signal(int sig) {
  int none = 0;
  if (g_graceful.load() && g_stop.compare_exchange_strong(none, sig)) {
    say("\nvrwkv: stopping after the current step (a checkpoint follows); signal again to stop at once\n");
    return;
  }
  remove_temporary_files();
  say(sig == SIGINT ? "\nvrwkv: interrupted (SIGINT); unfinished output removed\n"
                    : "\nvrwkv: terminated (SIGTERM); unfinished output removed\n");
  _exit(128 + sig);
}

}  // namespace

void install_signal_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

void set_graceful_stop(bool graceful) { g_graceful.store(graceful); }

std::atomic<int>& stop_signal() { return g_stop; }

}  // namespace vrwkv::cli
