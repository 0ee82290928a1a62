// The two official evaluation preprocessing pipelines (VRWKV.md section 6.1;
// ../shared/golden/preprocess/README.md, which defines them exactly), and the
// Pillow bicubic resampler both of them use.
#pragma once

#include "image/image.hpp"
#include <cstdint>
#include <utility>

#include "vrwkv/preprocessing.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv {

// Preprocess (Mmcls: VRWKV-T/S/B, short side 256, centre crop 224; InternImage:
// VRWKV-L, short side 384, centre crop 384) is declared in vrwkv/preprocessing.hpp.

// Pillow 9.4's Image.resize(size, Image.BICUBIC), bit for bit: antialiased
// Keys cubic (a = -0.5) whose support grows with the reduction factor,
// separable, horizontal pass first, 22-bit fixed-point weights, and the
// intermediate image rounded and clipped to uint8. A pass runs only when its
// dimension changes; the same size gives a copy. Throws Error(Input) for an
// empty or inconsistent image or an output of more than 2^28 pixels.
Image resize_bicubic_pillow(const Image& in, int out_width, int out_height);

// The resize (short side 256 or 384, long side int(S * long / short), skipped
// when the short side is S already) and the centre crop (224 or 384, offsets
// rounded half to even), as uint8 RGB. Only the cropped window is resampled,
// which gives the same pixels as resizing the whole image first.
Image preprocess_uint8(const Image& in, Preprocess p);

// The normalised float32 tensor [1, 3, S, S], RGB channel order.
Tensor preprocess_image(const Image& in, Preprocess p);

// S: 224 (Mmcls) or 384 (InternImage).
int preprocess_size(Preprocess p);

// What a model takes as input: its preprocessing, its channels and, for
// Preprocess::Resize, the size (the training grid × patch size).
struct InputFormat {
  Preprocessing preprocessing;
  std::int64_t channels = 3, height = 0, width = 0;
};

// The model's own preprocessing: the two official pipelines above, or
// Preprocess::Resize: the image in the model's channels (grey by Pillow's
// convert("L") luma), Pillow-bicubic resized to height × width, then
// (v − mean)/std per channel. Returns F32 [1, channels, H, W].
Tensor preprocess_image(const Image& in, const InputFormat& format);
// The input size that preprocess_image(·, format) produces: {H, W}.
std::pair<int, int> preprocess_size(const InputFormat& format);

}  // namespace vrwkv
