// The segmentation overlay: the blend read back from the PNG (exact outside
// the legend, the photo's colour where there is no class), the legend drawn in
// the top-left corner and growing with the picture, small pictures, the errors
// (a label that is not a class names its value and leaves no file), and the
// ranking of the largest classes.
#include <dirent.h>
#include <png.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/seg_overlay.hpp"

namespace vrwkv {
namespace {

using test::input_error_of;

using plot::largest_classes;
using plot::segmentation_overlay;
using Palette = std::vector<std::array<std::uint8_t, 3>>;

bool exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// An RGB picture read back with libpng.
struct Picture {
  std::int64_t height = 0, width = 0;
  std::vector<std::uint8_t> rgb;
  const std::uint8_t* at(std::int64_t y, std::int64_t x) const { return rgb.data() + (y * width + x) * 3; }
};

Picture read_png(const std::string& path) {
  png_image img{};
  img.version = PNG_IMAGE_VERSION;
  Picture p;
  if (!png_image_begin_read_from_file(&img, path.c_str())) {
    ADD_FAILURE() << path << ": " << img.message;
    return p;
  }
  img.format = PNG_FORMAT_RGB;
  p.height = img.height, p.width = img.width;
  p.rgb.resize(PNG_IMAGE_SIZE(img));
  if (!png_image_finish_read(&img, nullptr, p.rgb.data(), 0, nullptr)) {
    ADD_FAILURE() << path << ": " << img.message;
    p = {};
  }
  png_image_free(&img);
  return p;
}

// A photo with every channel varying, and labels in three vertical bands
// (classes 0, 1, 2) with a block of no class in the bottom-right corner.
struct Scene {
  std::int64_t height, width;
  std::vector<std::uint8_t> image, labels;

  Scene(std::int64_t h, std::int64_t w) : height(h), width(w), image(h * w * 3), labels(h * w) {
    for (std::int64_t y = 0; y < h; ++y)
      for (std::int64_t x = 0; x < w; ++x) {
        std::uint8_t* p = &image[(y * w + x) * 3];
        p[0] = static_cast<std::uint8_t>(x * 255 / (w - 1 > 0 ? w - 1 : 1));
        p[1] = static_cast<std::uint8_t>(y * 255 / (h - 1 > 0 ? h - 1 : 1));
        p[2] = static_cast<std::uint8_t>((x * 7 + y * 3) % 256);
        labels[y * w + x] = x >= w * 3 / 4 && y >= h * 3 / 4 ? plot::kNoClass : x < w / 2 ? 0 : x < w * 3 / 4 ? 1 : 2;
      }
  }
};

const Palette kPalette = {{{200, 30, 40}}, {{20, 160, 60}}, {{40, 70, 230}}};
const std::vector<std::string> kNames = {"road", "vegetation", "sky"};

class Overlay : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "vrwkv_overlay_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    ASSERT_EQ(std::system(("rm -rf '" + dir_ + "' && mkdir -p '" + dir_ + "'").c_str()), 0);
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  // The names in the test's directory (to see that a failure leaves no temporary file either).
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    if (DIR* d = opendir(dir_.c_str())) {
      while (const dirent* e = readdir(d))
        if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") out.push_back(e->d_name);
      closedir(d);
    }
    return out;
  }


  std::string dir_;
};

// What a pixel of the overlay must be outside the legend.
std::array<int, 3> expected(const Scene& s, std::int64_t y, std::int64_t x, double alpha) {
  const std::uint8_t* p = &s.image[(y * s.width + x) * 3];
  const std::uint8_t label = s.labels[y * s.width + x];
  std::array<int, 3> out{p[0], p[1], p[2]};
  if (label != plot::kNoClass)
    for (int k = 0; k < 3; ++k) out[k] = static_cast<int>(std::lround((1 - alpha) * p[k] + alpha * kPalette[label][k]));
  return out;
}

// Pixels of rows [y0, y1) that differ from the blend by more than rounding.
std::int64_t mismatches(const Picture& pic, const Scene& s, double alpha, std::int64_t y0, std::int64_t y1) {
  std::int64_t bad = 0;
  for (std::int64_t y = y0; y < y1; ++y)
    for (std::int64_t x = 0; x < s.width; ++x) {
      const auto want = expected(s, y, x, alpha);
      for (int k = 0; k < 3; ++k)
        if (std::abs(pic.at(y, x)[k] - want[k]) > 1) {
          ++bad;
          break;
        }
    }
  return bad;
}

// The bounding box (x0, y0, x1, y1) of the pixels that differ from the blend: the legend.
std::array<std::int64_t, 4> legend_box(const Picture& pic, const Scene& s, double alpha) {
  std::array<std::int64_t, 4> box{s.width, s.height, -1, -1};
  for (std::int64_t y = 0; y < s.height; ++y)
    for (std::int64_t x = 0; x < s.width; ++x) {
      const auto want = expected(s, y, x, alpha);
      bool differs = false;
      for (int k = 0; k < 3; ++k) differs |= std::abs(pic.at(y, x)[k] - want[k]) > 1;
      if (differs)
        box = {std::min(box[0], x), std::min(box[1], y), std::max(box[2], x), std::max(box[3], y)};
    }
  return box;
}

TEST_F(Overlay, BlendsThePhotoWithTheClassColours) {
  const Scene s(160, 200);
  for (const double alpha : {0.5, 0.3, 1.0, 0.0}) {
    SCOPED_TRACE(alpha);
    const std::string out = path("overlay.png");
    segmentation_overlay(s.image.data(), s.labels.data(), s.height, s.width, kPalette, kNames, out, {alpha, 8});
    const Picture pic = read_png(out);
    ASSERT_EQ(pic.height, s.height);
    ASSERT_EQ(pic.width, s.width);
    // The bottom half is far from the legend of three rows: the blend, exactly.
    EXPECT_EQ(mismatches(pic, s, alpha, s.height / 2, s.height), 0);
    // A pixel of no class keeps the photo's colour, and a labelled one is the blend.
    const std::uint8_t* none = pic.at(s.height - 3, s.width - 5);
    const std::uint8_t* photo = &s.image[((s.height - 3) * s.width + s.width - 5) * 3];
    EXPECT_EQ(std::vector<int>(none, none + 3), std::vector<int>(photo, photo + 3));
    const std::uint8_t* road = pic.at(s.height - 3, 10);
    const auto want = expected(s, s.height - 3, 10, alpha);
    for (int k = 0; k < 3; ++k) EXPECT_NEAR(road[k], want[k], 1);
    // The legend: in the top-left corner, within the upper half.
    const auto box = legend_box(pic, s, alpha);
    ASSERT_GE(box[2], 0) << "no legend drawn";
    EXPECT_LT(box[0], 16);
    EXPECT_LT(box[1], 16);
    EXPECT_LT(box[2], s.width * 3 / 4);
    EXPECT_LT(box[3], s.height / 2);
  }
  EXPECT_EQ(listing(), std::vector<std::string>{"overlay.png"});
}

TEST_F(Overlay, LegendGrowsWithThePicture) {
  std::int64_t previous = 0;
  for (const std::int64_t w : {256, 1024}) {
    const Scene s(w * 3 / 4, w);
    segmentation_overlay(s.image.data(), s.labels.data(), s.height, s.width, kPalette, kNames, path("o.png"));
    const Picture pic = read_png(path("o.png"));
    ASSERT_EQ(pic.width, w);
    const auto box = legend_box(pic, s, 0.5);
    ASSERT_GE(box[2], 0) << "no legend drawn at width " << w;
    const std::int64_t legend_w = box[2] - box[0] + 1;
    EXPECT_GT(legend_w, w / 8) << "a legend too small to read";
    EXPECT_LT(legend_w, w * 3 / 4);
    EXPECT_GT(legend_w, previous * 3 / 2);  // the font grows with the picture
    previous = legend_w;
    EXPECT_EQ(mismatches(pic, s, 0.5, s.height * 3 / 4, s.height), 0);
  }
}

TEST_F(Overlay, NoLegendWhenAsked) {
  const Scene s(40, 60);
  segmentation_overlay(s.image.data(), s.labels.data(), s.height, s.width, kPalette, kNames, path("o.png"), {0.5, 0});
  const Picture pic = read_png(path("o.png"));
  ASSERT_EQ(pic.height, s.height);
  EXPECT_EQ(mismatches(pic, s, 0.5, 0, s.height), 0);
}

TEST_F(Overlay, TinyAndThinPictures) {
  for (const auto& [h, w] : std::vector<std::pair<std::int64_t, std::int64_t>>{{1, 1}, {16, 16}, {48, 64}, {64, 2}, {3, 500}}) {
    SCOPED_TRACE(std::to_string(h) + "x" + std::to_string(w));
    const Scene s(h, w);
    const std::vector<std::string> long_names = {"a class with a very long name indeed, too long for any legend",
                                                 "vegetation", "sky"};
    segmentation_overlay(s.image.data(), s.labels.data(), h, w, kPalette, long_names, path("o.png"));
    const Picture pic = read_png(path("o.png"));
    EXPECT_EQ(pic.height, h);
    EXPECT_EQ(pic.width, w);
  }
}

TEST_F(Overlay, LabelThatIsNotAClass) {
  Scene s(20, 30);
  s.labels[5 * 30 + 7] = 7;
  const std::string msg = input_error_of([&] {
    segmentation_overlay(s.image.data(), s.labels.data(), s.height, s.width, kPalette, kNames, path("bad.png"));
  });
  EXPECT_NE(msg.find("label 7"), std::string::npos) << msg;
  EXPECT_NE(msg.find("row 5, column 7"), std::string::npos) << msg;
  EXPECT_FALSE(exists(path("bad.png")));
  EXPECT_TRUE(listing().empty());

  s.labels[5 * 30 + 7] = 3;  // one past the palette
  EXPECT_NE(input_error_of([&] {
              segmentation_overlay(s.image.data(), s.labels.data(), s.height, s.width, kPalette, kNames, path("bad.png"));
            }).find("label 3"),
            std::string::npos);
  EXPECT_TRUE(listing().empty());
}

TEST_F(Overlay, OtherInputErrors) {
  const Scene s(20, 30);
  const auto draw = [&](const Palette& palette, const std::vector<std::string>& names, std::int64_t h, std::int64_t w,
                        plot::OverlayStyle style, const std::string& out) {
    return input_error_of(
        [&] { segmentation_overlay(s.image.data(), s.labels.data(), h, w, palette, names, out, style); });
  };
  EXPECT_NE(draw(kPalette, {"road", "sky"}, 20, 30, {}, path("o.png")).find("3 class colours but 2 class names"),
            std::string::npos);
  EXPECT_NE(draw(kPalette, kNames, 0, 30, {}, path("o.png")).find("0x30"), std::string::npos);
  EXPECT_NE(draw(kPalette, kNames, 20, 30, {1.5, 8}, path("o.png")).find("1.5"), std::string::npos);
  EXPECT_NE(draw(kPalette, kNames, 20, 30, {0.5, -1}, path("o.png")).find("-1"), std::string::npos);
  draw(kPalette, kNames, 20, 30, {}, path("missing/o.png"));
  draw(kPalette, kNames, 20, 30, {}, dir_);
  EXPECT_TRUE(listing().empty());
}

TEST_F(Overlay, OverwritesAtomically) {
  const Scene s(20, 30);
  segmentation_overlay(s.image.data(), s.labels.data(), s.height, s.width, kPalette, kNames, path("o.png"));
  const std::string before = test::slurp(path("o.png"));
  Scene bad = s;
  bad.labels[0] = 200;
  input_error_of([&] {
    segmentation_overlay(bad.image.data(), bad.labels.data(), bad.height, bad.width, kPalette, kNames, path("o.png"));
  });
  EXPECT_EQ(test::slurp(path("o.png")), before);  // the previous picture is untouched
  EXPECT_EQ(listing(), std::vector<std::string>{"o.png"});
}

TEST_F(Overlay, LargestClasses) {
  const std::vector<std::uint8_t> labels = {4, 255, 2, 4, 9, 2, 255, 4, 255, 255, 255, 9, 0};
  const auto n = static_cast<std::int64_t>(labels.size());
  using Ranking = std::vector<std::pair<int, std::int64_t>>;
  // 4 three times; 2 and 9 twice (the smaller index first); 0 once; 255 skipped.
  EXPECT_EQ(largest_classes(labels.data(), n, 10), (Ranking{{4, 3}, {2, 2}, {9, 2}, {0, 1}}));
  EXPECT_EQ(largest_classes(labels.data(), n, 2), (Ranking{{4, 3}, {2, 2}}));
  EXPECT_EQ(largest_classes(labels.data(), n, 0), Ranking{});
  const std::vector<std::uint8_t> none(5, 255);
  EXPECT_EQ(largest_classes(none.data(), 5, 8), Ranking{});
  const std::vector<std::uint8_t> all254(7, 254);
  EXPECT_EQ(largest_classes(all254.data(), 7, 8), (Ranking{{254, 7}}));
}

}  // namespace
}  // namespace vrwkv
