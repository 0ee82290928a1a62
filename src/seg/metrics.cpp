// mmseg's intersect_and_union and eval_metrics('mIoU'); see vrwkv/seg_metrics.hpp.
#include "vrwkv/seg_metrics.hpp"

#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>

#include "vrwkv/error.hpp"

namespace vrwkv::seg {
namespace {

constexpr int kIgnored = -1;  // the pixel is left out of every count
constexpr int kInvalid = -2;  // the value is neither a class nor ignored

// What each raw annotation value means: its class, kIgnored or kInvalid.
std::array<int, 256> label_table(int num_classes, bool reduce_zero_label) {
  std::array<int, 256> table{};
  for (int v = 0; v < 256; ++v) {
    // mmseg: label[label == 0] = 255; label = label - 1; label[label == 254] = 255.
    const int c = reduce_zero_label ? (v == 0 ? kIgnoreIndex : v - 1) : v;
    table[v] = v == kIgnoreIndex || c == kIgnoreIndex ? kIgnored : c < num_classes ? c : kInvalid;
  }
  return table;
}

[[noreturn]] void bad_label(int value, std::int64_t pixel, int num_classes, bool reduce_zero_label) {
  if (reduce_zero_label)
    input_error("label ", value, " is not a class of the ", num_classes, " (pixel ", pixel,
                "; with reduce_zero_label the annotation values are 0 (ignored), 1..", num_classes, " (classes 0..",
                num_classes - 1, ") and 255 (ignored))");
  input_error("label ", value, " is not a class of the ", num_classes, " (pixel ", pixel,
              "; the annotation values are 0..", num_classes - 1, " (classes) and 255 (ignored))");
}

// 0/0 is NaN, as torch's float64 division.
double ratio(std::int64_t a, std::int64_t b) { return static_cast<double>(a) / static_cast<double>(b); }

// numpy's float64 sum of a contiguous array (pairwise summation: blocks of at
// most 128 summed with 8 accumulators, larger ranges split in two at a
// multiple of 8), so that the means below round as mmseg's do. numpy starts
// the reduction from add's identity 0, which changes no sum here.
double numpy_sum(const double* a, std::size_t n) {
  if (n < 8) {
    double s = 0;
    for (std::size_t i = 0; i < n; ++i) s += a[i];
    return s;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    std::size_t i = 8;
    for (; i < n - n % 8; i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) s += a[i];
    return s;
  }
  std::size_t half = n / 2;
  half -= half % 8;
  return numpy_sum(a, half) + numpy_sum(a + half, n - half);
}

// numpy.nanmean of a 1-D array: NaN entries become 0, the array is summed as
// numpy sums, and the sum is divided by the number of other entries; NaN if
// there are none.
double nanmean(const std::vector<double>& v) {
  std::vector<double> zeroed(v);
  std::size_t count = 0;
  for (double& x : zeroed) {
    if (std::isnan(x)) {
      x = 0;
    } else {
      ++count;
    }
  }
  if (count == 0) return std::numeric_limits<double>::quiet_NaN();
  return numpy_sum(zeroed.data(), zeroed.size()) / static_cast<double>(count);
}

}  // namespace

SegMetrics::SegMetrics(int num_classes) : num_classes_(num_classes) {
  if (num_classes < 1 || num_classes > 255)
    input_error("segmentation metrics: ", num_classes,
                " classes; expected 1..255 (labels are 8-bit and 255 marks ignored pixels)");
  intersect_.assign(num_classes, 0);
  union_.assign(num_classes, 0);
  pred_.assign(num_classes, 0);
  label_.assign(num_classes, 0);
}

void SegMetrics::add(const std::uint8_t* pred, const std::uint8_t* label, std::int64_t n, bool reduce_zero_label) {
  if (n < 0) input_error("segmentation metrics: ", n, " pixels");
  if (n > 0 && (pred == nullptr || label == nullptr))
    input_error("segmentation metrics: no ", pred == nullptr ? "prediction" : "label", " map for ", n, " pixels");
  const std::array<int, 256> table = label_table(num_classes_, reduce_zero_label);
  // Counted apart first, so that an error leaves the totals as they were.
  std::vector<std::int64_t> intersect(num_classes_, 0), area_pred(num_classes_, 0), area_label(num_classes_, 0);
  for (std::int64_t i = 0; i < n; ++i) {
    const int p = pred[i];
    if (p >= num_classes_)
      input_error("prediction ", p, " is not a class of the ", num_classes_, " (pixel ", i, "; expected 0..",
                  num_classes_ - 1, ")");
    const int c = table[label[i]];
    if (c < 0) {
      if (c == kInvalid) bad_label(label[i], i, num_classes_, reduce_zero_label);
      continue;
    }
    ++area_label[c];
    ++area_pred[p];
    if (p == c) ++intersect[c];
  }
  for (int c = 0; c < num_classes_; ++c) {
    intersect_[c] += intersect[c];
    pred_[c] += area_pred[c];
    label_[c] += area_label[c];
    union_[c] += area_pred[c] + area_label[c] - intersect[c];
  }
  ++images_;
}

void SegMetrics::merge(const SegMetrics& other) {
  if (other.num_classes_ != num_classes_)
    input_error("segmentation metrics: cannot merge counts of ", other.num_classes_, " classes into ", num_classes_);
  for (int c = 0; c < num_classes_; ++c) {
    intersect_[c] += other.intersect_[c];
    union_[c] += other.union_[c];
    pred_[c] += other.pred_[c];
    label_[c] += other.label_[c];
  }
  images_ += other.images_;
}

SegMetrics::Result SegMetrics::result() const {
  Result r;
  std::int64_t total_intersect = 0, total_label = 0;
  r.IoU.resize(num_classes_);
  r.Acc.resize(num_classes_);
  for (int c = 0; c < num_classes_; ++c) {
    total_intersect += intersect_[c];
    total_label += label_[c];
    r.IoU[c] = ratio(intersect_[c], union_[c]);
    r.Acc[c] = ratio(intersect_[c], label_[c]);
  }
  r.aAcc = ratio(total_intersect, total_label);
  r.mIoU = nanmean(r.IoU);
  r.mAcc = nanmean(r.Acc);
  r.images = images_;
  return r;
}

}  // namespace vrwkv::seg
