// Class names of a model: its own (recorded in the file), ImageNet's for a
// 1000-class head, "class N" otherwise.
#pragma once

#include <string>
#include <vector>

#include "vrwkv/config.hpp"

namespace vrwkv {

// The 1000 ImageNet-1k class names in index order (compiled into the library).
const std::vector<std::string>& imagenet_class_names();

std::vector<std::string> class_names(const Config& config);

}  // namespace vrwkv
