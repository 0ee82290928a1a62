// The effective-receptive-field figure: one heat map per model, side by side,
// on a shared logarithmic colour bar.
#include <cairo-svg.h>
#include <cairo.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>

#include "plot/cairo_output.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/plot.hpp"

namespace vrwkv {

namespace {

using plot_detail::ContextPtr;
using plot_detail::printable;
using plot_detail::Sink;
using plot_detail::SurfacePtr;
using plot_detail::write_sink;

constexpr double kDecades = 3;  // the colour bar spans 10^-3 … 1 of each panel's maximum

// A perceptually ordered map from dark blue through green to yellow (the
// shape of viridis), by linear interpolation between five stops; v in [0, 1].
std::array<double, 3> colour(double v) {
  static const double stops[5][3] = {
      {0.267, 0.005, 0.329}, {0.231, 0.322, 0.545}, {0.128, 0.567, 0.551}, {0.369, 0.789, 0.383}, {0.993, 0.906, 0.144}};
  v = std::clamp(v, 0.0, 1.0) * 4;
  const int i = std::min(3, static_cast<int>(v));
  const double f = v - i;
  return {stops[i][0] + f * (stops[i + 1][0] - stops[i][0]), stops[i][1] + f * (stops[i + 1][1] - stops[i][1]),
          stops[i][2] + f * (stops[i + 1][2] - stops[i][2])};
}

// log10(value / max) mapped to [0, 1] over the colour bar's decades (0 below it, and for a zero map).
double level(double value, double max) {
  if (!(max > 0) || !(value > 0)) return 0;
  return std::clamp(1 + std::log10(value / max) / kDecades, 0.0, 1.0);
}

void text(cairo_t* cr, double x, double y, const std::string& s, double align, double size) {
  cairo_set_font_size(cr, size);
  const std::string t = printable(s);
  cairo_text_extents_t e;
  cairo_text_extents(cr, t.c_str(), &e);
  cairo_move_to(cr, x - e.width * align, y);
  cairo_show_text(cr, t.c_str());
}

// The map as an RGB24 surface, one pixel per value.
SurfacePtr heat_surface(const Tensor& map, const std::string& path) {
  const std::int64_t H = map.dim(0), W = map.dim(1);
  SurfacePtr s = plot_detail::rgb_surface(path, H, W);
  const float* m = map.f32();
  double max = 0;
  for (std::int64_t i = 0; i < H * W; ++i) max = std::max<double>(max, m[i]);
  cairo_surface_flush(s.get());
  unsigned char* data = cairo_image_surface_get_data(s.get());
  const int stride = cairo_image_surface_get_stride(s.get());
  for (std::int64_t y = 0; y < H; ++y)
    for (std::int64_t x = 0; x < W; ++x) {
      const auto c = colour(level(m[y * W + x], max));
      auto* px = reinterpret_cast<std::uint32_t*>(data + y * stride) + x;
      *px = (static_cast<std::uint32_t>(std::lround(c[0] * 255)) << 16) |
            (static_cast<std::uint32_t>(std::lround(c[1] * 255)) << 8) | static_cast<std::uint32_t>(std::lround(c[2] * 255));
    }
  cairo_surface_mark_dirty(s.get());
  return s;
}

}  // namespace

void plot_receptive_fields(const std::vector<std::pair<std::string, Tensor>>& maps, const std::string& path) {
  const bool svg = path.ends_with(".svg");
  if (!svg && !path.ends_with(".png")) input_error(path, ": expected a .png or .svg file name for the figure");
  if (maps.empty()) input_error(path, ": no receptive field to draw");
  for (const auto& [name, map] : maps)
    if (map.dtype() != DType::F32 || map.ndim() != 2 || map.numel() == 0)
      input_error("receptive field '", printable(name), "' has shape ", shape_str(map.shape()), ", expected F32 [H,W]");
  const double side = 220, gap = 30, top = 40, left = 20, bar = 70;
  const double W = std::max(400.0, left + maps.size() * (side + gap) + bar), H = top + side + 40;

  AtomicFile out(path);  // before the surface: an SVG surface writes to it while it is destroyed
  Sink sink{&out, nullptr};
  SurfacePtr surface = plot_detail::figure_surface(svg, sink, W, H);
  cairo_status_t status;
  {
    ContextPtr ctx = plot_detail::figure_context(surface.get());
    cairo_t* cr = ctx.get();
    for (std::size_t i = 0; i < maps.size(); ++i) {
      const Tensor& map = maps[i].second;
      const double mh = static_cast<double>(map.dim(0)), mw = static_cast<double>(map.dim(1));
      const double scale = side / std::max(mh, mw), x0 = left + i * (side + gap), y0 = top + (side - mh * scale) / 2;
      SurfacePtr heat = heat_surface(map, path);
      cairo_save(cr);
      cairo_translate(cr, x0 + (side - mw * scale) / 2, y0);
      cairo_scale(cr, scale, scale);
      cairo_set_source_surface(cr, heat.get(), 0, 0);
      cairo_pattern_set_filter(cairo_get_source(cr), CAIRO_FILTER_NEAREST);
      cairo_paint(cr);
      cairo_restore(cr);
      cairo_set_source_rgb(cr, 0, 0, 0);
      text(cr, x0 + side / 2, top - 12, maps[i].first, 0.5, 13);
    }
    // The colour bar: 10^-3 … 1 of each panel's maximum.
    const double bx = left + maps.size() * (side + gap), by = top, bh = side;
    for (int j = 0; j < 100; ++j) {
      const auto c = colour(1.0 - (j + 0.5) / 100);
      cairo_set_source_rgb(cr, c[0], c[1], c[2]);
      cairo_rectangle(cr, bx, by + bh * j / 100, 14, bh / 100 + 0.5);
      cairo_fill(cr);
    }
    cairo_set_source_rgb(cr, 0, 0, 0);
    for (int d = 0; d <= static_cast<int>(kDecades); ++d) {
      const double y = by + bh * d / kDecades;
      cairo_move_to(cr, bx + 14, y);
      cairo_line_to(cr, bx + 18, y);
      cairo_set_line_width(cr, 1);
      cairo_stroke(cr);
      text(cr, bx + 21, y + 4, d == 0 ? "1" : "1e-" + std::to_string(d), 0.0, 10);
    }
    text(cr, W / 2, H - 12, "|d central output / d input|, relative to each map's maximum", 0.5, 11);
    status = cairo_status(cr);
  }
  plot_detail::finish_figure(std::move(surface), status, svg, sink, out, path);
}

}  // namespace vrwkv
