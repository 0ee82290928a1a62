// How an image becomes a model input: a vocabulary type shared by the image
// library and the model configuration.
#pragma once

#include <array>
#include <string>

namespace vrwkv {

// mmcls: short side 256, centre crop 224 (VRWKV-T/S/B); internimage: short
// side 384, centre crop 384 (VRWKV-L); resize: models trained here — the
// image in the model's channels, resized to the training grid × patch size,
// normalised with `mean` and `std`.
enum class Preprocess { Mmcls, InternImage, Resize };

struct Preprocessing {
  Preprocess kind = Preprocess::Mmcls;
  std::array<float, 3> mean{123.675f, 116.28f, 103.53f}, std{58.395f, 57.12f, 57.375f};  // 0..255, resize only
};

std::string to_string(Preprocess p);                   // "mmcls", "internimage", "resize"
Preprocess preprocess_from_string(const std::string& s);  // throws Error(Input)

}  // namespace vrwkv
