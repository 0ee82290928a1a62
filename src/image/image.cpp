// JPEG and PNG decoding as OpenCV's cv2.imdecode(..., IMREAD_COLOR) does it,
// which is the decoder of both official evaluation pipelines (VRWKV.md 6.1;
// ../shared/golden/preprocess/README.md, "LoadImageFromFile" and "Decoding").
//
// libjpeg and libpng report fatal errors through callbacks that must not
// return. Ours longjmp back to the guarded step that was running (a member
// function that called setjmp and holds no C++ objects with destructors), which
// returns false; the caller then throws. The decompressor structs are owned by
// classes whose destructors free them, so no error path leaks.
#include "image/image.hpp"

// clang-format off
#include <cstdio>    // jpeglib.h needs FILE and size_t declared first
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#include <png.h>

#include <algorithm>
#include <csetjmp>
#include <cstring>
#include <span>
#include <utility>

#include "image/png_decoder.hpp"
#include "io/file.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv {
namespace {

constexpr std::uint64_t kMaxSide = 65535;
constexpr std::uint64_t kMaxPixels = std::uint64_t{1} << 28;

// Called before any pixel buffer is allocated, so that a forged header cannot
// make us allocate gigabytes.
void check_dimensions(const std::string& name, std::uint64_t width, std::uint64_t height) {
  if (width == 0 || height == 0) input_error(name, ": image has no pixels (", width, "x", height, ")");
  if (width > kMaxSide || height > kMaxSide || width * height > kMaxPixels)
    input_error(name, ": image of ", width, "x", height,
                " pixels is too large (at most 65535 pixels a side and 2^28 pixels in all)");
}

// ---------------------------------------------------------------- EXIF ----

// Where pixel (x, y) of a w x h image goes under EXIF orientation 2..8 (tag
// 0x0112). As OpenCV's ExifTransform: 5-8 transpose first, then flip.
std::pair<int, int> oriented_position(int orientation, int x, int y, int w, int h) {
  // clang-format off
  switch (orientation) {
    case 2: return {w - 1 - x, y};          // mirrored left-right
    case 3: return {w - 1 - x, h - 1 - y};  // rotated 180
    case 4: return {x, h - 1 - y};          // mirrored top-bottom
    case 5: return {y, x};                  // transposed
    case 6: return {h - 1 - y, x};          // rotated 90 clockwise
    case 7: return {h - 1 - y, w - 1 - x};  // transverse
    case 8: return {y, w - 1 - x};          // rotated 90 counter-clockwise
    default: return {x, y};
  }
  // clang-format on
}

Image apply_orientation(Image in, int orientation) {
  if (orientation < 2 || orientation > 8) return in;
  const bool transpose = orientation >= 5;
  Image out;
  out.width = transpose ? in.height : in.width;
  out.height = transpose ? in.width : in.height;
  out.rgb.resize(in.rgb.size());
  for (int y = 0; y < in.height; ++y) {
    for (int x = 0; x < in.width; ++x) {
      const auto [dx, dy] = oriented_position(orientation, x, y, in.width, in.height);
      const std::size_t src = (static_cast<std::size_t>(y) * in.width + x) * 3;
      const std::size_t dst = (static_cast<std::size_t>(dy) * out.width + dx) * 3;
      std::memcpy(&out.rgb[dst], &in.rgb[src], 3);
    }
  }
  return out;
}

// Reads integers from a TIFF structure in its byte order; every read is
// bounds-checked, since the offsets come from the file.
class TiffReader {
 public:
  TiffReader(std::span<const std::uint8_t> bytes, bool little_endian) : bytes_(bytes), little_(little_endian) {}
  bool u16(std::uint64_t at, std::uint32_t* out) const { return read(at, 2, out); }
  bool u32(std::uint64_t at, std::uint32_t* out) const { return read(at, 4, out); }

 private:
  bool read(std::uint64_t at, int size, std::uint32_t* out) const {
    if (at > bytes_.size() || bytes_.size() - at < static_cast<std::uint64_t>(size)) return false;
    std::uint32_t v = 0;
    for (int i = 0; i < size; ++i) {
      const int byte = little_ ? size - 1 - i : i;
      v = (v << 8) | bytes_[at + byte];
    }
    *out = v;
    return true;
  }
  std::span<const std::uint8_t> bytes_;
  bool little_;
};

// The orientation tag of IFD0 of a TIFF block; 1 (no transform) when it is
// absent or the block is damaged: OpenCV ignores a bad EXIF block too.
int tiff_orientation(std::span<const std::uint8_t> tiff) {
  if (tiff.size() < 8) return 1;
  bool little;
  if (tiff[0] == 'I' && tiff[1] == 'I') {
    little = true;
  } else if (tiff[0] == 'M' && tiff[1] == 'M') {
    little = false;
  } else {
    return 1;
  }
  const TiffReader reader(tiff, little);
  std::uint32_t ifd = 0, entries = 0;
  if (!reader.u32(4, &ifd) || !reader.u16(ifd, &entries)) return 1;
  constexpr std::uint32_t kOrientationTag = 0x0112;
  for (std::uint32_t i = 0; i < entries; ++i) {
    const std::uint64_t entry = std::uint64_t{ifd} + 2 + 12 * std::uint64_t{i};
    std::uint32_t tag = 0, value = 0;
    if (!reader.u16(entry, &tag)) return 1;
    if (tag != kOrientationTag) continue;
    // A SHORT value sits left-aligned in the 4-byte value field.
    if (!reader.u16(entry + 8, &value)) return 1;
    return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
  }
  return 1;
}

// The first APP1 segment that starts with "Exif\0\0" holds a TIFF block.
int jpeg_exif_orientation(jpeg_saved_marker_ptr markers) {
  static constexpr std::uint8_t kExifHeader[6] = {'E', 'x', 'i', 'f', 0, 0};
  for (jpeg_saved_marker_ptr m = markers; m != nullptr; m = m->next) {
    if (m->marker != JPEG_APP0 + 1 || m->data_length < sizeof kExifHeader) continue;
    if (std::memcmp(m->data, kExifHeader, sizeof kExifHeader) != 0) continue;
    return tiff_orientation(std::span<const std::uint8_t>(m->data, m->data_length).subspan(sizeof kExifHeader));
  }
  return 1;
}

// ---------------------------------------------------------------- JPEG ----

struct JpegErrorManager {
  jpeg_error_mgr base;  // first, so that libjpeg's cinfo->err points at the whole struct
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void jpeg_fail(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  cinfo->err->format_message(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings that leave every pixel intact. All others (premature end of data,
// bad Huffman code, ...) mean that libjpeg filled part of the image with grey,
// so they are errors here although OpenCV only logs them.
bool is_harmless_jpeg_warning(int code) {
  switch (code) {
    case JWRN_ADOBE_XFORM:      // unknown transform code: libjpeg guesses from the component count
    case JWRN_EXTRANEOUS_DATA:  // junk between segments, skipped
    case JWRN_JFIF_MAJOR:       // unknown JFIF version
    case JWRN_BOGUS_ICC:        // we do not read ICC profiles
    case JWRN_NOT_SEQUENTIAL:   // odd SOS parameters in a baseline file, decoded regardless
      return true;
    default:
      return false;
  }
}

void jpeg_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace output
  if (is_harmless_jpeg_warning(cinfo->err->msg_code)) {
    ++cinfo->err->num_warnings;
    return;
  }
  jpeg_fail(cinfo);
}

class JpegDecoder {
 public:
  JpegDecoder() {
    cinfo_.err = jpeg_std_error(&err_.base);
    err_.base.error_exit = jpeg_fail;
    err_.base.emit_message = jpeg_message;
  }
  // Safe also when jpeg_create_decompress never ran: cinfo_ is zeroed, so mem is null.
  ~JpegDecoder() { jpeg_destroy_decompress(&cinfo_); }
  JpegDecoder(const JpegDecoder&) = delete;
  JpegDecoder& operator=(const JpegDecoder&) = delete;

  // Each step returns false after a libjpeg error; message() says which.
  bool read_header(const std::uint8_t* data, std::size_t size) {
    if (setjmp(err_.jump) != 0) return false;
    jpeg_create_decompress(&cinfo_);
    jpeg_mem_src(&cinfo_, data, static_cast<unsigned long>(size));
    jpeg_save_markers(&cinfo_, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&cinfo_, TRUE);
    return true;
  }

  bool start(J_COLOR_SPACE out_color_space) {
    if (setjmp(err_.jump) != 0) return false;
    cinfo_.out_color_space = out_color_space;
    jpeg_start_decompress(&cinfo_);
    return true;
  }

  // Appends every row as RGB to `rgb` (whose capacity must hold the image);
  // `row` holds one decoded row.
  bool read_rows(std::vector<std::uint8_t>& rgb, std::uint8_t* row) {
    if (setjmp(err_.jump) != 0) return false;
    const bool cmyk = cinfo_.out_color_space == JCS_CMYK;
    while (cinfo_.output_scanline < cinfo_.output_height) {
      JSAMPROW rows[1] = {row};
      if (jpeg_read_scanlines(&cinfo_, rows, 1) != 1) {
        std::snprintf(err_.message, sizeof err_.message, "decoder returned no data");
        return false;
      }
      if (cmyk) {
        append_cmyk_row(rgb, row, cinfo_.output_width);
      } else {
        rgb.insert(rgb.end(), row, row + std::size_t{cinfo_.output_width} * 3);
      }
    }
    // jpeg_finish_decompress is not called: every pixel is in, and nothing
    // after the last scan could change one.
    return true;
  }

  jpeg_decompress_struct& info() { return cinfo_; }
  const char* message() const { return err_.message; }

 private:
  // libjpeg-turbo gives Adobe's inverted CMYK (YCCK is converted to it). This
  // is OpenCV's conversion (icvCvt_CMYK2BGR_8u_C4C3R), so that CMYK files,
  // which ImageNet has a few of, decode to the same pixels as there.
  static void append_cmyk_row(std::vector<std::uint8_t>& rgb, const std::uint8_t* row, unsigned width) {
    for (unsigned x = 0; x < width; ++x) {
      const int k = row[4 * x + 3];
      for (int c = 0; c < 3; ++c) rgb.push_back(static_cast<std::uint8_t>(k - (((255 - row[4 * x + c]) * k) >> 8)));
    }
  }

  jpeg_decompress_struct cinfo_{};
  JpegErrorManager err_{};
};

Image decode_jpeg(const std::uint8_t* data, std::size_t size, const std::string& name) {
  JpegDecoder decoder;
  const auto fail = [&] { input_error(name, ": invalid JPEG data (", decoder.message(), ")"); };
  if (!decoder.read_header(data, size)) fail();
  jpeg_decompress_struct& info = decoder.info();
  check_dimensions(name, info.image_width, info.image_height);
  // As OpenCV: four components are CMYK or YCCK, anything else must convert to RGB.
  const bool cmyk = info.num_components == 4;
  if (!decoder.start(cmyk ? JCS_CMYK : JCS_RGB)) fail();
  if (info.output_components != (cmyk ? 4 : 3))
    input_error(name, ": unsupported JPEG with ", info.output_components, " output components");

  Image image;
  image.width = static_cast<int>(info.output_width);
  image.height = static_cast<int>(info.output_height);
  // Reserved, not resized: rows are appended as they decode, so a forged
  // header on a short file does not make us write gigabytes of zeros.
  image.rgb.reserve(std::size_t{info.output_width} * info.output_height * 3);
  std::vector<std::uint8_t> row(std::size_t{info.output_width} * info.output_components);
  if (!decoder.read_rows(image.rgb, row.data())) fail();
  return apply_orientation(std::move(image), jpeg_exif_orientation(info.marker_list));
}

// ----------------------------------------------------------------- PNG ----

// The transformations OpenCV's PngDecoder asks for with IMREAD_COLOR:
// 8-bit (high byte of 16-bit samples), alpha stripped, palette and grey
// expanded to RGB.
void rgb8_transforms(png_structp png, png_infop info) {
    const int bit_depth = png_get_bit_depth(png, info);
    const int color_type = png_get_color_type(png, info);
    if (bit_depth == 16) png_set_strip_16(png);
    png_set_strip_alpha(png);
    if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if ((color_type & PNG_COLOR_MASK_COLOR) == 0) {
      if (bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
      png_set_gray_to_rgb(png);
    }
}

// Deflate cannot compress better than 1032:1, so a file that declares more
// raw data than that bound (with a factor 2 to spare) is surely truncated.
// Checking it first keeps a forged header from costing a huge allocation.
void check_png_data_fits(const std::string& name, std::size_t file_size, std::uint64_t width, std::uint64_t height,
                         int bits_per_pixel) {
  const std::uint64_t raw_bytes = height * ((width * static_cast<std::uint64_t>(bits_per_pixel) + 7) / 8);
  if (raw_bytes / 2064 > file_size)
    input_error(name, ": invalid PNG data (a ", width, "x", height, " image cannot fit in ", file_size,
                " bytes; the file is truncated)");
}

Image decode_png(const std::uint8_t* data, std::size_t size, const std::string& name) {
  PngDecoder decoder(data, size);
  if (!decoder.created()) input_error(name, ": cannot create a PNG decoder (out of memory)");
  const auto fail = [&] { input_error(name, ": invalid PNG data (", decoder.message(), ")"); };
  if (!decoder.read_info()) fail();
  const std::uint32_t width = png_get_image_width(decoder.png(), decoder.info());
  const std::uint32_t height = png_get_image_height(decoder.png(), decoder.info());
  check_dimensions(name, width, height);
  check_png_data_fits(
      name, size, width, height,
      png_get_bit_depth(decoder.png(), decoder.info()) * png_get_channels(decoder.png(), decoder.info()));
  int passes = 1;
  if (!decoder.request(rgb8_transforms, &passes)) fail();
  const std::size_t row_bytes = png_get_rowbytes(decoder.png(), decoder.info());
  if (png_get_channels(decoder.png(), decoder.info()) != 3 || png_get_bit_depth(decoder.png(), decoder.info()) != 8 ||
      row_bytes != std::size_t{width} * 3)
    input_error(name, ": unsupported PNG pixel format");

  Image image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  if (passes == 1) {
    image.rgb.reserve(row_bytes * height);
    std::vector<std::uint8_t> row(row_bytes);
    if (!decoder.read_rows(image.rgb, row.data(), row_bytes, height)) fail();
  } else {
    image.rgb.resize(row_bytes * height);
    std::vector<png_bytep> rows(height);
    for (std::uint32_t y = 0; y < height; ++y) rows[y] = image.rgb.data() + y * row_bytes;
    if (!decoder.read_image(rows.data())) fail();
  }
  return image;
}

bool is_jpeg(const std::uint8_t* data, std::size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

bool is_png(const std::uint8_t* data, std::size_t size) {
  static constexpr std::uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  return size >= sizeof kSignature && std::memcmp(data, kSignature, sizeof kSignature) == 0;
}

}  // namespace

Image decode_image_memory(const std::uint8_t* data, std::size_t size, const std::string& name) {
  if (size == 0) input_error(name, ": empty file, expected a JPEG or PNG image");
  if (is_jpeg(data, size)) return decode_jpeg(data, size, name);
  if (is_png(data, size)) return decode_png(data, size, name);
  input_error(name, ": expected a JPEG or PNG image");
}

Image decode_image(const std::string& path) {
  const std::vector<std::uint8_t> bytes = read_file(path);
  return decode_image_memory(bytes.data(), bytes.size(), path);
}

}  // namespace vrwkv
