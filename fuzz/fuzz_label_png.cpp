// libFuzzer target for the segmentation label maps (src/seg/ade20k.cpp,
// decode_label_png): damaged or hostile PNGs must end in Error; any other
// exception, crash, leak or sanitizer report is a finding.
#include <cstddef>
#include <cstdint>

#include "vrwkv/error.hpp"
#include "vrwkv/seg_data.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    vrwkv::seg::decode_label_png(data, size, "fuzz input");
  } catch (const vrwkv::Error&) {
  }
  return 0;
}
