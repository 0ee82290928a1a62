#include "ops/boxes.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <numeric>

namespace vrwkv::ops {

void add_nearest(const float* x, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C, float* y,
                 std::int64_t Ho, std::int64_t Wo) {
  // PyTorch's nearest: scale = in/out in float32, src = min(floor(dst · scale), in − 1).
  const float sh = static_cast<float>(H) / static_cast<float>(Ho), sw = static_cast<float>(W) / static_cast<float>(Wo);
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < Ho; ++i) {
      const std::int64_t si = std::min(static_cast<std::int64_t>(std::floor(static_cast<float>(i) * sh)), H - 1);
      for (std::int64_t j = 0; j < Wo; ++j) {
        const std::int64_t sj = std::min(static_cast<std::int64_t>(std::floor(static_cast<float>(j) * sw)), W - 1);
        const float* from = x + ((b * H + si) * W + sj) * C;
        float* to = y + ((b * Ho + i) * Wo + j) * C;
        for (std::int64_t c = 0; c < C; ++c) to[c] += from[c];
      }
    }
}

std::vector<float> grid_anchors(std::int64_t H, std::int64_t W, double stride, double scale,
                                const std::vector<double>& ratios) {
  const std::int64_t A = static_cast<std::int64_t>(ratios.size());
  std::vector<double> base(A * 4);
  for (std::int64_t a = 0; a < A; ++a) {
    const double hr = std::sqrt(ratios[a]), wr = 1.0 / hr;
    const double w = stride * wr * scale, h = stride * hr * scale;
    base[a * 4 + 0] = -0.5 * w;
    base[a * 4 + 1] = -0.5 * h;
    base[a * 4 + 2] = 0.5 * w;
    base[a * 4 + 3] = 0.5 * h;
  }
  std::vector<float> out(H * W * A * 4);
  for (std::int64_t y = 0; y < H; ++y)
    for (std::int64_t x = 0; x < W; ++x)
      for (std::int64_t a = 0; a < A; ++a) {
        float* o = out.data() + ((y * W + x) * A + a) * 4;
        const double sx = x * stride, sy = y * stride;
        o[0] = static_cast<float>(base[a * 4 + 0] + sx);
        o[1] = static_cast<float>(base[a * 4 + 1] + sy);
        o[2] = static_cast<float>(base[a * 4 + 2] + sx);
        o[3] = static_cast<float>(base[a * 4 + 3] + sy);
      }
  return out;
}

void delta2bbox(const float* rois, const float* deltas, float* out, std::int64_t n, std::int64_t k,
                const double means[4], const double stds[4], double max_h, double max_w) {
  const double max_ratio = std::abs(std::log(16.0 / 1000.0));
  for (std::int64_t i = 0; i < n; ++i) {
    const float* r = rois + i * 4;
    const double px = (static_cast<double>(r[0]) + r[2]) * 0.5, py = (static_cast<double>(r[1]) + r[3]) * 0.5;
    const double pw = static_cast<double>(r[2]) - r[0], ph = static_cast<double>(r[3]) - r[1];
    for (std::int64_t c = 0; c < k; ++c) {
      const float* d = deltas + (i * k + c) * 4;
      const double dx = d[0] * stds[0] + means[0], dy = d[1] * stds[1] + means[1];
      const double dw = std::clamp(d[2] * stds[2] + means[2], -max_ratio, max_ratio);
      const double dh = std::clamp(d[3] * stds[3] + means[3], -max_ratio, max_ratio);
      const double gx = px + pw * dx, gy = py + ph * dy, gw = pw * std::exp(dw), gh = ph * std::exp(dh);
      float* o = out + (i * k + c) * 4;
      o[0] = static_cast<float>(std::clamp(gx - gw * 0.5, 0.0, max_w));
      o[1] = static_cast<float>(std::clamp(gy - gh * 0.5, 0.0, max_h));
      o[2] = static_cast<float>(std::clamp(gx + gw * 0.5, 0.0, max_w));
      o[3] = static_cast<float>(std::clamp(gy + gh * 0.5, 0.0, max_h));
    }
  }
}

std::vector<std::int64_t> nms(const float* boxes, const float* scores, std::int64_t n, float iou_threshold) {
  std::vector<std::int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return scores[a] > scores[b]; });
  // The candidates still alive, in score order, as packed rows (x1, y1, x2, y2, area).
  std::vector<std::array<float, 5>> alive(n);
  std::vector<std::int64_t> index = order;
  for (std::int64_t k = 0; k < n; ++k) {
    const float* b = boxes + order[k] * 4;
    alive[k] = {b[0], b[1], b[2], b[3], (b[2] - b[0]) * (b[3] - b[1])};
  }
  std::vector<std::int64_t> keep;
  std::size_t count = alive.size();
  for (std::size_t head = 0; head < count; ++head) {
    keep.push_back(index[head]);
    const std::array<float, 5> bi = alive[head];
    std::size_t out = head + 1;
    for (std::size_t k = head + 1; k < count; ++k) {
      const std::array<float, 5>& bj = alive[k];
      const float w = std::max(0.0f, std::min(bi[2], bj[2]) - std::max(bi[0], bj[0]));
      const float h = std::max(0.0f, std::min(bi[3], bj[3]) - std::max(bi[1], bj[1]));
      const float inter = w * h;
      if (inter / (bi[4] + bj[4] - inter) > iou_threshold) continue;  // suppressed
      alive[out] = bj;
      index[out] = index[k];
      ++out;
    }
    count = out;
  }
  return keep;
}

std::vector<std::int64_t> batched_nms(const float* boxes, const float* scores, const std::int64_t* ids,
                                      std::int64_t n, float iou_threshold) {
  if (n == 0) return {};
  float top = boxes[0];
  for (std::int64_t i = 0; i < n * 4; ++i) top = std::max(top, boxes[i]);
  std::vector<float> shifted(n * 4);
  for (std::int64_t i = 0; i < n; ++i) {
    const float offset = static_cast<float>(ids[i]) * (top + 1.0f);
    for (int k = 0; k < 4; ++k) shifted[i * 4 + k] = boxes[i * 4 + k] + offset;
  }
  // One group at a time, then every kept box by descending score. mmcv runs a single NMS over all the shifted
  // boxes below 10,000 of them and this loop above; both keep the same boxes in the same order (shifted groups
  // never overlap, so a box only ever suppresses boxes of its own group), and this is the one that does not
  // compare every box with the kept boxes of the other groups.
  std::map<std::int64_t, std::vector<std::int64_t>> groups;
  for (std::int64_t i = 0; i < n; ++i) groups[ids[i]].push_back(i);
  std::vector<std::int64_t> keep;
  std::vector<float> gb, gs;
  for (const auto& [g, members] : groups) {
    gb.clear();
    gs.clear();
    for (const std::int64_t i : members) {
      gb.insert(gb.end(), shifted.begin() + i * 4, shifted.begin() + i * 4 + 4);
      gs.push_back(scores[i]);
    }
    for (const std::int64_t k : nms(gb.data(), gs.data(), static_cast<std::int64_t>(members.size()), iou_threshold))
      keep.push_back(members[k]);
  }
  std::sort(keep.begin(), keep.end());  // mmcv takes total_mask.nonzero(): index order, then sorts by score
  std::stable_sort(keep.begin(), keep.end(), [&](std::int64_t a, std::int64_t b) { return scores[a] > scores[b]; });
  return keep;
}

void paste_mask(const float* mask, std::int64_t M, const float box[4], std::int64_t img_h, std::int64_t img_w,
                float threshold, std::uint8_t* out) {
  std::fill(out, out + img_h * img_w, std::uint8_t{0});
  const float x0 = box[0], y0 = box[1], x1 = box[2], y1 = box[3];
  if (!std::isfinite(x0) || !std::isfinite(y0) || !std::isfinite(x1) || !std::isfinite(y1)) return;
  // The window, clamped to the image in double before any conversion to an integer.
  const auto at = [](double v, std::int64_t hi) { return static_cast<std::int64_t>(std::clamp(v, 0.0, double(hi))); };
  const std::int64_t xa = at(std::floor(x0) - 1, img_w), ya = at(std::floor(y0) - 1, img_h);
  const std::int64_t xb = at(std::ceil(x1) + 1, img_w), yb = at(std::ceil(y1) + 1, img_h);
  if (xa >= xb || ya >= yb) return;
  // The grid in [-1, 1] (a zero-size box gives ±inf, replaced by 0), then
  // grid_sample's source pixel ((g + 1)·M − 1)/2, all in float32 as mmdet.
  const auto source = [&](std::int64_t p, float lo, float hi) {
    float g = (static_cast<float>(p) + 0.5f - lo) / (hi - lo) * 2.0f - 1.0f;
    if (std::isinf(g)) g = 0.0f;
    return ((g + 1.0f) * static_cast<float>(M) - 1.0f) / 2.0f;
  };
  std::vector<float> sx(xb - xa);
  for (std::int64_t x = xa; x < xb; ++x) sx[x - xa] = source(x, x0, x1);
  for (std::int64_t y = ya; y < yb; ++y) {
    const float iy = source(y, y0, y1);
    if (std::isnan(iy)) continue;  // 0/0 of a zero-height box: grid_sample gives NaN, never ≥ the threshold
    const float fy = std::floor(iy);
    const std::int64_t y_n = static_cast<std::int64_t>(fy);
    const float ty = iy - fy;
    for (std::int64_t x = xa; x < xb; ++x) {
      const float ix = sx[x - xa];
      if (std::isnan(ix)) continue;
      const float fx = std::floor(ix);
      const std::int64_t x_w = static_cast<std::int64_t>(fx);
      const float tx = ix - fx;
      const auto at = [&](std::int64_t r, std::int64_t c) {
        return (r >= 0 && r < M && c >= 0 && c < M) ? mask[r * M + c] : 0.0f;
      };
      // grid_sample's corner weights: nw (1−tx)(1−ty), ne tx(1−ty), sw (1−tx)ty, se tx·ty.
      const float v = at(y_n, x_w) * ((1.0f - tx) * (1.0f - ty)) + at(y_n, x_w + 1) * (tx * (1.0f - ty)) +
                      at(y_n + 1, x_w) * ((1.0f - tx) * ty) + at(y_n + 1, x_w + 1) * (tx * ty);
      out[y * img_w + x] = v >= threshold ? 1 : 0;
    }
  }
}

}  // namespace vrwkv::ops
