// The picture of `vrwkv detect` (part of vrwkv_plot, with cairo): the photo
// with each detection's mask blended in its class colour, its box outlined,
// and a tag with the class name and score.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace vrwkv::plot {

struct DetBox {
  float x1, y1, x2, y2, score;
  int label;
  const std::uint8_t* mask = nullptr;  // height × width 0/1, or none
};

// image: RGB uint8 HWC. Writes a PNG of the photo's size to `path`
// atomically. Error(Input): a label outside the palette, palette and names
// of different sizes, a size a PNG surface cannot hold; Error(Runtime): the
// PNG cannot be made or written.
void detection_overlay(const std::uint8_t* image, std::int64_t height, std::int64_t width,
                       const std::vector<DetBox>& detections, const std::vector<std::array<std::uint8_t, 3>>& palette,
                       const std::vector<std::string>& names, const std::string& path, double mask_alpha = 0.5);

}  // namespace vrwkv::plot
