// Image decoding for the evaluation pipelines (VRWKV.md section 6.1;
// ../shared/golden/preprocess/README.md "LoadImageFromFile" and "Decoding").
//
// Decodes JPEG (libjpeg-turbo) and PNG (libpng) to 8-bit RGB with the pixels
// OpenCV's cv2.imdecode(..., IMREAD_COLOR) gives (in RGB rather than BGR
// order): grey is replicated, alpha dropped without compositing, 16-bit PNG
// samples keep their high byte, and the JPEG EXIF orientation is applied.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace vrwkv {

// 8-bit RGB, HWC, row-major: pixel (x, y) channel c is rgb[(y * width + x) * 3 + c].
struct Image {
  int width = 0, height = 0;
  std::vector<std::uint8_t> rgb;
};

// The format is told by the magic bytes, not the extension. Every failure
// (unreadable file, unknown format, damaged data, more than 2^28 pixels or a
// side over 65535) throws Error(Input) naming the file and the problem.
Image decode_image(const std::string& path);
// `name` only labels error messages.
Image decode_image_memory(const std::uint8_t* data, std::size_t size, const std::string& name);

}  // namespace vrwkv
