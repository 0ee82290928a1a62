// libFuzzer target for image decoding and the evaluation preprocessing
// (src/image/image.*, src/image/preprocess.*; VRWKV.md 6.1). Damaged input must end
// in Error; any other exception, crash, leak or sanitizer report is a finding.
#include <cstddef>
#include <cstdint>

#include "image/image.hpp"
#include "image/preprocess.hpp"
#include "vrwkv/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const vrwkv::Image image = vrwkv::decode_image_memory(data, size, "fuzz input");
    // Resampling a large image proves little more than a small one and would
    // slow the search down.
    if (static_cast<std::int64_t>(image.width) * image.height > (std::int64_t{1} << 20)) return 0;
    vrwkv::preprocess_image(image, vrwkv::Preprocess::Mmcls);
    vrwkv::preprocess_image(image, vrwkv::Preprocess::InternImage);
  } catch (const vrwkv::Error&) {
  }
  return 0;
}
