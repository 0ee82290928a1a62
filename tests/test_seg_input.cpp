// The ADE20K test pipeline against the official one
// (../shared/golden/dense/preprocess): the uint8 stages (OpenCV's fixed-point
// bilinear resizes) identical, the normalised input within 1e-6 (one float32
// rounding of (x − mean)/std; |x| ≤ 2.7, 1 ulp ≤ 2.4e-7; an off-by-one uint8
// would move a value by 1/std ≈ 0.017).
#include "common.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/seg_input.hpp"

namespace vrwkv::test {
namespace {

class SegPipelineGolden : public ::testing::TestWithParam<std::string> {};

// The golden's BGR HWC uint8 stage as RGB.
std::vector<std::uint8_t> rgb_of(const Tensor& bgr) {
  std::vector<std::uint8_t> out(bgr.numel());
  const std::uint8_t* v = bgr.data<std::uint8_t>();
  for (std::int64_t i = 0; i < bgr.numel() / 3; ++i)
    for (int c = 0; c < 3; ++c) out[i * 3 + c] = v[i * 3 + 2 - c];
  return out;
}

TEST_P(SegPipelineGolden, StagesMatch) {
  const std::string dir = golden("dense/preprocess/");
  const TensorMap g = read_safetensors(dir + GetParam().substr(0, GetParam().find('.')) + ".safetensors");
  const SegImage s = load_seg_image(dir + GetParam());
  const Tensor &rescaled = g.at("rescaled"), &resized = g.at("resized");
  EXPECT_EQ(s.ori_h, g.at("ori_shape").data<std::int64_t>()[0]);
  EXPECT_EQ(s.ori_w, g.at("ori_shape").data<std::int64_t>()[1]);
  ASSERT_EQ(s.rescaled_h, rescaled.dim(0));
  ASSERT_EQ(s.rescaled_w, rescaled.dim(1));
  EXPECT_TRUE(s.rescaled == rgb_of(rescaled)) << "rescaled differs";
  EXPECT_TRUE(s.resized == rgb_of(resized)) << "resized differs";
  const Tensor& want = g.at("input");
  ASSERT_EQ(s.input.shape(), want.shape());
  EXPECT_LE(max_abs_diff(s.input.f32(), want.f32(), want.numel()), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Photos, SegPipelineGolden, ::testing::Values("rocket.jpg", "text.png"));

// mmcv's _scale_size: the +0.5 before truncation decides 119.95 -> 120 (a
// 700x41 image), and a side that is already exact stays.
TEST(SegPipeline, RescaleSizeAsMmcv) {
  EXPECT_EQ(rescale_size(41, 700), (std::array<std::int64_t, 2>{120, 2048}));
  EXPECT_EQ(rescale_size(427, 640), (std::array<std::int64_t, 2>{512, 767}));
  EXPECT_EQ(rescale_size(512, 600), (std::array<std::int64_t, 2>{512, 600}));
}

TEST(SegPipeline, BadInputIsAnError) {
  EXPECT_THROW(load_seg_image("/nonexistent/photo.jpg"), Error);
  EXPECT_THROW(preprocess_seg_image(std::vector<std::uint8_t>(10), 2, 2), Error);
}

}  // namespace
}  // namespace vrwkv::test
