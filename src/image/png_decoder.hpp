// A PNG decoder over bytes in memory (libpng), shared by the image decoder
// and the segmentation label reader: each step runs under libpng's setjmp
// and returns false after a libpng error (message() says which); the
// caller's transforms decide what the rows hold.
#pragma once

#include <png.h>

#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

namespace vrwkv {

class PngDecoder {
 public:
  // Sets libpng transformations from the header (png_set_*); may raise libpng errors.
  using Transforms = void (*)(png_structp png, png_infop info);

  PngDecoder(const std::uint8_t* data, std::size_t size) : source_{data, size, 0} {
    png_ = png_create_read_struct(PNG_LIBPNG_VER_STRING, this, on_error, on_warning);
    if (png_ != nullptr) info_ = png_create_info_struct(png_);
  }
  ~PngDecoder() {
    if (png_ != nullptr) png_destroy_read_struct(&png_, info_ != nullptr ? &info_ : nullptr, nullptr);
  }
  PngDecoder(const PngDecoder&) = delete;
  PngDecoder& operator=(const PngDecoder&) = delete;

  bool created() const { return png_ != nullptr && info_ != nullptr; }

  bool read_info() {
    if (setjmp(png_jmpbuf(png_)) != 0) return false;
    png_set_read_fn(png_, &source_, read_memory);
    png_read_info(png_, info_);
    return true;
  }

  // Applies `transforms`; the number of interlace passes in *passes.
  bool request(Transforms transforms, int* passes) {
    if (setjmp(png_jmpbuf(png_)) != 0) return false;
    transforms(png_, info_);
    *passes = png_set_interlace_handling(png_);
    png_read_update_info(png_, info_);
    return true;
  }

  // Non-interlaced: appends rows to `out` (whose capacity must hold the
  // image) through the one-row buffer `row`.
  bool read_rows(std::vector<std::uint8_t>& out, std::uint8_t* row, std::size_t row_bytes, std::uint32_t height) {
    if (setjmp(png_jmpbuf(png_)) != 0) return false;
    for (std::uint32_t y = 0; y < height; ++y) {
      png_read_row(png_, row, nullptr);
      out.insert(out.end(), row, row + row_bytes);
    }
    png_read_end(png_, nullptr);
    return true;
  }

  // Interlaced: later passes fill in rows of earlier ones, so the whole image
  // must be in memory; `rows` points at every row of it.
  bool read_image(png_bytepp rows) {
    if (setjmp(png_jmpbuf(png_)) != 0) return false;
    png_read_image(png_, rows);
    png_read_end(png_, nullptr);
    return true;
  }

  png_structp png() const { return png_; }
  png_infop info() const { return info_; }
  const char* message() const { return message_; }

 private:
  struct Source {
    const std::uint8_t* data;
    std::size_t size;
    std::size_t position;
  };
  static void read_memory(png_structp png, png_bytep out, png_size_t length) {
    auto* source = static_cast<Source*>(png_get_io_ptr(png));
    if (length > source->size - source->position) png_error(png, "unexpected end of file");
    std::memcpy(out, source->data + source->position, length);
    source->position += length;
  }
  static void on_error(png_structp png, png_const_charp text) {
    auto* self = static_cast<PngDecoder*>(png_get_error_ptr(png));
    std::snprintf(self->message_, sizeof self->message_, "%s", text);
    png_longjmp(png, 1);
  }
  // libpng only warns about damage it can read past (bad CRC of an ancillary
  // chunk, a bad sRGB profile, a palette index beyond the palette, which
  // labels do not use): the pixels are complete.
  static void on_warning(png_structp, png_const_charp) {}

  png_structp png_ = nullptr;
  png_infop info_ = nullptr;
  Source source_;
  char message_[256] = "unknown error";
};

}  // namespace vrwkv
