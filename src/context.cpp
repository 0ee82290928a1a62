#include "vrwkv/context.hpp"

#include <omp.h>

#include "threads.hpp"

namespace vrwkv {

int Context::resolved_threads() const { return threads > 0 ? threads : omp_get_num_procs(); }

ThreadScope::ThreadScope(const Context& ctx) : threads_(ctx.resolved_threads()), saved_(omp_get_max_threads()) {
  omp_set_num_threads(threads_);
}

ThreadScope::~ThreadScope() { omp_set_num_threads(saved_); }

}  // namespace vrwkv
