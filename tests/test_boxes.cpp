// NMS and batched NMS (src/ops/boxes.cpp) against their definitions written
// out here: mmcv's greedy NMS over the boxes by descending score (stable), and
// batched NMS as mmcv runs it below its split threshold, one NMS over all the
// boxes moved apart by the offset trick.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "ops/boxes.hpp"

namespace vrwkv {
namespace {

// Greedy NMS: visit boxes by descending score (equal scores by index), keep a
// box unless its IoU with an already kept box is > thr (IoU in float32).
std::vector<std::int64_t> greedy_nms(const std::vector<float>& boxes, const std::vector<float>& scores, float thr) {
  const std::int64_t n = static_cast<std::int64_t>(scores.size());
  std::vector<std::int64_t> order(n), keep;
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return scores[a] > scores[b]; });
  for (const std::int64_t i : order) {
    const float* a = &boxes[i * 4];
    bool suppressed = false;
    for (const std::int64_t j : keep) {
      const float* b = &boxes[j * 4];
      const float w = std::max(0.0f, std::min(a[2], b[2]) - std::max(a[0], b[0]));
      const float h = std::max(0.0f, std::min(a[3], b[3]) - std::max(a[1], b[1]));
      const float inter = w * h, area_a = (a[2] - a[0]) * (a[3] - a[1]), area_b = (b[2] - b[0]) * (b[3] - b[1]);
      if (inter / (area_b + area_a - inter) > thr) {
        suppressed = true;
        break;
      }
    }
    if (!suppressed) keep.push_back(i);
  }
  return keep;
}

struct Boxes {
  std::vector<float> boxes, scores;
  std::vector<std::int64_t> ids;
};

// n boxes crowded into a 60×40 image (many overlaps), scores with ties, `groups` group ids.
Boxes crowded(std::int64_t n, int groups, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> x(0, 50), y(0, 30), size(2, 12);
  std::uniform_int_distribution<int> level(0, 19), group(0, groups - 1);
  Boxes b;
  for (std::int64_t i = 0; i < n; ++i) {
    const float x1 = x(rng), y1 = y(rng);
    b.boxes.insert(b.boxes.end(), {x1, y1, x1 + size(rng), y1 + size(rng)});
    b.scores.push_back(static_cast<float>(level(rng)) / 20.0f);  // 20 levels: many equal scores
    b.ids.push_back(group(rng));
  }
  return b;
}

TEST(Boxes, NmsIsTheGreedyDefinition) {
  for (const float thr : {0.3f, 0.5f, 0.7f}) {
    const Boxes b = crowded(400, 1, 7);
    const auto got = ops::nms(b.boxes.data(), b.scores.data(), 400, thr);
    EXPECT_EQ(got, greedy_nms(b.boxes, b.scores, thr)) << "threshold " << thr;
    EXPECT_LT(got.size(), 400u);  // the crowd does suppress
  }
}

TEST(Boxes, BatchedNmsIsOneNmsOverTheShiftedBoxes) {
  for (const int groups : {1, 5, 80}) {
    const std::int64_t n = 1500;
    const Boxes b = crowded(n, groups, 11 + groups);
    float top = b.boxes[0];
    for (const float v : b.boxes) top = std::max(top, v);
    std::vector<float> shifted(b.boxes.size());
    for (std::int64_t i = 0; i < n; ++i)
      for (int k = 0; k < 4; ++k) shifted[i * 4 + k] = b.boxes[i * 4 + k] + static_cast<float>(b.ids[i]) * (top + 1.0f);
    const auto got = ops::batched_nms(b.boxes.data(), b.scores.data(), b.ids.data(), n, 0.5f);
    EXPECT_EQ(got, greedy_nms(shifted, b.scores, 0.5f)) << groups << " groups";
  }
  EXPECT_TRUE(ops::batched_nms(nullptr, nullptr, nullptr, 0, 0.5f).empty());
}

}  // namespace
}  // namespace vrwkv
