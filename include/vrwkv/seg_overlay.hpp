// The overlay picture of `vrwkv segment` (part of the vrwkv_plot library, the
// only part of vrwkv that needs cairo): a photo blended with the class colours
// of a segmentation, and a legend of its largest classes.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vrwkv::plot {

struct OverlayStyle {
  double alpha = 0.5;       // weight of the class colour, in [0, 1]
  int legend_classes = 8;   // rows of the legend at most; 0: no legend
};

// The label of a pixel that belongs to no class: it keeps the photo's colour.
constexpr std::uint8_t kNoClass = 255;

// image: RGB uint8, height x width x 3 (HWC); labels: uint8, height x width, a
// class index or kNoClass. palette: one RGB colour per class; names: one name
// per class (as many as colours).
//
// Writes a PNG of the photo's size to `path`, atomically (a failure leaves no
// file): each labelled pixel is round((1 - alpha) * photo + alpha * colour),
// kNoClass pixels are the photo's. A legend box over the top-left corner lists
// the style.legend_classes largest classes by pixel count, each with a colour
// swatch, its name and its share of the picture's pixels. Its font size grows
// with the image; on an image too small for it, rows are left out, names
// shortened, or the legend left out altogether.
//
// Error(Input): a label >= palette.size() other than kNoClass (naming the value
// and the pixel), palette and names of different sizes, a size that is not
// positive or larger than a PNG surface allows (32767), alpha outside [0, 1],
// a path that cannot be written. Error(Runtime): the PNG cannot be made or written.
void segmentation_overlay(const std::uint8_t* image, const std::uint8_t* labels, std::int64_t height,
                          std::int64_t width, const std::vector<std::array<std::uint8_t, 3>>& palette,
                          const std::vector<std::string>& names, const std::string& path,
                          const OverlayStyle& style = {});

// The classes of `n` labels by pixel count, largest first (ties: the smaller
// index first), as (index, count), at most k of them; kNoClass is skipped and
// classes with no pixels are not listed.
std::vector<std::pair<int, std::int64_t>> largest_classes(const std::uint8_t* labels, std::int64_t n, int k);

}  // namespace vrwkv::plot
