// What the dense models' image pipelines share (OpenCV, as the official code).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace vrwkv {

// cv::resize(INTER_LINEAR) of RGB uint8 pixels (the official pipelines'
// cv2.resize: fixed-point coefficients; a same-size resize is a copy).
std::vector<std::uint8_t> cv_resize(const std::vector<std::uint8_t>& src, std::int64_t h, std::int64_t w,
                                    std::int64_t oh, std::int64_t ow);

// mmcv.imrescale's size for img_scale (long_edge, short_edge): scale =
// min(long/max(h,w), short/min(h,w)) in double, each side int(side·scale + 0.5).
std::array<std::int64_t, 2> rescale_size(std::int64_t h, std::int64_t w, std::int64_t long_edge,
                                         std::int64_t short_edge);

}  // namespace vrwkv
