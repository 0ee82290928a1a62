// Images as model input (the vrwkv images library): JPEG and PNG decoding
// and the model's own preprocessing, exactly as `vrwkv classify` applies it.
//
//   vrwkv::Model model = vrwkv::Model::load("vrwkv_t_in1k_224.pth");
//   vrwkv::Tensor x = vrwkv::load_images({"cat.jpg"}, model.config());  // F32 [1,3,224,224]
//   vrwkv::Outputs out = model.forward(x);
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "vrwkv/config.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv {

// Decodes image files (grey, RGB, RGBA, palette, 16-bit) and preprocesses
// each as the configuration says into one batch F32 [N,Cin,H,W]. A file that
// is missing, not an image or corrupt throws Error(Input) naming it.
Tensor load_images(const std::vector<std::string>& paths, const Config& config);

// The input size {H, W} of the configuration's preprocessing.
std::pair<int, int> input_size(const Config& config);

}  // namespace vrwkv
