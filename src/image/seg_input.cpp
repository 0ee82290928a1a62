#include "vrwkv/seg_input.hpp"

#include <algorithm>
#include <cmath>

#include <opencv2/imgproc.hpp>

#include "image/cv_resize.hpp"
#include "image/image.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv {

std::vector<std::uint8_t> cv_resize(const std::vector<std::uint8_t>& src, std::int64_t h, std::int64_t w,
                                    std::int64_t oh, std::int64_t ow) {
  if (oh == h && ow == w) return src;
  std::vector<std::uint8_t> out(static_cast<std::size_t>(oh * ow * 3));
  const cv::Mat in(static_cast<int>(h), static_cast<int>(w), CV_8UC3, const_cast<std::uint8_t*>(src.data()));
  cv::Mat dst(static_cast<int>(oh), static_cast<int>(ow), CV_8UC3, out.data());
  cv::resize(in, dst, dst.size(), 0, 0, cv::INTER_LINEAR);
  return out;
}

std::array<std::int64_t, 2> rescale_size(std::int64_t h, std::int64_t w, std::int64_t long_edge,
                                         std::int64_t short_edge) {
  const double scale = std::min(static_cast<double>(long_edge) / std::max(h, w),
                                static_cast<double>(short_edge) / std::min(h, w));
  return {static_cast<std::int64_t>(h * scale + 0.5), static_cast<std::int64_t>(w * scale + 0.5)};
}

std::array<std::int64_t, 2> rescale_size(std::int64_t h, std::int64_t w, const SegPipeline& p) {
  return rescale_size(h, w, p.long_edge, p.short_edge);
}

SegImage preprocess_seg_image(std::vector<std::uint8_t> rgb, std::int64_t h, std::int64_t w, const SegPipeline& p) {
  if (h < 1 || w < 1 || static_cast<std::int64_t>(rgb.size()) != h * w * 3)
    input_error("image of ", h, "x", w, " pixels with ", rgb.size(), " bytes, expected ", h * w * 3);
  SegImage s;
  s.ori_h = h, s.ori_w = w;
  const auto [h1, w1] = rescale_size(h, w, p);
  if (h1 < 1 || w1 < 1 || h1 > 65536 || w1 > 65536)
    input_error("a ", w, "x", h, " image rescales to ", w1, "x", h1, ", which is not a size the pipeline can make");
  s.rescaled_h = h1, s.rescaled_w = w1;
  s.rescaled = cv_resize(rgb, h, w, h1, w1);
  const std::int64_t d = p.size_divisor, h2 = (h1 + d - 1) / d * d, w2 = (w1 + d - 1) / d * d;
  s.resized = cv_resize(s.rescaled, h1, w1, h2, w2);
  s.original = std::move(rgb);
  s.input = Tensor(DType::F32, {1, 3, h2, w2});
  float* x = s.input.f32();
  for (int c = 0; c < 3; ++c)
    for (std::int64_t i = 0; i < h2 * w2; ++i)
      x[c * h2 * w2 + i] = (static_cast<float>(s.resized[i * 3 + c]) - p.mean[c]) / p.std[c];
  return s;
}

SegImage load_seg_image(const std::string& path, const SegPipeline& p) {
  Image img = decode_image(path);
  return preprocess_seg_image(std::move(img.rgb), img.height, img.width, p);
}

}  // namespace vrwkv
