// What the plots share: writing a cairo surface through an AtomicFile (the
// stream callback), the owners of cairo objects, and text made safe to draw.
#pragma once

#include <cairo-svg.h>
#include <cairo.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <string>

#include "vrwkv/atomic_file.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::plot_detail {

struct Sink {
  AtomicFile* file;
  std::exception_ptr error;  // an exception must not unwind through cairo
};

// cairo's write callback: the bytes go to the file; a failure stops cairo and is rethrown by the caller.
inline cairo_status_t write_sink(void* closure, const unsigned char* data, unsigned int length) {
  Sink* s = static_cast<Sink*>(closure);
  if (s->error) return CAIRO_STATUS_WRITE_ERROR;
  try {
    s->file->write(data, length);
  } catch (...) {
    s->error = std::current_exception();
    return CAIRO_STATUS_WRITE_ERROR;
  }
  return CAIRO_STATUS_SUCCESS;
}

// Valid UTF-8 with control characters and invalid bytes replaced by '?', so a
// string is safe on one line of stderr and in cairo_show_text.
inline std::string printable(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 1) {
      out += c < 0x20 || c == 0x7F ? '?' : static_cast<char>(c);
      ++i;
      continue;
    }
    bool ok = len > 1 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    if (ok) {
      out.append(s, i, len);
      i += len;
    } else {
      out += '?';
      ++i;
    }
  }
  return out;
}

using SurfacePtr = std::unique_ptr<cairo_surface_t, decltype(&cairo_surface_destroy)>;
using ContextPtr = std::unique_ptr<cairo_t, decltype(&cairo_destroy)>;

// An RGB24 image surface (0x00RRGGBB per pixel) for the picture at `path`.
inline SurfacePtr rgb_surface(const std::string& path, std::int64_t height, std::int64_t width) {
  SurfacePtr surface(cairo_image_surface_create(CAIRO_FORMAT_RGB24, static_cast<int>(width), static_cast<int>(height)),
                     cairo_surface_destroy);
  const cairo_status_t status = cairo_surface_status(surface.get());
  if (status != CAIRO_STATUS_SUCCESS)
    runtime_error(path, ": cannot make a ", height, "x", width, " picture (", cairo_status_to_string(status), ")");
  return surface;
}

// `surface` as a PNG at `path`, written atomically, unless `drawing` (the
// status of what was drawn on it) is already an error.
inline void write_png(SurfacePtr surface, cairo_status_t drawing, const std::string& path) {
  AtomicFile out(path);
  Sink sink{&out, nullptr};
  cairo_status_t status = drawing;
  if (status == CAIRO_STATUS_SUCCESS) status = cairo_surface_write_to_png_stream(surface.get(), write_sink, &sink);
  surface.reset();
  if (sink.error) std::rethrow_exception(sink.error);
  if (status != CAIRO_STATUS_SUCCESS) runtime_error(path, ": cannot write the picture (", cairo_status_to_string(status), ")");
  out.commit();
}

// A W×H figure's surface writing through `sink` (SVG) or an image surface to
// encode at the end (PNG), and a context on it with a white page and the
// sans-serif face selected.
inline SurfacePtr figure_surface(bool svg, Sink& sink, double W, double H) {
  return SurfacePtr(svg ? cairo_svg_surface_create_for_stream(write_sink, &sink, W, H)
                        : cairo_image_surface_create(CAIRO_FORMAT_RGB24, static_cast<int>(W), static_cast<int>(H)),
                    cairo_surface_destroy);
}
inline ContextPtr figure_context(cairo_surface_t* surface) {
  ContextPtr ctx(cairo_create(surface), cairo_destroy);
  cairo_set_source_rgb(ctx.get(), 1, 1, 1);
  cairo_paint(ctx.get());
  cairo_select_font_face(ctx.get(), "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  return ctx;
}

// Ends a figure drawn on `surface` (written to `out` through `sink`): an SVG
// is finished, a PNG encoded, unless `drawing` (the status of what was drawn)
// is already an error; then `out` is committed. A failure leaves no file.
inline void finish_figure(SurfacePtr surface, cairo_status_t drawing, bool svg, Sink& sink, AtomicFile& out,
                          const std::string& path) {
  cairo_status_t status = drawing;
  if (status == CAIRO_STATUS_SUCCESS) {
    if (svg) {
      cairo_surface_finish(surface.get());
      status = cairo_surface_status(surface.get());
    } else {
      status = cairo_surface_write_to_png_stream(surface.get(), write_sink, &sink);
    }
  }
  surface.reset();
  if (sink.error) std::rethrow_exception(sink.error);
  if (status != CAIRO_STATUS_SUCCESS) runtime_error(path, ": cannot write the plot (", cairo_status_to_string(status), ")");
  out.commit();
}

}  // namespace vrwkv::plot_detail
