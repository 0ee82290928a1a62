#include "vrwkv/det_input.hpp"

#include "image/cv_resize.hpp"
#include "image/image.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv {

DetImage preprocess_det_image(std::vector<std::uint8_t> rgb, std::int64_t h, std::int64_t w, const DetPipeline& p) {
  if (h < 1 || w < 1 || static_cast<std::int64_t>(rgb.size()) != h * w * 3)
    input_error("image of ", h, "x", w, " pixels with ", rgb.size(), " bytes, expected ", h * w * 3);
  DetImage d;
  ImageMeta& m = d.meta;
  m.ori_h = h, m.ori_w = w;
  const auto [h1, w1] = rescale_size(h, w, p.long_edge, p.short_edge);
  if (h1 < 1 || w1 < 1 || h1 > 65536 || w1 > 65536)
    input_error("a ", w, "x", h, " image rescales to ", w1, "x", h1, ", which is not a size the pipeline can make");
  m.img_h = h1, m.img_w = w1;
  // mmdet's scale_factor: float32 (new_w / w, new_h / h, ...).
  const float sw = static_cast<float>(static_cast<double>(w1) / w), sh = static_cast<float>(static_cast<double>(h1) / h);
  m.scale_factor = {sw, sh, sw, sh};
  const std::vector<std::uint8_t> resized = cv_resize(rgb, h, w, h1, w1);
  const std::int64_t dv = p.size_divisor, H = (h1 + dv - 1) / dv * dv, W = (w1 + dv - 1) / dv * dv;
  m.pad_h = H, m.pad_w = W;
  d.input = Tensor(DType::F32, {1, 3, H, W});
  float* x = d.input.f32();
  std::fill(x, x + 3 * H * W, 0.0f);
  for (int c = 0; c < 3; ++c)
    for (std::int64_t y = 0; y < h1; ++y)
      for (std::int64_t i = 0; i < w1; ++i)
        x[(c * H + y) * W + i] = (static_cast<float>(resized[(y * w1 + i) * 3 + c]) - p.mean[c]) / p.std[c];
  d.original = std::move(rgb);
  return d;
}

DetImage load_det_image(const std::string& path, const DetPipeline& p) {
  Image img = decode_image(path);
  return preprocess_det_image(std::move(img.rgb), img.height, img.width, p);
}

}  // namespace vrwkv
