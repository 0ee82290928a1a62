// What the oneDNN primitives of the ops share: one CPU engine, and scratch
// memory owned by the calling thread (primitives are made with the user
// scratchpad mode: oneDNN's own is bound to the thread that made them).
#pragma once

#include <cstdint>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

namespace vrwkv::ops {

inline dnnl::engine& dnnl_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// This thread's scratch memory for `d`, 64-byte aligned, grown as needed.
inline dnnl::memory thread_scratch(const dnnl::memory::desc& d) {
  thread_local std::vector<char> scratch;
  if (scratch.size() < d.get_size() + 64) scratch.resize(d.get_size() + 64);
  const auto at = reinterpret_cast<std::uintptr_t>(scratch.data());
  return dnnl::memory(d, dnnl_engine(), scratch.data() + (64 - at % 64) % 64);
}

// Primitive attributes with the user scratchpad mode.
inline dnnl::primitive_attr user_scratch_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

}  // namespace vrwkv::ops
