// libFuzzer target: a whole .pth checkpoint (zip archive + data.pkl + storages) from memory.
//
// Any input must give a PthStateDict or Error(Input); a crash, a sanitizer report, an error of
// another kind or a tensor inconsistent with its shape is a finding. Build with
// -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION so that pth.cpp skips the CRC of stored entries:
// otherwise almost every mutation of data.pkl is rejected by its checksum before it is parsed.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "io/pth.hpp"
#include "vrwkv/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const vrwkv::PthStateDict sd = vrwkv::read_pth_memory(data, size, "fuzz.pth");
    for (const auto& [name, tensor] : sd.tensors) {
      if (tensor.numel() != vrwkv::shape_numel(tensor.shape())) std::abort();
      // Touch every byte so that a buffer shorter than the shape says shows up under ASan.
      std::uint8_t x = 0;
      for (std::size_t i = 0; i < tensor.nbytes(); ++i) x ^= static_cast<std::uint8_t>(tensor.raw()[i]);
      volatile std::uint8_t sink = x;
      (void)sink;
    }
  } catch (const vrwkv::Error& e) {
    if (e.kind() != vrwkv::Error::Kind::Input) std::abort();
    if (std::strncmp(e.what(), "fuzz.pth: ", 10) != 0 || std::strchr(e.what(), '\n')) std::abort();
  }
  return 0;
}
