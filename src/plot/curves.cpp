// Training curves: reading the trainer's metrics file and drawing loss and
// validation top-1 against epoch with cairo (the style of src/plot/bench.cpp).
#include "vrwkv/plot.hpp"

#include <cairo-svg.h>
#include <cairo.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>

#include <nlohmann/json.hpp>

#include "plot/cairo_output.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::train {

namespace {

using nlohmann::json;
using plot_detail::printable;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

bool blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return c == ' ' || c == '\t' || c == '\r'; });
}


std::string excerpt(const std::string& line) {
  constexpr std::size_t kMax = 40;
  std::string out = "'";
  out += printable(line.substr(0, kMax));
  out += line.size() > kMax ? "...'" : "'";
  return out;
}

}  // namespace

Curves read_metrics(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) input_error(path, ": is a directory, not a metrics file");
  std::ifstream in(path, std::ios::binary);
  if (!in) input_error(path, ": cannot open the metrics file (", std::strerror(errno), ")");
  Curves c;
  std::string line;
  std::int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    const bool cut = in.eof();  // the last line, with no newline: possibly a write cut short
    if (blank(line)) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception&) {
      if (cut) break;
      input_error(path, ":", n, ": not a JSON record: ", excerpt(line));
    }
    if (!j.is_object()) input_error(path, ":", n, ": not a JSON object: ", excerpt(line));
    const auto num = [&](const char* key) {
      const auto it = j.find(key);
      if (it == j.end() || it->is_null()) return kNaN;
      if (!it->is_number()) input_error(path, ":", n, ": '", key, "' is not a number");
      return it->get<double>();
    };
    const bool train = j.contains("loss"), val = j.contains("val_top1");
    if (train) {
      c.step.push_back(num("step"));
      c.epoch.push_back(num("epoch"));
      c.loss.push_back(num("loss"));
      c.lr.push_back(num("lr"));
    }
    if (val) {
      c.val_epoch.push_back(num("epoch"));
      c.val_top1.push_back(num("val_top1"));
      c.val_top5.push_back(num("val_top5"));
      c.val_loss.push_back(num("val_loss"));
    }
  }
  if (in.bad()) input_error(path, ":", n + 1, ": cannot read the metrics file");
  if (c.loss.empty() && c.val_top1.empty())
    input_error(path, ": no training or validation records (", n, " line", n == 1 ? "" : "s",
                ", none with 'loss' or 'val_top1')");
  return c;
}

namespace {

// A linear axis with 1-2-5 ticks: [lo, hi] are multiples of step.
struct Axis {
  double lo, hi, step;

  static Axis nice(double lo, double hi, int target = 5) {
    if (!(hi > lo)) {
      const double d = lo != 0 ? std::abs(lo) * 0.1 : 1;
      lo -= d, hi += d;
    }
    const double raw = (hi - lo) / target;
    const double mag = std::pow(10, std::floor(std::log10(raw)));
    const double r = raw / mag;
    const double step = (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * mag;
    return {std::floor(lo / step + 1e-9) * step, std::ceil(hi / step - 1e-9) * step, step};
  }

  std::vector<double> ticks() const {
    std::vector<double> t;
    for (double k = std::round(lo / step); k * step <= hi + step * 1e-6; k += 1) t.push_back(k * step);
    return t;
  }

  std::string label(double v) const {
    if (std::abs(v) < step * 1e-6) v = 0;
    char buf[48];
    const int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
    if (std::abs(v) >= 1e6 || decimals > 6) std::snprintf(buf, sizeof buf, "%g", v);
    else std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return buf;
  }
};

struct Panel {
  double x0, y0, w, h;  // pixel box of the plotting area
  Axis x, y;
  double px(double v) const { return x0 + (v - x.lo) / (x.hi - x.lo) * w; }
  double py(double v) const { return y0 + h - (v - y.lo) / (y.hi - y.lo) * h; }
};

void text(cairo_t* cr, double x, double y, const std::string& s, double align = 0.5, double size = 12) {
  cairo_set_font_size(cr, size);
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  cairo_move_to(cr, x - e.x_advance * align, y);
  cairo_show_text(cr, s.c_str());
}

double text_width(cairo_t* cr, const std::string& s, double size) {
  cairo_set_font_size(cr, size);
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  return e.x_advance;
}

void frame(cairo_t* cr, const Panel& p, const std::string& title) {
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, p.x0, p.y0, p.w, p.h);
  cairo_stroke(cr);
  text(cr, p.x0 + p.w / 2, p.y0 - 10, title, 0.5, 14);
}

void empty_panel(cairo_t* cr, const Panel& p, const std::string& title, const std::string& message) {
  frame(cr, p, title);
  cairo_set_source_rgb(cr, 0.4, 0.4, 0.4);
  text(cr, p.x0 + p.w / 2, p.y0 + p.h / 2, message, 0.5, 13);
  cairo_set_source_rgb(cr, 0, 0, 0);
}

void axes(cairo_t* cr, const Panel& p, const std::string& title, const std::string& ylabel) {
  frame(cr, p, title);
  const auto grid = [&](double x0, double y0, double x1, double y1) {
    cairo_set_source_rgba(cr, 0, 0, 0, 0.12);
    cairo_move_to(cr, x0, y0);
    cairo_line_to(cr, x1, y1);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
  };
  for (double v : p.x.ticks()) {
    text(cr, p.px(v), p.y0 + p.h + 16, p.x.label(v));
    grid(p.px(v), p.y0, p.px(v), p.y0 + p.h);
  }
  double widest = 0;
  for (double v : p.y.ticks()) {
    const std::string s = p.y.label(v);
    widest = std::max(widest, text_width(cr, s, 12));
    text(cr, p.x0 - 6, p.py(v) + 4, s, 1.0);
    grid(p.x0, p.py(v), p.x0 + p.w, p.py(v));
  }
  text(cr, p.x0 + p.w / 2, p.y0 + p.h + 36, "epoch");
  cairo_save(cr);
  cairo_translate(cr, p.x0 - 16 - widest, p.y0 + p.h / 2);
  cairo_rotate(cr, -M_PI / 2);
  text(cr, 0, 0, ylabel);
  cairo_restore(cr);
}

// Finite (x, y) pairs of two parallel series, split where either is not finite.
std::vector<std::vector<std::pair<double, double>>> segments(const std::vector<double>& x, const std::vector<double>& y) {
  std::vector<std::vector<std::pair<double, double>>> out(1);
  for (std::size_t i = 0; i < std::min(x.size(), y.size()); ++i) {
    if (std::isfinite(x[i]) && std::isfinite(y[i])) out.back().emplace_back(x[i], y[i]);
    else if (!out.back().empty()) out.emplace_back();
  }
  if (out.back().empty()) out.pop_back();
  return out;
}

struct Range {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  bool empty() const { return lo > hi; }
  void add(double v) { lo = std::min(lo, v), hi = std::max(hi, v); }
};

using plot_detail::ContextPtr;
using plot_detail::Sink;
using plot_detail::SurfacePtr;
using plot_detail::write_sink;

constexpr double kColours[][3] = {{0.12, 0.47, 0.71}, {0.84, 0.15, 0.16}, {0.17, 0.63, 0.17}, {1.0, 0.5, 0.05},
                                  {0.58, 0.4, 0.74},  {0.55, 0.34, 0.29}, {0.89, 0.47, 0.76}, {0.5, 0.5, 0.5}};

}  // namespace

void plot_curves(const std::vector<std::pair<std::string, Curves>>& runs, const std::string& path) {
  const bool svg = path.ends_with(".svg");
  if (!svg && !path.ends_with(".png")) input_error(path, ": expected a .png or .svg file name for the plot");
  if (runs.empty()) input_error(path, ": no runs to plot");

  // Data ranges; both panels share the epoch axis.
  Range ex, loss, top1;
  for (const auto& [name, c] : runs) {
    for (const auto& seg : segments(c.epoch, c.loss))
      for (const auto& [x, y] : seg) ex.add(x), loss.add(y);
    for (const auto& seg : segments(c.val_epoch, c.val_top1))
      for (const auto& [x, y] : seg) ex.add(x), top1.add(y);
  }
  const bool has_train = !loss.empty(), has_val = !top1.empty();
  const Axis xaxis = ex.empty() ? Axis{0, 1, 0.2} : Axis::nice(ex.lo, ex.hi);

  std::vector<std::string> names;
  for (const auto& run : runs) names.push_back(printable(run.first));

  // Legend entries (below the panels, wrapped into rows), measured on a scratch surface.
  const double W = 1000, panel_top = 40, panel_h = 300, legend_top = panel_top + panel_h + 62, row_h = 18;
  std::vector<std::pair<double, double>> legend_at;  // (x, y) of each entry's swatch
  {
    SurfacePtr scratch(cairo_image_surface_create(CAIRO_FORMAT_RGB24, 1, 1), cairo_surface_destroy);
    ContextPtr cr(cairo_create(scratch.get()), cairo_destroy);
    cairo_select_font_face(cr.get(), "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    double x = 80, y = legend_top;
    if (runs.size() > 1)
      for (const std::string& name : names) {
        const double w = 20 + text_width(cr.get(), name, 11) + 24;
        if (x > 80 && x + w > W - 40) x = 80, y += row_h;
        legend_at.emplace_back(x, y);
        x += w;
      }
  }
  const double H = (legend_at.empty() ? legend_top : legend_at.back().second + row_h) + 8;

  Panel left{80, panel_top, 380, panel_h, xaxis, has_train ? Axis::nice(loss.lo, loss.hi) : Axis{0, 1, 0.2}};
  Panel right{580, panel_top, 380, panel_h, xaxis, has_val ? Axis::nice(top1.lo, top1.hi) : Axis{0, 1, 0.2}};

  AtomicFile out(path);  // before the surface: an SVG surface writes to it while it is destroyed
  Sink sink{&out, nullptr};
  SurfacePtr surface = plot_detail::figure_surface(svg, sink, W, H);
  cairo_status_t status;
  {
    ContextPtr ctx = plot_detail::figure_context(surface.get());
    cairo_t* cr = ctx.get();
    if (has_train) axes(cr, left, "training loss", "loss");
    else empty_panel(cr, left, "training loss", "no training records");
    if (has_val) axes(cr, right, "validation top-1 (%)", "top-1 (%)");
    else empty_panel(cr, right, "validation top-1 (%)", "no validation records");

    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    for (std::size_t i = 0; i < runs.size(); ++i) {
      const Curves& c = runs[i].second;
      const double* rgb = kColours[i % 8];
      cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
      const auto draw = [&](const Panel& p, const std::vector<double>& xs, const std::vector<double>& ys, bool dots,
                            double width) {
        cairo_save(cr);
        cairo_rectangle(cr, p.x0 - 4, p.y0 - 4, p.w + 8, p.h + 8);  // room for a dot on the frame
        cairo_clip(cr);
        cairo_set_line_width(cr, width);
        for (const auto& seg : segments(xs, ys)) {
          for (std::size_t j = 0; j < seg.size(); ++j) {
            if (j == 0) cairo_move_to(cr, p.px(seg[j].first), p.py(seg[j].second));
            else cairo_line_to(cr, p.px(seg[j].first), p.py(seg[j].second));
          }
          cairo_stroke(cr);
          if (dots || seg.size() == 1)
            for (const auto& [x, y] : seg) {
              cairo_arc(cr, p.px(x), p.py(y), dots ? 3 : 2, 0, 2 * M_PI);
              cairo_fill(cr);
            }
        }
        cairo_restore(cr);
      };
      if (has_train) draw(left, c.epoch, c.loss, false, 1.5);
      if (has_val) draw(right, c.val_epoch, c.val_top1, true, 2);
      if (!legend_at.empty()) {
        const auto [lx, ly] = legend_at[i];
        cairo_rectangle(cr, lx, ly - 5, 14, 3);
        cairo_fill(cr);
        cairo_set_source_rgb(cr, 0, 0, 0);
        text(cr, lx + 20, ly, names[i], 0.0, 11);
      }
    }
    if (runs.size() == 1) {
      cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
      text(cr, W / 2, H - 14, names[0], 0.5, 11);
    }
    status = cairo_status(cr);
  }
  plot_detail::finish_figure(std::move(surface), status, svg, sink, out, path);
}

}  // namespace vrwkv::train
