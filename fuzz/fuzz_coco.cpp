// libFuzzer target for COCO's formats (src/det/coco.cpp, coco_eval.cpp):
// an annotation file (JSON, polygons, RLE masks in both forms), then its
// evaluation against detections made from its own annotations, and the input
// read as an RLE string. Damaged or hostile input must end in Error; any
// other exception, crash, leak, hang or sanitizer report is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include "vrwkv/coco.hpp"
#include "vrwkv/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const vrwkv::coco::Dataset d = vrwkv::coco::parse_annotations(text, "fuzz input");
    std::vector<vrwkv::coco::Result> results;
    for (const vrwkv::coco::Annotation& a : d.annotations)
      results.push_back({a.image_id, a.category_id, a.bbox, 0.5, a.segmentation});
    vrwkv::coco::evaluate(d, results, vrwkv::coco::IouType::Box);
    bool masks = true;
    for (const auto& r : results) masks = masks && !r.segmentation.counts.empty();
    if (masks) vrwkv::coco::evaluate(d, results, vrwkv::coco::IouType::Mask);
  } catch (const vrwkv::Error&) {
  }
  try {
    const std::int64_t h = size ? 1 + data[0] % 64 : 1, w = size > 1 ? 1 + data[1] % 64 : 1;
    const vrwkv::coco::Rle r = vrwkv::coco::rle_from_string(text, h, w);
    vrwkv::coco::rle_decode(r);
    vrwkv::coco::rle_to_string(r);
  } catch (const vrwkv::Error&) {
  }
  return 0;
}
