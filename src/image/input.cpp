// The public images API (vrwkv/image.hpp): a model configuration's input
// format, and files through it.
#include <cstring>

#include "image/input.hpp"

#include "image/image.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/image.hpp"

namespace vrwkv {

InputFormat input_format(const Config& c) {
  return {c.preprocessing, c.arch.in_channels, c.arch.pos_grid_h * c.arch.patch_size,
          c.arch.pos_grid_w * c.arch.patch_size};
}

std::pair<int, int> input_size(const Config& config) { return preprocess_size(input_format(config)); }

Tensor load_images(const std::vector<std::string>& paths, const Config& config) {
  const InputFormat format = input_format(config);
  const auto [H, W] = preprocess_size(format);
  const std::int64_t n = static_cast<std::int64_t>(paths.size()), size = format.channels * H * W;
  Tensor batch(DType::F32, {n, format.channels, H, W});
  for (std::int64_t i = 0; i < n; ++i) {
    const Tensor one = preprocess_image(decode_image(paths[i]), format);
    std::memcpy(batch.f32() + i * size, one.f32(), one.nbytes());
  }
  return batch;
}

Tensor preprocess_rgb(const std::uint8_t* rgb, int height, int width, const Config& config, const std::string& name) {
  constexpr std::int64_t kMaxSide = 65535, kMaxPixels = std::int64_t{1} << 28;
  if (height < 1 || width < 1 || height > kMaxSide || width > kMaxSide ||
      std::int64_t{height} * width > kMaxPixels)
    input_error(name, ": ", width, "x", height, " pixels is not a supported image size (1 to 65535 pixels a side, ",
                "at most 2^28 pixels in all)");
  if (!rgb) input_error(name, ": no pixel data");
  Image image;
  image.width = width;
  image.height = height;
  image.rgb.assign(rgb, rgb + std::size_t(height) * std::size_t(width) * 3);
  return preprocess_image(image, input_format(config));
}

}  // namespace vrwkv
