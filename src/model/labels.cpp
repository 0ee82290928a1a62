#include "vrwkv/labels.hpp"

#include <sstream>

namespace vrwkv {

extern const char* const kImagenetClasses;  // generated from data/imagenet_classes.txt

const std::vector<std::string>& imagenet_class_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    std::istringstream in(kImagenetClasses);
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
  }();
  return names;
}

std::vector<std::string> class_names(const Config& config) {
  if (!config.labels.empty()) return config.labels;
  const std::int64_t K = config.arch.num_classes;
  if (K == static_cast<std::int64_t>(imagenet_class_names().size())) return imagenet_class_names();
  std::vector<std::string> names;
  for (std::int64_t i = 0; i < K; ++i) names.push_back("class " + std::to_string(i));
  return names;
}

}  // namespace vrwkv
