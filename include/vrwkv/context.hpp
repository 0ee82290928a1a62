// Where and how the library runs a call: a value passed to every call that
// computes (Model::forward and its stages, Backprop, training, evaluation).
//
//   vrwkv::Context ctx{.threads = 2};
//   model.forward(input, {}, ctx);
//
// The library keeps no thread count of its own and never changes the
// caller's: during a call, the calling thread's OpenMP team size is the
// context's, and it is restored when the call returns. Two calls on different
// threads with different contexts run side by side.
#pragma once

namespace vrwkv {

struct Context {
  int threads = 0;  // worker threads; 0: every core available to the process
  // The thread count a call with this context uses (>= 1).
  int resolved_threads() const;
};

}  // namespace vrwkv
