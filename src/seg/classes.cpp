// ADE20K's 150 class names and palette (data/ade20k_*.txt, compiled in).
#include <sstream>

#include "vrwkv/segmentor.hpp"

namespace vrwkv {

namespace seg {
extern const char* const kAde20kClasses;
extern const char* const kAde20kPalette;
}  // namespace seg

const std::vector<std::string>& ade20k_classes() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    std::istringstream in(seg::kAde20kClasses);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) v.push_back(line);
    return v;
  }();
  return names;
}

const std::vector<std::array<std::uint8_t, 3>>& ade20k_palette() {
  static const std::vector<std::array<std::uint8_t, 3>> colours = [] {
    std::vector<std::array<std::uint8_t, 3>> v;
    std::istringstream in(seg::kAde20kPalette);
    for (int r, g, b; in >> r >> g >> b;)
      v.push_back({static_cast<std::uint8_t>(r), static_cast<std::uint8_t>(g), static_cast<std::uint8_t>(b)});
    return v;
  }();
  return colours;
}

}  // namespace vrwkv
