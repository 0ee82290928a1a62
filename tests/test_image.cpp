// Tests of image decoding (src/io/image.*) and of the two evaluation
// preprocessing pipelines (src/io/preprocess.*) against the goldens of
// ../shared/golden/preprocess/README.md (VRWKV.md 6.1), plus decoding of
// images synthesised here with libpng / libjpeg, and damaged inputs.
//
// If VRWKV_IMAGE_CORPUS_DIR is set, the synthesised images are also written
// there, as a seed corpus for fuzz/fuzz_image.cpp.
#include <gtest/gtest.h>

// clang-format off
#include <cstdio>  // jpeglib.h needs FILE and size_t declared first
#include <jpeglib.h>
// clang-format on
#include <png.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <csetjmp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "image/image.hpp"
#include "image/preprocess.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/safetensors.hpp"

namespace vrwkv {
namespace {

using Bytes = std::vector<std::uint8_t>;

std::string golden(const std::string& name) { return std::string(VRWKV_GOLDEN_DIR) + "/preprocess/" + name; }

// ------------------------------------------------------------ helpers ----

std::filesystem::path temp_dir() {
  static const std::filesystem::path dir = [] {
    std::string pattern = (std::filesystem::temp_directory_path() / "vrwkv_test_image_XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    return std::filesystem::path(pattern);
  }();
  return dir;
}

std::string write_temp(const std::string& name, const Bytes& bytes) {
  const std::filesystem::path path = temp_dir() / name;
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  if (const char* corpus = std::getenv("VRWKV_IMAGE_CORPUS_DIR"))
    std::ofstream(std::filesystem::path(corpus) / name, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  return path.string();
}

Bytes read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), {});
}

// Asserts that `f` throws Error(Input) whose message names `name` and contains `text`.
void expect_input_error(const std::function<void()>& f, const std::string& name, const std::string& text = "") {
  try {
    f();
    ADD_FAILURE() << "no error for " << name;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Error::Kind::Input) << e.what();
    const std::string message = e.what();
    EXPECT_NE(message.find(name), std::string::npos) << message;
    EXPECT_NE(message.find(text), std::string::npos) << message << " (expected \"" << text << "\")";
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

std::array<int, 3> pixel(const Image& im, int x, int y) {
  const std::size_t i = (static_cast<std::size_t>(y) * im.width + x) * 3;
  return {im.rgb[i], im.rgb[i + 1], im.rgb[i + 2]};
}

// --------------------------------------------------------- PNG writer ----

struct PngSpec {
  int width = 0, height = 0, bit_depth = 8, color_type = PNG_COLOR_TYPE_RGB;
  bool interlaced = false;
  std::vector<png_color> palette;
  std::vector<png_byte> palette_alpha;
  // Samples, one per channel, not packed; 16-bit values for bit_depth 16.
  std::vector<int> samples;
};

PngSpec png_spec(int width, int height, int bit_depth, int color_type) {
  PngSpec s;
  s.width = width;
  s.height = height;
  s.bit_depth = bit_depth;
  s.color_type = color_type;
  return s;
}

int png_channels(int color_type) {
  switch (color_type) {
    case PNG_COLOR_TYPE_GRAY:
      return 1;
    case PNG_COLOR_TYPE_PALETTE:
      return 1;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
      return 2;
    case PNG_COLOR_TYPE_RGB:
      return 3;
    default:
      return 4;
  }
}

// Packs one row the way PNG stores it: sub-byte samples big-end first, 16-bit big-endian.
Bytes png_row(const PngSpec& s, int y) {
  const int n = s.width * png_channels(s.color_type);
  Bytes row((static_cast<std::size_t>(n) * s.bit_depth + 7) / 8, 0);
  for (int i = 0; i < n; ++i) {
    const int v = s.samples[static_cast<std::size_t>(y) * n + i];
    if (s.bit_depth == 16) {
      row[2 * i] = static_cast<std::uint8_t>(v >> 8);
      row[2 * i + 1] = static_cast<std::uint8_t>(v & 0xFF);
    } else if (s.bit_depth == 8) {
      row[i] = static_cast<std::uint8_t>(v);
    } else {
      const int bit = i * s.bit_depth;
      row[bit / 8] |= static_cast<std::uint8_t>(v << (8 - s.bit_depth - bit % 8));
    }
  }
  return row;
}

void png_append(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<Bytes*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + length);
}

Bytes encode_png(const PngSpec& s) {
  Bytes out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  std::vector<Bytes> rows;
  std::vector<png_bytep> row_pointers;
  for (int y = 0; y < s.height; ++y) rows.push_back(png_row(s, y));
  for (Bytes& r : rows) row_pointers.push_back(r.data());
  if (setjmp(png_jmpbuf(png)) != 0) {
    png_destroy_write_struct(&png, &info);
    ADD_FAILURE() << "libpng could not encode the test image";
    return {};
  }
  png_set_write_fn(png, &out, png_append, nullptr);
  png_set_IHDR(png, info, s.width, s.height, s.bit_depth, s.color_type,
               s.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!s.palette.empty()) png_set_PLTE(png, info, s.palette.data(), static_cast<int>(s.palette.size()));
  if (!s.palette_alpha.empty())
    png_set_tRNS(png, info, s.palette_alpha.data(), static_cast<int>(s.palette_alpha.size()), nullptr);
  png_write_info(png, info);
  png_write_image(png, row_pointers.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

// Deterministic test samples in [0, max].
std::vector<int> pattern(std::size_t n, int max, int seed = 0) {
  std::vector<int> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<int>((i * 7919 + seed * 104729 + i * i * 31) % (max + 1));
  return v;
}

// -------------------------------------------------------- JPEG writer ----

struct JpegSpec {
  int width = 0, height = 0, components = 3;
  J_COLOR_SPACE color_space = JCS_RGB;  // of the samples
  Bytes samples;
  Bytes app1;         // written as an APP1 segment when not empty
  bool ycck = false;  // store CMYK samples as YCCK
  bool progressive = false;
  bool arithmetic = false;
  int restart_rows = 0;    // restart markers every so many MCU rows
  bool subsample = false;  // 4:2:0 chroma instead of 4:4:4
};

JpegSpec jpeg_spec(int width, int height, int components, J_COLOR_SPACE color_space) {
  JpegSpec s;
  s.width = width;
  s.height = height;
  s.components = components;
  s.color_space = color_space;
  return s;
}

Bytes encode_jpeg(const JpegSpec& s) {
  jpeg_compress_struct cinfo{};
  jpeg_error_mgr err{};
  cinfo.err = jpeg_std_error(&err);  // the test images are valid: exit() on error is acceptable here
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = s.width;
  cinfo.image_height = s.height;
  cinfo.input_components = s.components;
  cinfo.in_color_space = s.color_space;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 100, TRUE);
  if (s.ycck) jpeg_set_colorspace(&cinfo, JCS_YCCK);
  if (!s.subsample)
    for (int c = 0; c < cinfo.num_components; ++c)
      cinfo.comp_info[c].h_samp_factor = cinfo.comp_info[c].v_samp_factor = 1;
  if (s.progressive) jpeg_simple_progression(&cinfo);
  cinfo.arith_code = s.arithmetic;
  cinfo.restart_in_rows = s.restart_rows;
  jpeg_start_compress(&cinfo, TRUE);
  if (!s.app1.empty()) jpeg_write_marker(&cinfo, JPEG_APP0 + 1, s.app1.data(), static_cast<unsigned>(s.app1.size()));
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(&s.samples[std::size_t{cinfo.next_scanline} * s.width * s.components]);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  Bytes out(buffer, buffer + size);
  std::free(buffer);
  return out;
}

// An APP1 Exif segment body whose IFD0 holds a dummy tag and the orientation.
Bytes exif_app1(int orientation, bool little_endian) {
  Bytes b = {'E', 'x', 'i', 'f', 0, 0};
  const auto put16 = [&](int v) {
    if (little_endian)
      b.insert(b.end(), {std::uint8_t(v & 0xFF), std::uint8_t(v >> 8)});
    else
      b.insert(b.end(), {std::uint8_t(v >> 8), std::uint8_t(v & 0xFF)});
  };
  const auto put32 = [&](std::uint32_t v) {
    if (little_endian) {
      put16(v & 0xFFFF);
      put16(v >> 16);
    } else {
      put16(v >> 16);
      put16(v & 0xFFFF);
    }
  };
  b.insert(b.end(), little_endian ? std::initializer_list<std::uint8_t>{'I', 'I'}
                                  : std::initializer_list<std::uint8_t>{'M', 'M'});
  put16(42);
  put32(8);  // IFD0 right after the TIFF header
  put16(2);  // two entries
  put16(0x010F);
  put16(2);
  put32(4);
  put32(0);  // Make, ASCII, 4 bytes inline (empty)
  put16(0x0112);
  put16(3);
  put32(1);
  put16(orientation);
  put16(0);  // Orientation, SHORT
  put32(0);  // no next IFD
  return b;
}

// A 16x8 image of four flat 8x4 quadrants: JPEG at quality 100 keeps flat
// blocks within a level or two, and every orientation moves a quadrant.
JpegSpec quadrant_jpeg() {
  JpegSpec s;
  s.width = 16;
  s.height = 8;
  const std::array<std::array<std::uint8_t, 3>, 4> colours = {
      {{220, 30, 30}, {30, 200, 40}, {20, 40, 210}, {230, 220, 40}}};
  for (int y = 0; y < s.height; ++y)
    for (int x = 0; x < s.width; ++x) {
      const auto& c = colours[(y >= 4) * 2 + (x >= 8)];
      s.samples.insert(s.samples.end(), c.begin(), c.end());
    }
  return s;
}

// The source pixel shown at (x, y) of the displayed image, for each EXIF
// orientation, from its definition as a display transform of a w x h image.
std::pair<int, int> displayed_from(int orientation, int x, int y, int w, int h) {
  // clang-format off
  switch (orientation) {
    case 2: return {w - 1 - x, y};
    case 3: return {w - 1 - x, h - 1 - y};
    case 4: return {x, h - 1 - y};
    case 5: return {y, x};
    case 6: return {y, h - 1 - x};          // stored rotated 90 degrees counter-clockwise
    case 7: return {w - 1 - y, h - 1 - x};
    case 8: return {w - 1 - y, x};          // stored rotated 90 degrees clockwise
    default: return {x, y};
  }
  // clang-format on
}

Image reorient(const Image& in, int orientation) {
  const bool swap = orientation >= 5;
  Image out{swap ? in.height : in.width, swap ? in.width : in.height, Bytes(in.rgb.size())};
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      const auto [sx, sy] = displayed_from(orientation, x, y, in.width, in.height);
      std::memcpy(&out.rgb[(static_cast<std::size_t>(y) * out.width + x) * 3],
                  &in.rgb[(static_cast<std::size_t>(sy) * in.width + sx) * 3], 3);
    }
  return out;
}

// ------------------------------------------------------------ goldens ----

struct UInt8Diff {
  int max = 0;
  double mean = 0;
};

UInt8Diff uint8_diff(const Image& got, const Tensor& want) {
  UInt8Diff d;
  const std::uint8_t* w = want.data<std::uint8_t>();
  double sum = 0;
  for (std::size_t i = 0; i < got.rgb.size(); ++i) {
    const int diff = std::abs(int{got.rgb[i]} - int{w[i]});
    d.max = std::max(d.max, diff);
    sum += diff;
  }
  d.mean = sum / static_cast<double>(got.rgb.size());
  return d;
}

double float_max_diff(const Tensor& got, const Tensor& want) {
  double m = 0;
  for (std::int64_t i = 0; i < got.numel(); ++i)
    m = std::max(m, std::abs(static_cast<double>(got.f32()[i]) - want.f32()[i]));
  return m;
}

void check_golden(const std::string& file, Preprocess p, const std::string& key) {
  const TensorMap golden_tensors = read_safetensors(golden(file.substr(0, file.find('.')) + ".safetensors"));
  const Tensor& want_u8 = golden_tensors.at(key + "_uint8");
  const Tensor& want = golden_tensors.at(key);
  const int s = preprocess_size(p);
  ASSERT_EQ(want_u8.dtype(), DType::U8);
  ASSERT_EQ(want_u8.shape(), (Shape{s, s, 3}));
  ASSERT_EQ(want.shape(), (Shape{1, 3, s, s}));

  const Image decoded = decode_image(golden(file));
  const Image pixels = preprocess_uint8(decoded, p);
  ASSERT_EQ(pixels.width, s);
  ASSERT_EQ(pixels.height, s);
  const UInt8Diff d = uint8_diff(pixels, want_u8);
  std::printf("%s %s uint8: max |diff| %d, mean |diff| %.6f\n", file.c_str(), key.c_str(), d.max, d.mean);
  // Bit-exact: the resampler re-implements Pillow's fixed-point arithmetic and
  // the decoders are the reference's libjpeg-turbo 2.1.5 / libpng 1.6.39, so
  // the README's "exact" case applies (its max 1 / mean 0.2 allowance is for
  // resamplers with other rounding).
  EXPECT_EQ(d.max, 0);

  const Tensor got = preprocess_image(decoded, p);
  ASSERT_EQ(got.shape(), want.shape());
  const double diff = float_max_diff(got, want);
  std::printf("%s %s float: max |diff| %.3g\n", file.c_str(), key.c_str(), diff);
  // README: 1e-6 absolute for the same uint8 input (float32 vs the reference's
  // float32 / float64 rounding), plus one uint8 level (at most 1/57.12 = 0.0175
  // after normalisation, so 0.018) per level of uint8 difference.
  EXPECT_LE(diff, 1e-6 + 0.018 * d.max);
}

TEST(ImagePreprocess, RocketMmcls) { check_golden("rocket.jpg", Preprocess::Mmcls, "mmcls"); }
TEST(ImagePreprocess, RocketInternImage) { check_golden("rocket.jpg", Preprocess::InternImage, "internimage"); }
TEST(ImagePreprocess, TextMmcls) { check_golden("text.png", Preprocess::Mmcls, "mmcls"); }
TEST(ImagePreprocess, TextInternImage) { check_golden("text.png", Preprocess::InternImage, "internimage"); }

TEST(ImagePreprocess, GoldenPhotosDecode) {
  const Image rocket = decode_image(golden("rocket.jpg"));
  EXPECT_EQ(rocket.width, 640);
  EXPECT_EQ(rocket.height, 427);
  const Image text = decode_image(golden("text.png"));
  EXPECT_EQ(text.width, 448);
  EXPECT_EQ(text.height, 172);
  for (std::size_t i = 0; i < text.rgb.size(); i += 3) {  // a grey PNG: replicated
    ASSERT_EQ(text.rgb[i], text.rgb[i + 1]);
    ASSERT_EQ(text.rgb[i], text.rgb[i + 2]);
  }
}

TEST(ImagePreprocess, Sizes) {
  EXPECT_EQ(preprocess_size(Preprocess::Mmcls), 224);
  EXPECT_EQ(preprocess_size(Preprocess::InternImage), 384);
}

TEST(ImagePreprocess, ResizeToSameSizeIsACopy) {
  Image im{5, 3, Bytes(45)};
  for (std::size_t i = 0; i < im.rgb.size(); ++i) im.rgb[i] = static_cast<std::uint8_t>(i * 37);
  EXPECT_EQ(resize_bicubic_pillow(im, 5, 3).rgb, im.rgb);
}

TEST(ImagePreprocess, ResizeKeepsFlatImagesFlat) {
  Image im{37, 23, Bytes(37 * 23 * 3)};
  for (std::size_t i = 0; i < im.rgb.size(); i += 3) im.rgb[i] = 200, im.rgb[i + 1] = 0, im.rgb[i + 2] = 255;
  for (const auto& [w, h] : {std::pair{10, 7}, std::pair{80, 50}, std::pair{37, 5}, std::pair{3, 23}}) {
    const Image out = resize_bicubic_pillow(im, w, h);
    ASSERT_EQ(out.rgb.size(), static_cast<std::size_t>(w) * h * 3);
    for (std::size_t i = 0; i < out.rgb.size(); i += 3) {
      ASSERT_EQ(out.rgb[i], 200);
      ASSERT_EQ(out.rgb[i + 1], 0);
      ASSERT_EQ(out.rgb[i + 2], 255);
    }
  }
}

// The crop-window shortcut of preprocess_uint8 equals resize-then-crop.
TEST(ImagePreprocess, WindowEqualsFullResizeThenCrop) {
  Image im{300, 200, Bytes(300 * 200 * 3)};
  const std::vector<int> v = pattern(im.rgb.size(), 255, 3);
  std::copy(v.begin(), v.end(), im.rgb.begin());
  const Image full = resize_bicubic_pillow(im, 384, 256);  // mmcls: short side 256, int(256*300/200)
  const Image got = preprocess_uint8(im, Preprocess::Mmcls);
  const int left = 80, top = 16;  // round(160/2) = 80, round(32/2) = 16
  for (int y = 0; y < 224; ++y)
    for (int x = 0; x < 224; ++x) ASSERT_EQ(pixel(got, x, y), pixel(full, x + left, y + top)) << x << "," << y;
}

TEST(ImagePreprocess, ShortSideAlreadyRightIsOnlyCropped) {
  Image im{256, 301, Bytes(256 * 301 * 3)};
  const std::vector<int> v = pattern(im.rgb.size(), 255, 5);
  std::copy(v.begin(), v.end(), im.rgb.begin());
  const Image got = preprocess_uint8(im, Preprocess::Mmcls);
  const int left = 16, top = 38;  // round(32/2) = 16, round(77/2) = round(38.5) = 38 (half to even)
  for (int y = 0; y < 224; ++y)
    for (int x = 0; x < 224; ++x) ASSERT_EQ(pixel(got, x, y), pixel(im, x + left, y + top));
}

TEST(ImagePreprocess, TinyAndExtremeImages) {
  for (const auto& [w, h] : {std::pair{1, 1}, std::pair{1, 3000}, std::pair{3000, 1}, std::pair{2, 3}}) {
    Image im{w, h, Bytes(static_cast<std::size_t>(w) * h * 3, 77)};
    for (Preprocess p : {Preprocess::Mmcls, Preprocess::InternImage}) {
      const Tensor t = preprocess_image(im, p);
      EXPECT_EQ(t.shape(), (Shape{1, 3, preprocess_size(p), preprocess_size(p)}));
      const Image u = preprocess_uint8(im, p);
      for (std::uint8_t b : u.rgb) ASSERT_EQ(b, 77);  // flat in, flat out
    }
  }
}

TEST(ImagePreprocess, RejectsInconsistentImages) {
  expect_input_error([] { preprocess_image(Image{}, Preprocess::Mmcls); }, "image", "empty");
  expect_input_error([] { preprocess_image(Image{2, 2, Bytes(11)}, Preprocess::Mmcls); }, "image", "11 bytes");
  expect_input_error([] { resize_bicubic_pillow(Image{2, 2, Bytes(12)}, 0, 5); }, "resize");
}

// --------------------------------------------------------------- PNG ----

TEST(ImageDecode, PngGray8) {
  PngSpec s = png_spec(7, 5, 8, PNG_COLOR_TYPE_GRAY);
  s.samples = pattern(35, 255);
  const Image im = decode_image(write_temp("gray8.png", encode_png(s)));
  ASSERT_EQ(im.width, 7);
  ASSERT_EQ(im.height, 5);
  for (int i = 0; i < 35; ++i)
    ASSERT_EQ(pixel(im, i % 7, i / 7), (std::array<int, 3>{s.samples[i], s.samples[i], s.samples[i]}));
}

TEST(ImageDecode, PngGraySubByte) {
  for (int depth : {1, 2, 4}) {
    PngSpec s = png_spec(13, 3, depth, PNG_COLOR_TYPE_GRAY);
    const int max = (1 << depth) - 1;
    s.samples = pattern(39, max, depth);
    const Image im = decode_image(write_temp("gray" + std::to_string(depth) + ".png", encode_png(s)));
    for (int i = 0; i < 39; ++i) {
      const int v = s.samples[i] * 255 / max;  // scaled to the full 8-bit range
      ASSERT_EQ(pixel(im, i % 13, i / 13), (std::array<int, 3>{v, v, v})) << "depth " << depth;
    }
  }
}

TEST(ImageDecode, Png16BitKeepsHighByte) {
  PngSpec s = png_spec(5, 4, 16, PNG_COLOR_TYPE_GRAY);
  s.samples = pattern(20, 65535);
  Image im = decode_image(write_temp("gray16.png", encode_png(s)));
  for (int i = 0; i < 20; ++i) ASSERT_EQ(pixel(im, i % 5, i / 5)[1], s.samples[i] >> 8);

  PngSpec rgb = png_spec(4, 3, 16, PNG_COLOR_TYPE_RGB_ALPHA);
  rgb.samples = pattern(48, 65535, 1);
  im = decode_image(write_temp("rgba16.png", encode_png(rgb)));
  for (int i = 0; i < 12; ++i)
    ASSERT_EQ(pixel(im, i % 4, i / 4),
              (std::array<int, 3>{rgb.samples[4 * i] >> 8, rgb.samples[4 * i + 1] >> 8, rgb.samples[4 * i + 2] >> 8}));
}

TEST(ImageDecode, PngAlphaIsDroppedNotComposited) {
  PngSpec s = png_spec(6, 4, 8, PNG_COLOR_TYPE_RGB_ALPHA);
  s.samples = pattern(96, 255, 2);
  const Image im = decode_image(write_temp("rgba.png", encode_png(s)));
  for (int i = 0; i < 24; ++i)
    ASSERT_EQ(pixel(im, i % 6, i / 6),
              (std::array<int, 3>{s.samples[4 * i], s.samples[4 * i + 1], s.samples[4 * i + 2]}));

  PngSpec ga = png_spec(3, 3, 8, PNG_COLOR_TYPE_GRAY_ALPHA);
  ga.samples = pattern(18, 255, 4);
  const Image g = decode_image(write_temp("gray_alpha.png", encode_png(ga)));
  for (int i = 0; i < 9; ++i) {
    const int v = ga.samples[2 * i];
    ASSERT_EQ(pixel(g, i % 3, i / 3), (std::array<int, 3>{v, v, v}));
  }
}

TEST(ImageDecode, PngPalette) {
  PngSpec s = png_spec(9, 2, 4, PNG_COLOR_TYPE_PALETTE);
  for (int i = 0; i < 16; ++i)
    s.palette.push_back(png_color{std::uint8_t(i * 16), std::uint8_t(255 - i * 10), std::uint8_t(i * i)});
  s.palette_alpha = {0, 128, 255, 7};  // transparency must not change the colours
  s.samples = pattern(18, 15, 6);
  const Image im = decode_image(write_temp("palette.png", encode_png(s)));
  for (int i = 0; i < 18; ++i) {
    const png_color c = s.palette[s.samples[i]];
    ASSERT_EQ(pixel(im, i % 9, i / 9), (std::array<int, 3>{c.red, c.green, c.blue}));
  }
}

TEST(ImageDecode, PngInterlacedEqualsPlain) {
  PngSpec s = png_spec(19, 11, 8, PNG_COLOR_TYPE_RGB);
  s.samples = pattern(19 * 11 * 3, 255, 7);
  const Image plain = decode_image(write_temp("rgb.png", encode_png(s)));
  s.interlaced = true;
  const Image interlaced = decode_image(write_temp("rgb_interlaced.png", encode_png(s)));
  EXPECT_EQ(interlaced.rgb, plain.rgb);
  for (int i = 0; i < 19 * 11; ++i)
    ASSERT_EQ(pixel(plain, i % 19, i / 19),
              (std::array<int, 3>{s.samples[3 * i], s.samples[3 * i + 1], s.samples[3 * i + 2]}));
}

// -------------------------------------------------------------- JPEG ----

TEST(ImageDecode, JpegGrayIsReplicated) {
  JpegSpec s = jpeg_spec(16, 16, 1, JCS_GRAYSCALE);
  for (int i = 0; i < 256; ++i) s.samples.push_back(static_cast<std::uint8_t>(i < 128 ? 60 : 190));
  const Image im = decode_image(write_temp("gray.jpg", encode_jpeg(s)));
  ASSERT_EQ(im.width, 16);
  for (int i = 0; i < 256; ++i) {
    const auto p = pixel(im, i % 16, i / 16);
    ASSERT_EQ(p[0], p[1]);
    ASSERT_EQ(p[0], p[2]);
    ASSERT_NEAR(p[0], s.samples[i], 2);
  }
}

TEST(ImageDecode, JpegRgb) {
  const JpegSpec s = quadrant_jpeg();
  const Image im = decode_image(write_temp("rgb.jpg", encode_jpeg(s)));
  ASSERT_EQ(im.width, 16);
  ASSERT_EQ(im.height, 8);
  for (std::size_t i = 0; i < im.rgb.size(); ++i) ASSERT_NEAR(im.rgb[i], s.samples[i], 3) << i;
}

// The coding options change how the DCT coefficients are stored, not their
// values, so every variant decodes to the same pixels.
TEST(ImageDecode, JpegCodingVariantsDecodeAlike) {
  JpegSpec s = jpeg_spec(40, 24, 3, JCS_RGB);
  for (int v : pattern(40 * 24 * 3, 255, 11)) s.samples.push_back(static_cast<std::uint8_t>(v));
  const Image baseline = decode_image(write_temp("baseline.jpg", encode_jpeg(s)));
  s.progressive = true;
  EXPECT_EQ(decode_image(write_temp("progressive.jpg", encode_jpeg(s))).rgb, baseline.rgb);
  s.progressive = false;
  s.arithmetic = true;
  EXPECT_EQ(decode_image(write_temp("arithmetic.jpg", encode_jpeg(s))).rgb, baseline.rgb);
  s.arithmetic = false;
  s.restart_rows = 1;
  EXPECT_EQ(decode_image(write_temp("restart.jpg", encode_jpeg(s))).rgb, baseline.rgb);
  s.restart_rows = 0;
  s.subsample = true;
  s.progressive = true;
  const Image subsampled = decode_image(write_temp("progressive_420.jpg", encode_jpeg(s)));
  EXPECT_EQ(subsampled.width, 40);
  EXPECT_EQ(subsampled.height, 24);
}

TEST(ImageDecode, JpegCmykConvertedLikeOpenCv) {
  JpegSpec s = jpeg_spec(8, 8, 4, JCS_CMYK);
  const std::array<int, 4> cmyk = {200, 90, 40, 170};
  for (int i = 0; i < 64; ++i) s.samples.insert(s.samples.end(), cmyk.begin(), cmyk.end());
  for (bool ycck : {false, true}) {
    s.ycck = ycck;
    const Image im = decode_image(write_temp(ycck ? "ycck.jpg" : "cmyk.jpg", encode_jpeg(s)));
    for (int c = 0; c < 3; ++c) {
      const int want = cmyk[3] - (((255 - cmyk[c]) * cmyk[3]) >> 8);
      EXPECT_NEAR(pixel(im, 3, 3)[c], want, 2) << c << (ycck ? " YCCK" : " CMYK");
    }
  }
}

TEST(ImageDecode, JpegExifOrientation) {
  JpegSpec s = quadrant_jpeg();
  const Image upright = decode_image(write_temp("quadrants.jpg", encode_jpeg(s)));
  for (bool little : {true, false}) {
    for (int o = 1; o <= 8; ++o) {
      s.app1 = exif_app1(o, little);
      const std::string name = "exif_" + std::string(little ? "II" : "MM") + std::to_string(o) + ".jpg";
      const Image im = decode_image(write_temp(name, encode_jpeg(s)));
      const Image want = reorient(upright, o);
      ASSERT_EQ(im.width, want.width) << name;
      ASSERT_EQ(im.height, want.height) << name;
      EXPECT_EQ(im.rgb, want.rgb) << name;
    }
  }
  // Spot check of the convention: orientation 6 shows the bottom-left quadrant (blue) top-left.
  s.app1 = exif_app1(6, true);
  const Bytes rotated_jpeg = encode_jpeg(s);
  const Image rotated = decode_image_memory(rotated_jpeg.data(), rotated_jpeg.size(), "rotated");
  EXPECT_EQ(rotated.width, 8);
  EXPECT_EQ(rotated.height, 16);
  EXPECT_NEAR(pixel(rotated, 1, 1)[2], 210, 3);
}

TEST(ImageDecode, JpegDamagedExifIsIgnored) {
  JpegSpec s = quadrant_jpeg();
  const Bytes upright_jpeg = encode_jpeg(s);
  const Image upright = decode_image_memory(upright_jpeg.data(), upright_jpeg.size(), "upright");
  Bytes exif = exif_app1(6, true);
  exif[10] = 0xFF;  // IFD0 offset far past the segment
  s.app1 = exif;
  EXPECT_EQ(decode_image(write_temp("exif_bad_offset.jpg", encode_jpeg(s))).rgb, upright.rgb);
  exif = exif_app1(6, false);
  exif.resize(20);  // cut inside the IFD entries
  s.app1 = exif;
  EXPECT_EQ(decode_image(write_temp("exif_truncated.jpg", encode_jpeg(s))).rgb, upright.rgb);
}

// ----------------------------------------------------------- damaged ----

std::uint32_t crc32(const std::uint8_t* data, std::size_t n) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) {
    crc ^= data[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void append_chunk(Bytes& png, const char* type, const Bytes& body) {
  const auto put32 = [&](std::uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) png.push_back(static_cast<std::uint8_t>(v >> s));
  };
  put32(static_cast<std::uint32_t>(body.size()));
  const std::size_t start = png.size();
  png.insert(png.end(), type, type + 4);
  png.insert(png.end(), body.begin(), body.end());
  put32(crc32(&png[start], png.size() - start));
}

TEST(ImageDecode, DamagedInputsAreInputErrors) {
  const Bytes rocket = read_bytes(golden("rocket.jpg"));
  const std::string truncated_jpeg =
      write_temp("truncated.jpg", Bytes(rocket.begin(), rocket.begin() + rocket.size() / 2));
  expect_input_error([&] { decode_image(truncated_jpeg); }, truncated_jpeg, "JPEG");

  const Bytes text = read_bytes(golden("text.png"));
  const std::string truncated_png = write_temp("truncated.png", Bytes(text.begin(), text.begin() + text.size() / 2));
  expect_input_error([&] { decode_image(truncated_png); }, truncated_png, "PNG");

  const std::string text_file = write_temp("notes.jpg", Bytes{'h', 'e', 'l', 'l', 'o', '\n'});
  expect_input_error([&] { decode_image(text_file); }, text_file, "expected a JPEG or PNG image");

  const std::string empty = write_temp("empty.png", Bytes{});
  expect_input_error([&] { decode_image(empty); }, empty, "empty");

  const std::string missing = (temp_dir() / "missing.jpg").string();
  expect_input_error([&] { decode_image(missing); }, missing);

  Bytes huge = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  append_chunk(huge, "IHDR", {0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0, 8, 2, 0, 0, 0});  // 100000 x 100000 RGB
  append_chunk(huge, "IDAT", {0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01});
  append_chunk(huge, "IEND", {});
  const std::string huge_png = write_temp("huge.png", huge);
  expect_input_error([&] { decode_image(huge_png); }, huge_png, "too large");

  // Within the limits, but the data cannot hold so many pixels.
  Bytes big = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  append_chunk(big, "IHDR", {0, 0, 0x40, 0, 0, 0, 0x40, 0, 8, 6, 0, 0, 0});  // 16384 x 16384 RGBA
  append_chunk(big, "IDAT", {0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01});
  append_chunk(big, "IEND", {});
  expect_input_error([&] { decode_image_memory(big.data(), big.size(), "big.png"); }, "big.png", "truncated");

  // A valid JPEG header claiming 60000 x 60000 pixels (3.6e9 > 2^28).
  Bytes jpeg = encode_jpeg(quadrant_jpeg());
  for (std::size_t i = 2; i + 8 < jpeg.size(); ++i)
    if (jpeg[i] == 0xFF && jpeg[i + 1] == 0xC0) {  // SOF0: length, precision, height, width
      jpeg[i + 5] = 0xEA, jpeg[i + 6] = 0x60, jpeg[i + 7] = 0xEA, jpeg[i + 8] = 0x60;
      break;
    }
  expect_input_error([&] { decode_image_memory(jpeg.data(), jpeg.size(), "wide.jpg"); }, "wide.jpg", "too large");

  // Not an image at all, but starting with the JPEG magic.
  const Bytes fake_jpeg = {0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 'x', 'y'};
  expect_input_error([&] { decode_image_memory(fake_jpeg.data(), fake_jpeg.size(), "fake.jpg"); }, "fake.jpg", "JPEG");
}

TEST(ImageDecode, CorruptJpegScanIsAnError) {
  Bytes rocket = read_bytes(golden("rocket.jpg"));
  // Overwrite the middle of the entropy-coded data with a marker: a silent
  // decoder would fill the rest with grey.
  rocket[rocket.size() / 2] = 0xFF;
  rocket[rocket.size() / 2 + 1] = 0xD9;
  expect_input_error([&] { decode_image_memory(rocket.data(), rocket.size(), "cut.jpg"); }, "cut.jpg", "JPEG");
}

// Headers that promise more rows than the compressed data holds: complete
// files otherwise, so only the decoders' own checks can notice.
TEST(ImageDecode, MissingRowsAreAnError) {
  PngSpec s = png_spec(9, 9, 8, PNG_COLOR_TYPE_RGB);
  s.samples = pattern(243, 255, 9);
  const Bytes png = encode_png(s);
  Bytes taller(png.begin(), png.begin() + 8);
  append_chunk(taller, "IHDR", {0, 0, 0, 9, 0, 0, 0, 10, 8, 2, 0, 0, 0});  // 9 x 10
  taller.insert(taller.end(), png.begin() + 33, png.end());                // the rest unchanged
  expect_input_error([&] { decode_image_memory(taller.data(), taller.size(), "taller.png"); }, "taller.png", "PNG");

  Bytes jpeg = encode_jpeg(quadrant_jpeg());
  for (std::size_t i = 2; i + 8 < jpeg.size(); ++i)
    if (jpeg[i] == 0xFF && jpeg[i + 1] == 0xC0) {
      jpeg[i + 6] = 16;  // height 8 -> 16
      break;
    }
  expect_input_error([&] { decode_image_memory(jpeg.data(), jpeg.size(), "taller.jpg"); }, "taller.jpg", "JPEG");
}

TEST(ImageDecode, EveryTruncationIsAnInputError) {
  // Cutting a small PNG anywhere must give an Input error, never a crash.
  PngSpec s = png_spec(9, 9, 8, PNG_COLOR_TYPE_RGB);
  s.samples = pattern(243, 255, 9);
  const Bytes png = encode_png(s);
  for (std::size_t n = 0; n < png.size(); ++n)
    expect_input_error([&] { decode_image_memory(png.data(), n, "cut.png"); }, "cut.png");
  const Bytes jpeg = encode_jpeg(quadrant_jpeg());
  for (std::size_t n = 0; n + 2 < jpeg.size(); ++n)  // the last two bytes are the EOI marker
    expect_input_error([&] { decode_image_memory(jpeg.data(), n, "cut.jpg"); }, "cut.jpg");
}

}  // namespace
}  // namespace vrwkv
