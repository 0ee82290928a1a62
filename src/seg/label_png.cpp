// Writing a class-index map as an 8-bit greyscale PNG (libpng), atomically.
#include <png.h>

#include <csetjmp>
#include <string>

#include "vrwkv/atomic_file.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/seg_data.hpp"

namespace vrwkv::seg {

namespace {
void on_error(png_structp png, png_const_charp message) {
  *static_cast<std::string*>(png_get_error_ptr(png)) = message;
  std::longjmp(png_jmpbuf(png), 1);
}
void on_warning(png_structp, png_const_charp) {}
void on_write(png_structp png, png_bytep data, png_size_t size) {
  static_cast<std::vector<std::uint8_t>*>(png_get_io_ptr(png))->insert(
      static_cast<std::vector<std::uint8_t>*>(png_get_io_ptr(png))->end(), data, data + size);
}
void on_flush(png_structp) {}

// The PNG bytes (no C++ object lives across the setjmp).
bool encode(const LabelMap& map, std::vector<std::uint8_t>& out, std::string& message) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &message, on_error, on_warning);
  if (!png) return false;
  png_infop info = png_create_info_struct(png);
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_set_write_fn(png, &out, on_write, on_flush);
  png_set_IHDR(png, info, static_cast<png_uint_32>(map.width), static_cast<png_uint_32>(map.height), 8,
               PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (std::int64_t y = 0; y < map.height; ++y)
    png_write_row(png, const_cast<png_bytep>(map.values.data() + y * map.width));
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return true;
}
}  // namespace

void write_label_png(const std::string& path, const LabelMap& map) {
  if (map.height < 1 || map.width < 1 || map.height > 65535 || map.width > 65535 ||
      static_cast<std::int64_t>(map.values.size()) != map.height * map.width)
    input_error(path, ": a label map of ", map.width, "x", map.height, " with ", map.values.size(),
                " values cannot be written");
  std::vector<std::uint8_t> bytes;
  std::string message;
  if (!encode(map, bytes, message)) runtime_error(path, ": PNG encoding failed: ", message);
  AtomicFile out(path);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

}  // namespace vrwkv::seg
