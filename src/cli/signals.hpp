// SIGINT and SIGTERM: every command removes its temporary files and exits
// 130 or 143 with one line. A command that can stop cleanly (train) asks for
// a graceful stop: the first signal only sets stop_signal(), which it polls
// (train finishes the step, writes a checkpoint and returns); a second
// signal stops at once. The signals are blocked in every thread and taken by
// one thread that waits for them (install before any other thread starts).
#pragma once

#include <atomic>

namespace vrwkv::cli {

void install_signal_handlers();
void set_graceful_stop(bool graceful);
// Whether a signal is announced on stderr (the ranks of an MPI group other than 0 stay quiet).
void set_signal_messages(bool on);
// The signal that asked for a graceful stop (0: none).
std::atomic<int>& stop_signal();

}  // namespace vrwkv::cli
