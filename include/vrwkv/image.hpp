// Images as model input (the vrwkv images library): JPEG and PNG decoding
// and the model's own preprocessing, exactly as `vrwkv classify` applies it.
//
//   vrwkv::Model model = vrwkv::Model::load("vrwkv_t_in1k_224.pth");
//   vrwkv::Tensor x = vrwkv::load_images({"cat.jpg"}, model.config());  // F32 [1,3,224,224]
//   vrwkv::Outputs out = model.forward(x);
#pragma once

#include <cstdint>
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

// The same preprocessing of pixels already decoded: 8-bit RGB, HWC,
// row-major (pixel (x, y) channel c at rgb[(y·width + x)·3 + c]), as a batch
// of one F32 [1,Cin,H,W]. Sides from 1 to 65535 and at most 2^28 pixels, as
// for files; `name` labels error messages.
Tensor preprocess_rgb(const std::uint8_t* rgb, int height, int width, const Config& config,
                      const std::string& name = "image");
// The input size {H, W} of the configuration's preprocessing.
std::pair<int, int> input_size(const Config& config);

}  // namespace vrwkv
