// The detection picture: masks blended into the photo's pixels in a cairo
// image surface, then boxes and tags drawn over it with cairo, lowest score
// first so that the best detections stay on top.
#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "plot/cairo_output.hpp"
#include "vrwkv/det_overlay.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::plot {

namespace {
constexpr std::int64_t kMaxSide = 32767;  // the largest side of a cairo image surface
}

void detection_overlay(const std::uint8_t* image, std::int64_t height, std::int64_t width,
                       const std::vector<DetBox>& dets, const std::vector<std::array<std::uint8_t, 3>>& palette,
                       const std::vector<std::string>& names, const std::string& path, double alpha) {
  using plot_detail::ContextPtr;
  if (height < 1 || width < 1 || height > kMaxSide || width > kMaxSide)
    input_error(path, ": a ", width, "x", height, " picture (sides 1 to ", kMaxSide, ")");
  if (palette.size() != names.size())
    input_error(path, ": ", palette.size(), " colours for ", names.size(), " class names");
  for (const DetBox& d : dets)
    if (d.label < 0 || static_cast<std::size_t>(d.label) >= palette.size())
      input_error(path, ": detection label ", d.label, " is not a class (0 to ", palette.size() - 1, ")");
  std::vector<std::size_t> order(dets.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return dets[a].score < dets[b].score; });

  plot_detail::SurfacePtr surface = plot_detail::rgb_surface(path, height, width);
  cairo_status_t status = CAIRO_STATUS_SUCCESS;
  cairo_surface_flush(surface.get());
  unsigned char* data = cairo_image_surface_get_data(surface.get());
  const int stride = cairo_image_surface_get_stride(surface.get());
  // The photo, then each mask blended over it in turn (RGB24: 0x00RRGGBB per pixel).
  std::vector<float> rgb(height * width * 3);
  for (std::int64_t i = 0; i < height * width * 3; ++i) rgb[i] = image[i];
  for (const std::size_t k : order) {
    const DetBox& d = dets[k];
    if (!d.mask) continue;
    const auto& c = palette[d.label];
    for (std::int64_t p = 0; p < height * width; ++p)
      if (d.mask[p])
        for (int j = 0; j < 3; ++j) rgb[p * 3 + j] = static_cast<float>((1 - alpha) * rgb[p * 3 + j] + alpha * c[j]);
  }
  for (std::int64_t y = 0; y < height; ++y) {
    auto* row = reinterpret_cast<std::uint32_t*>(data + y * stride);
    for (std::int64_t x = 0; x < width; ++x) {
      const float* px = rgb.data() + (y * width + x) * 3;
      const auto v = [](float f) { return static_cast<std::uint32_t>(std::clamp(f + 0.5f, 0.0f, 255.0f)); };
      row[x] = v(px[0]) << 16 | v(px[1]) << 8 | v(px[2]);
    }
  }
  cairo_surface_mark_dirty(surface.get());
  {
    ContextPtr ctx(cairo_create(surface.get()), cairo_destroy);
    cairo_t* cr = ctx.get();
    const double font = std::max(9.0, 11 * std::sqrt(std::min(width, height) / 256.0));
    const double line = std::max(1.0, font / 6);
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_BOLD);
    cairo_set_font_size(cr, font);
    for (const std::size_t k : order) {
      const DetBox& d = dets[k];
      const auto& c = palette[d.label];
      cairo_set_source_rgb(cr, c[0] / 255.0, c[1] / 255.0, c[2] / 255.0);
      cairo_set_line_width(cr, line);
      cairo_rectangle(cr, d.x1, d.y1, std::max(0.0f, d.x2 - d.x1), std::max(0.0f, d.y2 - d.y1));
      cairo_stroke(cr);
      char score[16];
      std::snprintf(score, sizeof score, " %.2f", d.score);
      const std::string tag = plot_detail::printable(names[d.label]) + score;
      cairo_text_extents_t e;
      cairo_text_extents(cr, tag.c_str(), &e);
      const double pad = 0.25 * font, tw = e.x_advance + 2 * pad, th = font * 1.3;
      // Above the box when it fits, inside its top otherwise; kept inside the picture.
      double tx = std::clamp<double>(d.x1, 0, std::max(0.0, width - tw));
      double ty = d.y1 - th >= 0 ? d.y1 - th : std::clamp<double>(d.y1, 0, std::max(0.0, height - th));
      cairo_rectangle(cr, tx, ty, tw, th);
      cairo_fill(cr);
      const double lum = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
      cairo_set_source_rgb(cr, lum > 140 ? 0 : 1, lum > 140 ? 0 : 1, lum > 140 ? 0 : 1);
      cairo_move_to(cr, tx + pad, ty + 0.5 * th + 0.35 * font);
      cairo_show_text(cr, tag.c_str());
    }
    status = cairo_status(cr);
  }
  plot_detail::write_png(std::move(surface), status, path);
}

}  // namespace vrwkv::plot
