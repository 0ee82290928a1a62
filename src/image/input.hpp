// The images library's bridge to a model configuration: the input format
// (preprocessing, channels, resize size) that a Config asks for.
#pragma once

#include "image/preprocess.hpp"
#include "vrwkv/config.hpp"

namespace vrwkv {

InputFormat input_format(const Config& config);

}  // namespace vrwkv
