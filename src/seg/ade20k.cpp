// The ADE20K folder layout and its label PNGs; see vrwkv/seg_data.hpp.
//
// libpng reports fatal errors through a callback that must not return: ours
// longjmps back to the guarded step that was running (a member function that
// called setjmp and holds no C++ objects with destructors), which returns
// false; the caller then throws. The libpng structs are owned by a class whose
// destructor frees them, so no error path leaks.
#include "vrwkv/seg_data.hpp"

#include <png.h>

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "image/png_decoder.hpp"
#include "io/file.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::seg {
namespace {

namespace fs = std::filesystem;

// ------------------------------------------------------------- listing ----

constexpr const char* kImageSuffix = ".jpg";
constexpr const char* kAnnotationSuffix = ".png";

// The names of the plain files (or links to them) directly in `folder` whose
// names end in `suffix`, sorted. `expected` ends every error message.
std::vector<std::string> files_with_suffix(const fs::path& folder, const std::string& suffix,
                                           const std::string& expected) {
  std::error_code ec;
  const fs::file_status status = fs::status(folder, ec);
  if (status.type() == fs::file_type::not_found) input_error(folder.string(), ": no such folder (", expected, ")");
  if (ec) input_error(folder.string(), ": cannot open (", ec.message(), "; ", expected, ")");
  if (status.type() != fs::file_type::directory) input_error(folder.string(), ": not a folder (", expected, ")");
  std::vector<std::string> names;
  fs::directory_iterator it(folder, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::error_code e2;
    if (!it->is_regular_file(e2)) continue;
    std::string name = it->path().filename().string();
    if (name.ends_with(suffix)) names.push_back(std::move(name));
  }
  if (ec) input_error(folder.string(), ": cannot list (", ec.message(), "; ", expected, ")");
  std::sort(names.begin(), names.end());
  return names;
}

std::string stem(const std::string& name, const std::string& suffix) {
  return name.substr(0, name.size() - suffix.size());
}

// The names in `a` whose stem has no partner among the stems of `b`, in order.
std::vector<std::string> unpaired(const std::vector<std::string>& a, const std::string& a_suffix,
                                  const std::vector<std::string>& b, const std::string& b_suffix) {
  std::vector<std::string> b_stems;
  b_stems.reserve(b.size());
  for (const std::string& name : b) b_stems.push_back(stem(name, b_suffix));
  std::sort(b_stems.begin(), b_stems.end());
  std::vector<std::string> out;
  for (const std::string& name : a)
    if (!std::binary_search(b_stems.begin(), b_stems.end(), stem(name, a_suffix))) out.push_back(name);
  return out;
}

// ----------------------------------------------------------------- PNG ----

constexpr std::uint64_t kMaxSide = 65535;
constexpr std::uint64_t kMaxPixels = std::uint64_t{1} << 28;

// One byte a pixel, as Pillow gives a palette or greyscale PNG: palette
// indices and 1-bit grey unpacked as they are, 2- and 4-bit grey scaled to
// 8 bits.
void value_transforms(png_structp png, png_infop info) {
    const int bit_depth = png_get_bit_depth(png, info);
    const int color_type = png_get_color_type(png, info);
    if (bit_depth < 8) {
      if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth > 1) {
        png_set_expand_gray_1_2_4_to_8(png);
      } else {
        png_set_packing(png);
      }
    }
}

constexpr const char* kExpectedLabels = "expected a label image of 8-bit class values: a palette or greyscale PNG";

// Refuses every PNG whose samples are not one label value per pixel.
void check_label_format(const std::string& name, int color_type, int bit_depth) {
  const char* kind = nullptr;
  switch (color_type) {
    case PNG_COLOR_TYPE_PALETTE:
      return;  // 1, 2, 4 or 8 bits; libpng refuses any other depth
    case PNG_COLOR_TYPE_GRAY:
      if (bit_depth <= 8) return;
      kind = "greyscale";
      break;
    case PNG_COLOR_TYPE_RGB:
      kind = "RGB";
      break;
    case PNG_COLOR_TYPE_RGB_ALPHA:
      kind = "RGBA";
      break;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
      kind = "greyscale+alpha";
      break;
    default:
      kind = "unknown colour type";
      break;
  }
  input_error(name, ": ", bit_depth, "-bit ", kind, " PNG, ", kExpectedLabels);
}

void check_dimensions(const std::string& name, std::uint64_t width, std::uint64_t height) {
  if (width == 0 || height == 0) input_error(name, ": label image has no pixels (", width, "x", height, ")");
  if (width > kMaxSide || height > kMaxSide || width * height > kMaxPixels)
    input_error(name, ": label image of ", width, "x", height,
                " pixels is too large (at most 65535 pixels a side and 2^28 pixels in all)");
}

// Deflate cannot compress better than 1032:1, so a file that declares more
// raw data than that bound (with a factor 2 to spare) is surely truncated.
// Checking it first keeps a forged header from costing a huge allocation.
void check_data_fits(const std::string& name, std::size_t file_size, std::uint64_t width, std::uint64_t height,
                     int bits_per_pixel) {
  const std::uint64_t raw_bytes = height * ((width * static_cast<std::uint64_t>(bits_per_pixel) + 7) / 8);
  if (raw_bytes / 2064 > file_size)
    input_error(name, ": invalid PNG data (a ", width, "x", height, " image cannot fit in ", file_size,
                " bytes; the file is truncated)");
}

bool is_png(const std::uint8_t* data, std::size_t size) {
  static constexpr std::uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  return size >= sizeof kSignature && std::memcmp(data, kSignature, sizeof kSignature) == 0;
}

}  // namespace

std::vector<SegSample> list_ade20k(const std::string& dir, const std::string& split) {
  if (split.empty()) input_error("ADE20K at ", dir, ": empty split name (expected e.g. validation or training)");
  const fs::path image_dir = fs::path(dir) / "images" / split;
  const fs::path annotation_dir = fs::path(dir) / "annotations" / split;
  const std::string expected = cat("expected the ADE20K layout ", image_dir.string(), "/*", kImageSuffix, " and ",
                                   annotation_dir.string(), "/*", kAnnotationSuffix);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) input_error(dir, ": not a folder (", expected, ")");
  const std::vector<std::string> images = files_with_suffix(image_dir, kImageSuffix, expected);
  const std::vector<std::string> annotations = files_with_suffix(annotation_dir, kAnnotationSuffix, expected);
  if (images.empty()) input_error(image_dir.string(), ": no ", kImageSuffix, " images (", expected, ")");

  const std::vector<std::string> lone_images = unpaired(images, kImageSuffix, annotations, kAnnotationSuffix);
  if (!lone_images.empty()) {
    const std::string& first = lone_images.front();
    input_error(annotation_dir.string(), ": no annotation ", stem(first, kImageSuffix), kAnnotationSuffix,
                " for the image ", (image_dir / first).string(), " (", lone_images.size(), " of the ", images.size(),
                lone_images.size() == 1 ? " images has none" : " images have none", "; expected one ",
                kAnnotationSuffix, " annotation per ", kImageSuffix, " image)");
  }
  const std::vector<std::string> lone_annotations = unpaired(annotations, kAnnotationSuffix, images, kImageSuffix);
  if (!lone_annotations.empty()) {
    const std::string& first = lone_annotations.front();
    input_error(image_dir.string(), ": no image ", stem(first, kAnnotationSuffix), kImageSuffix, " for the annotation ",
                (annotation_dir / first).string(), " (", lone_annotations.size(), " of the ", annotations.size(),
                lone_annotations.size() == 1 ? " annotations has none" : " annotations have none", "; expected one ",
                kImageSuffix, " image per ", kAnnotationSuffix, " annotation)");
  }

  std::vector<SegSample> samples;
  samples.reserve(images.size());
  for (const std::string& name : images)
    samples.push_back(
        {(image_dir / name).string(), (annotation_dir / (stem(name, kImageSuffix) + kAnnotationSuffix)).string()});
  return samples;
}

LabelMap decode_label_png(const std::uint8_t* data, std::size_t size, const std::string& name) {
  if (size == 0) input_error(name, ": empty file, ", kExpectedLabels);
  if (!is_png(data, size)) {
    const bool jpeg = size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
    input_error(name, ": ", jpeg ? "a JPEG" : "not a PNG", ", ", kExpectedLabels);
  }
  PngDecoder decoder(data, size);
  if (!decoder.created()) input_error(name, ": cannot create a PNG decoder (out of memory)");
  const auto fail = [&] { input_error(name, ": invalid PNG data (", decoder.message(), ")"); };
  if (!decoder.read_info()) fail();
  png_structp png = decoder.png();
  png_infop info = decoder.info();
  const std::uint32_t width = png_get_image_width(png, info);
  const std::uint32_t height = png_get_image_height(png, info);
  const int bit_depth = png_get_bit_depth(png, info);
  check_label_format(name, png_get_color_type(png, info), bit_depth);
  check_dimensions(name, width, height);
  check_data_fits(name, size, width, height, bit_depth * png_get_channels(png, info));
  int passes = 1;
  if (!decoder.request(value_transforms, &passes)) fail();
  const std::size_t row_bytes = png_get_rowbytes(png, info);
  if (png_get_channels(png, info) != 1 || png_get_bit_depth(png, info) != 8 || row_bytes != width)
    input_error(name, ": unsupported PNG pixel format, ", kExpectedLabels);

  LabelMap label;
  label.height = height;
  label.width = width;
  if (passes == 1) {
    // Reserved, not resized: rows are appended as they decode.
    label.values.reserve(row_bytes * height);
    std::vector<std::uint8_t> row(row_bytes);
    if (!decoder.read_rows(label.values, row.data(), row_bytes, height)) fail();
  } else {
    label.values.resize(row_bytes * height);
    std::vector<png_bytep> rows(height);
    for (std::uint32_t y = 0; y < height; ++y) rows[y] = label.values.data() + y * row_bytes;
    if (!decoder.read_image(rows.data())) fail();
  }
  return label;
}

LabelMap read_label_png(const std::string& path) {
  const std::vector<std::uint8_t> bytes = read_file(path);
  return decode_label_png(bytes.data(), bytes.size(), path);
}

void check_annotation_size(const SegSample& sample, const LabelMap& label, std::int64_t image_height,
                           std::int64_t image_width) {
  if (label.height == image_height && label.width == image_width) return;
  input_error(sample.annotation, ": annotation of ", label.width, "x", label.height, " pixels for the image ",
              sample.image, " of ", image_width, "x", image_height, " pixels (expected the same size)");
}

}  // namespace vrwkv::seg
