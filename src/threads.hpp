// How a call runs with its Context's threads (vrwkv/context.hpp): for the
// duration of a call, the calling thread's OpenMP team size (which the ops'
// parallel regions and oneDNN use) is the context's; the caller's own value
// is restored when the scope ends. OpenMP keeps this value per thread, so
// calls on different threads with different contexts do not interfere.
#pragma once

#include "vrwkv/context.hpp"

namespace vrwkv {

class ThreadScope {
 public:
  explicit ThreadScope(const Context& ctx);
  ~ThreadScope();
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;
  int threads() const { return threads_; }

 private:
  int threads_, saved_;
};

}  // namespace vrwkv
