// COCO's run-length masks (pycocotools' RLE, its compressed string and its
// polygon rasterisation), results files and annotation files.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "vrwkv/coco.hpp"

#include "io/json_number.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::coco {

Rle rle_encode(const std::uint8_t* mask, std::int64_t h, std::int64_t w) {
  Rle r{h, w, {}};
  std::uint8_t current = 0;
  std::uint32_t run = 0;
  for (std::int64_t x = 0; x < w; ++x)
    for (std::int64_t y = 0; y < h; ++y) {
      const std::uint8_t v = mask[y * w + x] ? 1 : 0;
      if (v != current) {
        r.counts.push_back(run);
        run = 0;
        current = v;
      }
      ++run;
    }
  r.counts.push_back(run);
  return r;
}

std::vector<std::uint8_t> rle_decode(const Rle& r) {
  std::vector<std::uint8_t> m(r.h * r.w, 0);
  std::int64_t at = 0;
  std::uint8_t v = 0;
  for (const std::uint32_t c : r.counts) {
    for (std::uint32_t k = 0; k < c && at < r.h * r.w; ++k, ++at)
      if (v) m[(at % r.h) * r.w + at / r.h] = 1;
    v ^= 1;
  }
  return m;
}

std::string rle_to_string(const Rle& r) {
  // Each count (after the second, as the difference to the count two back)
  // in 5-bit groups, low first, a continuation bit 0x20, offset by 48.
  std::string s;
  for (std::size_t i = 0; i < r.counts.size(); ++i) {
    long long x = r.counts[i];
    if (i > 2) x -= static_cast<long long>(r.counts[i - 2]);
    bool more = true;
    while (more) {
      long long c = x & 0x1f;
      x >>= 5;  // arithmetic: a negative difference ends at −1
      more = (c & 0x10) ? x != -1 : x != 0;
      if (more) c |= 0x20;
      s.push_back(static_cast<char>(c + 48));
    }
  }
  return s;
}

Rle rle_from_string(const std::string& s, std::int64_t h, std::int64_t w) {
  Rle r{h, w, {}};
  std::size_t p = 0;
  std::vector<long long> counts;
  long long total = 0;
  while (p < s.size()) {
    long long x = 0;
    int k = 0;
    bool more = true;
    while (more) {
      if (p >= s.size()) input_error("an RLE string ends inside a count");
      if (k >= 12) input_error("an RLE count is too long");
      const long long c = static_cast<long long>(static_cast<unsigned char>(s[p])) - 48;
      if (c < 0 || c > 63) input_error("an RLE string holds the character '", s[p], "'");
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      ++p, ++k;
      if (!more && (c & 0x10)) x |= -1LL << (5 * k);  // k ≤ 12: a shift below 64
    }
    if (counts.size() > 2) x += counts[counts.size() - 2];
    // Every run within the mask, checked as it is read (so no sum can overflow).
    if (x < 0 || x > h * w - total) input_error("an RLE string gives a run of ", x, " pixels in a ", h, "x", w, " mask");
    total += x;
    counts.push_back(x);
  }
  if (total != h * w) input_error("an RLE mask's runs cover ", total, " pixels, expected ", h, "x", w);
  for (const long long c : counts) r.counts.push_back(static_cast<std::uint32_t>(c));
  return r;
}

namespace {

// pycocotools' rasterisation of one polygon: the vertices scaled ×5 and
// rounded, every edge walked pixel by pixel in that fine grid, the points
// where the edge crosses a column centre of the image kept (as the first
// pixel below it), and the mask's runs read off those boundary points in
// column-major order.
Rle polygon_rle(const std::vector<double>& xy, std::int64_t h, std::int64_t w) {
  const std::size_t k = xy.size() / 2;
  constexpr double scale = 5;
  constexpr double kMaxCoordinate = 1e5;
  constexpr long long kMaxSteps = 1LL << 22;  // points walked along the outline (COCO's are ~10^4)
  std::vector<long long> x(k + 1), y(k + 1);
  for (std::size_t j = 0; j < k; ++j) {
    for (int c = 0; c < 2; ++c)
      if (!std::isfinite(xy[2 * j + c]) || std::abs(xy[2 * j + c]) > kMaxCoordinate)
        input_error("a polygon coordinate (", xy[2 * j + c], ") is not a number within ±", kMaxCoordinate);
    x[j] = static_cast<long long>(scale * xy[2 * j] + 0.5);
    y[j] = static_cast<long long>(scale * xy[2 * j + 1] + 0.5);
  }
  x[k] = x[0], y[k] = y[0];
  long long steps = 0;
  for (std::size_t j = 0; j < k; ++j) steps += std::max(std::llabs(x[j] - x[j + 1]), std::llabs(y[j] - y[j + 1])) + 1;
  if (steps > kMaxSteps) input_error("a polygon's outline is too long (", steps, " steps at ×5)");
  std::vector<long long> u, v;
  for (std::size_t j = 0; j < k; ++j) {
    long long xs = x[j], xe = x[j + 1], ys = y[j], ye = y[j + 1];
    const long long dx = std::llabs(xe - xs), dy = std::llabs(ys - ye);
    const bool flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
    if (flip) std::swap(xs, xe), std::swap(ys, ye);
    if (dx >= dy) {
      const double s = dx ? static_cast<double>(ye - ys) / dx : 0;
      for (long long d = 0; d <= dx; ++d) {
        const long long t = flip ? dx - d : d;
        u.push_back(t + xs);
        v.push_back(static_cast<long long>(ys + s * t + 0.5));
      }
    } else {
      const double s = static_cast<double>(xe - xs) / dy;
      for (long long d = 0; d <= dy; ++d) {
        const long long t = flip ? dy - d : d;
        v.push_back(t + ys);
        u.push_back(static_cast<long long>(xs + s * t + 0.5));
      }
    }
  }
  std::vector<unsigned long long> a;
  for (std::size_t j = 1; j < u.size(); ++j) {
    if (u[j] == u[j - 1]) continue;
    double xd = static_cast<double>(u[j] < u[j - 1] ? u[j] : u[j] - 1);
    xd = (xd + 0.5) / scale - 0.5;
    if (std::floor(xd) != xd || xd < 0 || xd > static_cast<double>(w - 1)) continue;
    double yd = static_cast<double>(v[j] < v[j - 1] ? v[j] : v[j - 1]);
    yd = (yd + 0.5) / scale - 0.5;
    yd = std::ceil(std::clamp(yd, 0.0, static_cast<double>(h)));
    a.push_back(static_cast<unsigned long long>(xd) * h + static_cast<unsigned long long>(yd));
  }
  a.push_back(static_cast<unsigned long long>(h * w));
  std::sort(a.begin(), a.end());
  unsigned long long prev = 0;
  for (unsigned long long& t : a) {
    const unsigned long long cur = t;
    t -= prev;
    prev = cur;
  }
  // Zero-length runs merge their neighbours.
  Rle r{h, w, {}};
  std::size_t j = 0;
  r.counts.push_back(static_cast<std::uint32_t>(a[j++]));
  while (j < a.size()) {
    if (a[j] > 0) {
      r.counts.push_back(static_cast<std::uint32_t>(a[j++]));
    } else {
      ++j;
      if (j < a.size()) r.counts.back() += static_cast<std::uint32_t>(a[j++]);
    }
  }
  return r;
}

}  // namespace

Rle rle_union(const Rle& a, const Rle& b) {
  if (a.h != b.h || a.w != b.w) input_error("masks of ", a.h, "x", a.w, " and ", b.h, "x", b.w, " merged");
  // Walk both run lists at once; a run ends where the union's value changes.
  Rle out{a.h, a.w, {}};
  std::size_t i = 0, j = 0;
  std::int64_t ri = a.counts.empty() ? 0 : a.counts[0], rj = b.counts.empty() ? 0 : b.counts[0];
  bool vi = false, vj = false, current = false;
  std::int64_t run = 0;
  while (i < a.counts.size() && j < b.counts.size()) {
    const std::int64_t step = std::min(ri, rj);
    if ((vi || vj) != current) {
      out.counts.push_back(static_cast<std::uint32_t>(run));
      run = 0;
      current = !current;
    }
    run += step;
    ri -= step, rj -= step;
    if (ri == 0) {
      if (++i < a.counts.size()) ri = a.counts[i];
      vi = !vi;
    }
    if (rj == 0) {
      if (++j < b.counts.size()) rj = b.counts[j];
      vj = !vj;
    }
  }
  out.counts.push_back(static_cast<std::uint32_t>(run));
  return out;
}

Rle rle_from_polygons(const std::vector<std::vector<double>>& polygons, std::int64_t h, std::int64_t w) {
  // As frPyObjects: a list whose first entry has 4 numbers is boxes (x, y, w, h); otherwise polygons of
  // floor(n/2) points each.
  if (polygons.empty()) input_error("a segmentation with no polygon");
  const bool boxes = polygons[0].size() == 4;
  if (!boxes && polygons[0].size() < 4) input_error("a polygon of ", polygons[0].size(), " numbers");
  Rle m{h, w, {static_cast<std::uint32_t>(h * w)}};
  for (const std::vector<double>& p : polygons) {
    if (boxes) {
      if (p.size() != 4) input_error("a box of ", p.size(), " numbers among boxes");
      const double x1 = p[0], y1 = p[1], x2 = p[0] + p[2], y2 = p[1] + p[3];
      m = rle_union(m, polygon_rle({x1, y1, x1, y2, x2, y2, x2, y1}, h, w));
    } else {
      if (p.size() < 2) input_error("a polygon of ", p.size(), " numbers");
      m = rle_union(m, polygon_rle(std::vector<double>(p.begin(), p.begin() + p.size() / 2 * 2), h, w));
    }
  }
  return m;
}

std::int64_t rle_area(const Rle& r) {
  std::int64_t a = 0;
  for (std::size_t i = 1; i < r.counts.size(); i += 2) a += r.counts[i];
  return a;
}

double rle_iou(const Rle& dt, const Rle& gt, bool crowd) {
  if (dt.h != gt.h || dt.w != gt.w) input_error("masks of ", dt.h, "x", dt.w, " and ", gt.h, "x", gt.w, " compared");
  // Walk both run lists at once, counting the pixels where both are 1.
  std::int64_t inter = 0;
  std::size_t i = 0, j = 0;
  std::int64_t ri = dt.counts.empty() ? 0 : dt.counts[0], rj = gt.counts.empty() ? 0 : gt.counts[0];
  bool vi = false, vj = false;
  while (i < dt.counts.size() && j < gt.counts.size()) {
    const std::int64_t step = std::min(ri, rj);
    if (vi && vj) inter += step;
    ri -= step, rj -= step;
    if (ri == 0) {
      if (++i < dt.counts.size()) ri = dt.counts[i];
      vi = !vi;
    }
    if (rj == 0) {
      if (++j < gt.counts.size()) rj = gt.counts[j];
      vj = !vj;
    }
  }
  const double ad = static_cast<double>(rle_area(dt)), ag = static_cast<double>(rle_area(gt));
  const double u = crowd ? ad : ad + ag - static_cast<double>(inter);
  return u > 0 ? static_cast<double>(inter) / u : 0;
}

double box_iou(const std::array<double, 4>& d, const std::array<double, 4>& g, bool crowd) {
  const double w = std::min(d[0] + d[2], g[0] + g[2]) - std::max(d[0], g[0]);
  const double h = std::min(d[1] + d[3], g[1] + g[3]) - std::max(d[1], g[1]);
  if (w <= 0 || h <= 0) return 0;
  const double i = w * h, u = crowd ? d[2] * d[3] : d[2] * d[3] + g[2] * g[3] - i;
  return i / u;
}

std::vector<Result> to_results(const Detections& d, std::int64_t image_id, const std::vector<std::int64_t>& ids) {
  std::vector<Result> out;
  const std::int64_t N = d.size();
  const bool masks = d.masks.ndim() == 3;
  for (std::int64_t i = 0; i < N; ++i) {
    const float* b = d.bboxes.f32() + i * 4;
    const std::int64_t label = d.labels.data<std::int64_t>()[i];
    Result r{image_id, label < static_cast<std::int64_t>(ids.size()) ? ids[label] : label,
             {b[0], b[1], static_cast<double>(b[2]) - b[0], static_cast<double>(b[3]) - b[1]},
             d.scores.f32()[i],
             {}};
    if (masks) {
      const std::int64_t H = d.masks.dim(1), W = d.masks.dim(2);
      r.segmentation = rle_encode(d.masks.data<std::uint8_t>() + i * H * W, H, W);
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::string results_json(const std::vector<Result>& results) {
  nlohmann::json a = nlohmann::json::array();
  for (const Result& r : results) {
    // As mmdet writes them: x, y and the score float32 values, w and h their differences in double.
    nlohmann::json j{{"image_id", r.image_id},
                     {"category_id", r.category_id},
                     {"bbox", {static_cast<float>(r.bbox[0]), static_cast<float>(r.bbox[1]), r.bbox[2], r.bbox[3]}},
                     {"score", static_cast<float>(r.score)}};
    if (!r.segmentation.counts.empty())
      j["segmentation"] = {{"size", {r.segmentation.h, r.segmentation.w}}, {"counts", rle_to_string(r.segmentation)}};
    a.push_back(std::move(j));
  }
  return a.dump() + "\n";
}

Dataset read_annotations(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) input_error(path, ": cannot read the annotation file");
  std::ostringstream text;
  text << f.rdbuf();
  return parse_annotations(text.str(), path);
}

using io::json_integer;

Dataset parse_annotations(const std::string& text, const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    input_error(path, ": not a JSON file (", e.what(), ")");
  }
  Dataset d;
  try {
    std::map<std::int64_t, std::size_t> image_at;
    for (const auto& im : j.at("images")) {
      Image i{json_integer(im.at("id"), "an image id"), json_integer(im.at("height"), "an image height"),
              json_integer(im.at("width"), "an image width"), im.at("file_name").get<std::string>()};
      if (i.height < 1 || i.width < 1 || i.height > 32768 || i.width > 32768)
        input_error(path, ": image ", i.id, " is ", i.width, "x", i.height);
      if (!image_at.emplace(i.id, d.images.size()).second) input_error(path, ": image id ", i.id, " appears twice");
      d.images.push_back(std::move(i));
    }
    std::vector<std::pair<std::int64_t, std::string>> cats;
    for (const auto& c : j.at("categories")) cats.push_back({json_integer(c.at("id"), "a category id"), c.value("name", "")});
    std::sort(cats.begin(), cats.end());
    cats.erase(std::unique(cats.begin(), cats.end(), [](const auto& a, const auto& b) { return a.first == b.first; }),
               cats.end());
    for (const auto& [id, name] : cats) d.category_ids.push_back(id), d.category_names.push_back(name);
    for (const auto& a : j.at("annotations")) {
      Annotation an;
      an.id = json_integer(a.at("id"), "an annotation id");
      an.image_id = json_integer(a.at("image_id"), "an annotation's image_id");
      an.category_id = json_integer(a.at("category_id"), "an annotation's category_id");
      const auto it = image_at.find(an.image_id);
      if (it == image_at.end()) input_error(path, ": annotation ", an.id, " names image ", an.image_id, ", which is not listed");
      const auto& bb = a.at("bbox");
      if (bb.size() != 4) input_error(path, ": annotation ", an.id, " has a bbox of ", bb.size(), " numbers");
      for (int k = 0; k < 4; ++k) an.bbox[k] = bb.at(k).get<double>();
      an.area = a.at("area").get<double>();
      an.crowd = a.contains("iscrowd") && json_integer(a.at("iscrowd"), "iscrowd", 0, 1) != 0;
      const Image& im = d.images[it->second];
      if (a.contains("segmentation")) {
        const auto& s = a.at("segmentation");
        if (s.is_array()) {
          std::vector<std::vector<double>> polys;
          for (const auto& p : s) {
            polys.push_back(p.get<std::vector<double>>());
          }
          an.segmentation = rle_from_polygons(polys, im.height, im.width);
        } else {
          const std::int64_t h = json_integer(s.at("size").at(0), "a mask height", 0, 32768),
                             w = json_integer(s.at("size").at(1), "a mask width", 0, 32768);
          if (h != im.height || w != im.width)
            input_error(path, ": annotation ", an.id, "'s mask is ", w, "x", h, ", its image ", im.width, "x", im.height);
          if (s.at("counts").is_string()) {
            an.segmentation = rle_from_string(s.at("counts").get<std::string>(), h, w);
          } else {
            Rle rle{h, w, {}};
            for (const auto& c : s.at("counts"))
              rle.counts.push_back(static_cast<std::uint32_t>(json_integer(c, "a run length", 0, 4294967295.0)));
            an.segmentation = std::move(rle);
            long long total = 0;
            for (const auto c : an.segmentation.counts) total += c;
            if (total != h * w) input_error(path, ": annotation ", an.id, "'s runs cover ", total, " pixels, expected ", h * w);
          }
        }
      }
      d.annotations.push_back(std::move(an));
    }
  } catch (const nlohmann::json::exception& e) {
    input_error(path, ": not a COCO instances file (", e.what(), ")");
  } catch (const Error& e) {
    if (e.kind() != Error::Kind::Input) throw;
    const std::string what = e.what();
    if (what.starts_with(path)) throw;
    input_error(path, ": ", what);
  }
  return d;
}

}  // namespace vrwkv::coco
