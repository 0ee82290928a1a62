// The benchmark figure: throughput and peak memory against resolution, one
// line per (model, batch, dtype), log-log axes, drawn with cairo.
#include <cairo-svg.h>
#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "vrwkv/atomic_file.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/plot.hpp"

namespace vrwkv::bench {

namespace {

struct Panel {
  double x0, y0, w, h;           // pixel box of the plotting area
  double lx0, lx1, ly0, ly1;     // log10 data range
  double px(double v) const { return x0 + (std::log10(v) - lx0) / (lx1 - lx0) * w; }
  double py(double v) const { return y0 + h - (std::log10(v) - ly0) / (ly1 - ly0) * h; }
};

void text(cairo_t* cr, double x, double y, const std::string& s, double align = 0.5, double size = 12) {
  cairo_set_font_size(cr, size);
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  cairo_move_to(cr, x - e.width * align, y);
  cairo_show_text(cr, s.c_str());
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, v >= 100 ? "%.0f" : (v >= 1 ? "%.3g" : "%.2g"), v);
  return buf;
}

void axes(cairo_t* cr, const Panel& p, const std::vector<double>& xticks, const std::string& title,
          const std::string& ylabel) {
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, p.x0, p.y0, p.w, p.h);
  cairo_stroke(cr);
  for (double x : xticks) {
    text(cr, p.px(x), p.y0 + p.h + 16, number(x));
    cairo_set_source_rgba(cr, 0, 0, 0, 0.12);
    cairo_move_to(cr, p.px(x), p.y0);
    cairo_line_to(cr, p.px(x), p.y0 + p.h);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
  }
  for (double e = std::floor(p.ly0); e <= p.ly1; e += 1)
    for (double m : {1.0, 2.0, 5.0}) {
      const double v = m * std::pow(10, e);
      if (std::log10(v) < p.ly0 || std::log10(v) > p.ly1) continue;
      text(cr, p.x0 - 6, p.py(v) + 4, number(v), 1.0);
      cairo_set_source_rgba(cr, 0, 0, 0, 0.12);
      cairo_move_to(cr, p.x0, p.py(v));
      cairo_line_to(cr, p.x0 + p.w, p.py(v));
      cairo_stroke(cr);
      cairo_set_source_rgb(cr, 0, 0, 0);
    }
  text(cr, p.x0 + p.w / 2, p.y0 - 10, title, 0.5, 14);
  text(cr, p.x0 + p.w / 2, p.y0 + p.h + 36, "input resolution (square side, pixels)");
  cairo_save(cr);
  cairo_translate(cr, p.x0 - 48, p.y0 + p.h / 2);
  cairo_rotate(cr, -M_PI / 2);
  text(cr, 0, 0, ylabel);
  cairo_restore(cr);
}

}  // namespace

void plot(const std::vector<Record>& records, double peak_gflops, const std::string& path) {
  const bool svg = path.ends_with(".svg");
  if (!svg && !path.ends_with(".png")) input_error("--plot: expected a .png or .svg file name, got '", path, "'");
  std::map<std::string, std::vector<const Record*>> series;
  for (const Record& r : records) {
    const std::string key = r.spec.model + " b" + std::to_string(r.spec.batch) + (r.spec.dtype == "fp32" ? "" : " " + r.spec.dtype);
    series[key].push_back(&r);
  }
  for (auto& [k, v] : series)
    std::sort(v.begin(), v.end(), [](const Record* a, const Record* b) { return a->spec.width < b->spec.width; });
  double xmin = 1e9, xmax = 0, tmin = 1e18, tmax = 0, mmin = 1e18, mmax = 0;
  std::vector<double> xticks;
  for (const Record& r : records) {
    const double x = std::sqrt(double(r.spec.height) * r.spec.width);
    xmin = std::min(xmin, x), xmax = std::max(xmax, x);
    tmin = std::min(tmin, r.images_per_second), tmax = std::max(tmax, r.images_per_second);
    mmin = std::min(mmin, r.peak_rss_mib), mmax = std::max(mmax, r.peak_rss_mib);
    if (std::find(xticks.begin(), xticks.end(), x) == xticks.end()) xticks.push_back(x);
  }
  if (records.empty()) input_error("--plot: no measurements to plot");
  const double W = 1000, H = 440;
  const double pad = std::log10(xmax / xmin) > 0 ? 0.05 : 0.5;
  Panel left{80, 40, 360, 320, std::log10(xmin) - pad, std::log10(xmax) + pad, std::log10(tmin) - 0.15,
             std::log10(tmax) + 0.15};
  Panel right = left;
  right.x0 = 560, right.ly0 = std::log10(mmin) - 0.1, right.ly1 = std::log10(mmax) + 0.1;
  AtomicFile out(path);
  const cairo_write_func_t sink = [](void* file, const unsigned char* data, unsigned int length) {
    static_cast<AtomicFile*>(file)->write(data, length);
    return CAIRO_STATUS_SUCCESS;
  };
  cairo_surface_t* surface = svg ? cairo_svg_surface_create_for_stream(sink, &out, W, H)
                                 : cairo_image_surface_create(CAIRO_FORMAT_RGB24, static_cast<int>(W), static_cast<int>(H));
  cairo_t* cr = cairo_create(surface);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  axes(cr, left, xticks, "throughput", "images / s");
  axes(cr, right, xticks, "peak resident memory", "MiB");
  const double colours[][3] = {{0.12, 0.47, 0.71}, {0.84, 0.15, 0.16}, {0.17, 0.63, 0.17}, {1.0, 0.5, 0.05},
                               {0.58, 0.4, 0.74},  {0.55, 0.34, 0.29}, {0.89, 0.47, 0.76}, {0.5, 0.5, 0.5}};
  int i = 0;
  for (const auto& [name, pts] : series) {
    const double* rgb = colours[i % 8];
    cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
    cairo_set_line_width(cr, 2);
    for (const Panel* p : {&left, &right}) {
      for (std::size_t j = 0; j < pts.size(); ++j) {
        const double x = p->px(std::sqrt(double(pts[j]->spec.height) * pts[j]->spec.width));
        const double y = p->py(p == &left ? pts[j]->images_per_second : pts[j]->peak_rss_mib);
        if (j == 0) cairo_move_to(cr, x, y);
        else cairo_line_to(cr, x, y);
      }
      cairo_stroke(cr);
      for (const Record* r : pts) {
        cairo_arc(cr, p->px(std::sqrt(double(r->spec.height) * r->spec.width)),
                  p->py(p == &left ? r->images_per_second : r->peak_rss_mib), 3, 0, 2 * M_PI);
        cairo_fill(cr);
      }
    }
    cairo_rectangle(cr, left.x0 + 10, left.y0 + 10 + 18 * i, 14, 3);
    cairo_fill(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text(cr, left.x0 + 30, left.y0 + 16 + 18 * i, name, 0.0, 11);
    ++i;
  }
  char note[160];
  std::snprintf(note, sizeof note, "threads %d, measured fp32 FMA peak %.0f GFLOP/s", records.front().spec.threads,
                peak_gflops);
  text(cr, W / 2, H - 12, note, 0.5, 11);
  cairo_destroy(cr);
  const cairo_status_t status = svg ? (cairo_surface_finish(surface), cairo_surface_status(surface))
                                    : cairo_surface_write_to_png_stream(surface, sink, &out);
  cairo_surface_destroy(surface);
  if (status != CAIRO_STATUS_SUCCESS) runtime_error(path, ": cannot write the plot (", cairo_status_to_string(status), ")");
  out.commit();
}

}  // namespace vrwkv::bench
