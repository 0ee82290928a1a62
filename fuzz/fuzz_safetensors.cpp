// libFuzzer target: the safetensors reader on arbitrary bytes. Error(Input) is
// the expected answer to garbage; anything else (a crash, a leak, another
// exception) is a finding.
#include <cstddef>
#include <cstdint>

#include "vrwkv/error.hpp"
#include "vrwkv/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    vrwkv::Metadata meta;
    vrwkv::read_safetensors_memory(data, size, "fuzz.safetensors", &meta);
  } catch (const vrwkv::Error&) {
  }
  return 0;
}
