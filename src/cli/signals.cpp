#include "signals.hpp"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "vrwkv/atomic_file.hpp"

namespace vrwkv::cli {

namespace {

std::atomic<int> g_stop{0};
std::atomic<bool> g_graceful{false};
std::atomic<bool> g_quiet{false};

void say(const char* text) {
  if (g_quiet.load()) return;
  const ssize_t n = write(STDERR_FILENO, text, std::strlen(text));
  (void)n;
}

// SIGINT and SIGTERM are blocked in every thread and taken here, by one
// thread that waits for them: they never interrupt the threads that compute
// (no system call cut short, no handler in the middle of a kernel).
void wait_for_signals(sigset_t set) {
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    int none = 0;
    if (g_graceful.load() && g_stop.compare_exchange_strong(none, sig)) {
      say("\nvrwkv: stopping after the current step (a checkpoint follows); signal again to stop at once\n");
      continue;
    }
    remove_temporary_files();
    say(sig == SIGINT ? "\nvrwkv: interrupted (SIGINT); unfinished output removed\n"
                      : "\nvrwkv: terminated (SIGTERM); unfinished output removed\n");
    _exit(128 + sig);
  }
}

pthread_t g_waiter;

// Threads that libraries start before main (TBB's, which OpenCV links) do not
// have the mask: a signal the kernel delivers to one of them lands here and
// is passed on to the waiting thread (pthread_kill is async-signal-safe).
void forward_to_waiter(int sig) { pthread_kill(g_waiter, sig); }

}  // namespace

void install_signal_handlers() {
  // Early in main, so that every thread started from here on inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread waiter(wait_for_signals, set);
  g_waiter = waiter.native_handle();
  waiter.detach();
  struct sigaction forward {};
  forward.sa_handler = forward_to_waiter;
  sigemptyset(&forward.sa_mask);
  forward.sa_flags = SA_RESTART;
  sigaction(SIGINT, &forward, nullptr);
  sigaction(SIGTERM, &forward, nullptr);
}

void set_graceful_stop(bool graceful) { g_graceful.store(graceful); }

void set_signal_messages(bool on) { g_quiet.store(!on); }

std::atomic<int>& stop_signal() { return g_stop; }

}  // namespace vrwkv::cli
