// The segmentation overlay: the photo blended with the class colours, written
// straight into a cairo image surface, and a legend of the largest classes
// drawn over its top-left corner with cairo (the style of src/plot/curves.cpp).
#include "vrwkv/seg_overlay.hpp"

#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <memory>

#include "plot/cairo_output.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::plot {

namespace {

constexpr std::int64_t kMaxSide = 32767;  // the largest side of a cairo image surface


// The share of the picture, as the legend shows it.
std::string percent(std::int64_t count, std::int64_t total) {
  const double p = 100.0 * static_cast<double>(count) / static_cast<double>(total);
  char buf[32];
  if (p > 0 && p < 0.1) std::snprintf(buf, sizeof buf, "<0.1%%");
  else std::snprintf(buf, sizeof buf, "%.1f%%", p);
  return buf;
}

double text_width(cairo_t* cr, const std::string& s) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  return e.x_advance;
}

// `s` shortened at a character boundary, with "...", to at most `width` at the
// current font; "" when not even one character fits.
std::string elide(cairo_t* cr, const std::string& s, double width) {
  if (text_width(cr, s) <= width) return s;
  std::size_t end = s.size();
  while (end > 0) {
    do --end;
    while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80);
    if (end == 0) break;
    const std::string cut = s.substr(0, end) + "...";
    if (text_width(cr, cut) <= width) return cut;
  }
  return "";
}

struct Row {
  std::array<std::uint8_t, 3> colour;
  std::string name, share;
};

// The legend's geometry at a font size: every length derives from it.
struct Layout {
  double font, pad, swatch, gap, row_h, name_w, share_w;
  double width() const { return pad + swatch + gap + name_w + 2 * gap + share_w + pad; }
  double height(std::size_t rows) const { return 2 * pad + static_cast<double>(rows) * row_h; }
};

Layout measure(cairo_t* cr, double font, const std::vector<Row>& rows, double name_cap) {
  cairo_set_font_size(cr, font);
  Layout l{font, 0.5 * font, 0.9 * font, 0.45 * font, 1.35 * font, 0, 0};
  for (const Row& r : rows) {
    l.name_w = std::max(l.name_w, std::min(name_cap, text_width(cr, r.name)));
    l.share_w = std::max(l.share_w, text_width(cr, r.share));
  }
  return l;
}

// Draws the legend of `rows` over the top-left corner of a w x h picture,
// fitted to it: the font shrinks (not below a legible minimum), names are
// shortened and rows left out (the box covers at most about 60% of the
// picture's height) as the picture requires; nothing is drawn when not even
// one row fits.
void draw_legend(cairo_t* cr, std::vector<Row> rows, double w, double h) {
  if (rows.empty()) return;
  constexpr double kMinFont = 7;
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  // 11 px on a 256-pixel picture, growing more slowly than the picture (31 px at 2048).
  double font = std::max(kMinFont, 11 * std::sqrt(std::min(w, h) / 256));
  const auto name_cap = [](double f) { return 14 * f; };  // a name takes at most about 25 characters

  Layout l = measure(cr, font, rows, name_cap(font));
  double margin = std::max(2.0, 0.5 * font);
  if (l.width() > w - 2 * margin && font > kMinFont) {  // text widths scale with the font
    font = std::max(kMinFont, font * (w - 2 * margin) / l.width());
    margin = std::max(2.0, 0.5 * font);
    l = measure(cr, font, rows, name_cap(font));
  }
  if (l.width() > w - 2 * margin) {  // still too wide: shorter names
    l.name_w -= l.width() - (w - 2 * margin);
    if (l.name_w < 2 * font) return;
  }
  // Rows while the box covers at most about 60% of the picture's height.
  const double room = std::min(h - 2 * margin, 0.6 * h) - 2 * l.pad;
  const std::size_t fit = static_cast<std::size_t>(std::max(0.0, std::floor(room / l.row_h)));
  if (fit == 0) return;
  if (rows.size() > fit) rows.resize(fit);
  for (Row& r : rows) r.name = elide(cr, r.name, l.name_w);
  if (std::any_of(rows.begin(), rows.end(), [](const Row& r) { return r.name.empty(); })) return;

  const double x0 = margin, y0 = margin, bw = l.width(), bh = l.height(rows.size());
  const double line = std::max(1.0, font / 14);
  cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
  cairo_rectangle(cr, x0, y0, bw, bh);
  cairo_fill_preserve(cr);
  cairo_set_source_rgba(cr, 0, 0, 0, 0.5);
  cairo_set_line_width(cr, line);
  cairo_stroke(cr);

  cairo_font_extents_t fe;
  cairo_font_extents(cr, &fe);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    const double mid = y0 + l.pad + (static_cast<double>(i) + 0.5) * l.row_h;
    const double sx = x0 + l.pad, sy = mid - l.swatch / 2;
    cairo_rectangle(cr, sx, sy, l.swatch, l.swatch);
    cairo_set_source_rgb(cr, r.colour[0] / 255.0, r.colour[1] / 255.0, r.colour[2] / 255.0);
    cairo_fill_preserve(cr);
    cairo_set_source_rgba(cr, 0, 0, 0, 0.6);
    cairo_set_line_width(cr, line);
    cairo_stroke(cr);

    const double baseline = mid + (fe.ascent - fe.descent) / 2;
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_move_to(cr, sx + l.swatch + l.gap, baseline);
    cairo_show_text(cr, r.name.c_str());
    cairo_move_to(cr, x0 + bw - l.pad - text_width(cr, r.share), baseline);  // right-aligned
    cairo_show_text(cr, r.share.c_str());
  }
}

using plot_detail::ContextPtr;
using plot_detail::printable;

}  // namespace

std::vector<std::pair<int, std::int64_t>> largest_classes(const std::uint8_t* labels, std::int64_t n, int k) {
  std::array<std::int64_t, 256> count{};
  for (std::int64_t i = 0; i < n; ++i) ++count[labels[i]];
  std::vector<std::pair<int, std::int64_t>> out;
  for (int c = 0; c < 256; ++c)
    if (c != kNoClass && count[c] > 0) out.emplace_back(c, count[c]);
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  if (out.size() > static_cast<std::size_t>(std::max(0, k))) out.resize(static_cast<std::size_t>(std::max(0, k)));
  return out;
}

void segmentation_overlay(const std::uint8_t* image, const std::uint8_t* labels, std::int64_t height,
                          std::int64_t width, const std::vector<std::array<std::uint8_t, 3>>& palette,
                          const std::vector<std::string>& names, const std::string& path,
                          const OverlayStyle& style) {
  if (height <= 0 || width <= 0 || height > kMaxSide || width > kMaxSide)
    input_error(path, ": cannot draw an overlay of ", height, "x", width, " pixels (each side 1 to ", kMaxSide, ")");
  if (!image || !labels) input_error(path, ": no ", image ? "labels" : "image", " to draw the overlay of");
  if (palette.size() != names.size())
    input_error(path, ": ", palette.size(), " class colours but ", names.size(), " class names");
  if (!(style.alpha >= 0 && style.alpha <= 1))
    input_error(path, ": the overlay's opacity ", style.alpha, " is not between 0 and 1");
  if (style.legend_classes < 0)
    input_error(path, ": the legend cannot list ", style.legend_classes, " classes");

  const std::int64_t n = height * width;
  const std::vector<std::pair<int, std::int64_t>> all = largest_classes(labels, n, 256);
  for (const auto& [c, count] : all)
    if (static_cast<std::size_t>(c) >= palette.size()) {
      const std::int64_t at = std::find(labels, labels + n, static_cast<std::uint8_t>(c)) - labels;
      input_error(path, ": label ", c, " at row ", at / width, ", column ", at % width, " is not a class (",
                  palette.empty() ? std::string("there are none") : cat("classes are 0 to ", palette.size() - 1),
                  ", and ", int(kNoClass), " is none)");
    }

  plot_detail::SurfacePtr surface = plot_detail::rgb_surface(path, height, width);
  cairo_status_t status = CAIRO_STATUS_SUCCESS;

  // The blend, pixel by pixel: RGB24 keeps each pixel as 0x00RRGGBB in a native 32-bit word.
  cairo_surface_flush(surface.get());
  unsigned char* data = cairo_image_surface_get_data(surface.get());
  const int stride = cairo_image_surface_get_stride(surface.get());
  const double a = style.alpha, b = 1 - style.alpha;
  for (std::int64_t y = 0; y < height; ++y) {
    auto* row = reinterpret_cast<std::uint32_t*>(data + y * stride);
    const std::uint8_t* px = image + y * width * 3;
    const std::uint8_t* lab = labels + y * width;
    for (std::int64_t x = 0; x < width; ++x, px += 3) {
      std::uint32_t rgb[3] = {px[0], px[1], px[2]};
      if (lab[x] != kNoClass) {
        const auto& c = palette[lab[x]];
        for (int k = 0; k < 3; ++k) rgb[k] = static_cast<std::uint32_t>(b * px[k] + a * c[k] + 0.5);
      }
      row[x] = rgb[0] << 16 | rgb[1] << 8 | rgb[2];
    }
  }
  cairo_surface_mark_dirty(surface.get());

  std::vector<Row> rows;
  for (std::size_t i = 0; i < all.size() && i < static_cast<std::size_t>(style.legend_classes); ++i)
    rows.push_back({palette[all[i].first], printable(names[all[i].first]), percent(all[i].second, n)});
  {
    ContextPtr ctx(cairo_create(surface.get()), cairo_destroy);
    draw_legend(ctx.get(), std::move(rows), static_cast<double>(width), static_cast<double>(height));
    status = cairo_status(ctx.get());
  }
  plot_detail::write_png(std::move(surface), status, path);
}

}  // namespace vrwkv::plot
