// Semantic segmentation metrics as mmseg 0.x computes them
// (mmseg/core/evaluation/metrics.py: intersect_and_union,
// total_intersect_and_union, eval_metrics with metrics=['mIoU']).
//
// Per image, after the label transform (reduce_zero_label: label 0 becomes
// 255, every other label drops by one) the pixels whose label is the ignore
// index 255 are removed from both maps; then, per class c,
//   intersect[c] = pixels with prediction c and label c,
//   pred[c]      = pixels with prediction c,
//   label[c]     = pixels with label c,
//   union[c]     = pred[c] + label[c] - intersect[c].
// The four are summed over images (64-bit counts; mmseg sums float64, which
// is exact for these counts). From the totals:
//   aAcc   = sum(intersect) / sum(label),
//   IoU[c] = intersect[c] / union[c],   Acc[c] = intersect[c] / label[c],
//   mIoU   = nanmean(IoU),              mAcc   = nanmean(Acc).
// Division is IEEE: 0/0 is NaN, as in torch. So a class with no ground-truth
// pixels has Acc NaN, and IoU NaN only if it was never predicted either; a
// class predicted but absent from the ground truth has IoU 0 and counts in
// mIoU, as in mmseg. nanmean skips NaN entries, summing the others in
// numpy's (pairwise) order, so the means are numpy's to the last bit; with
// every entry NaN (or no pixels at all) the mean is NaN. The values are
// fractions: mmseg's log shows round(100 * value, 2).
#pragma once

#include <cstdint>
#include <vector>

namespace vrwkv::seg {

// The label that marks pixels left out of every count.
constexpr std::uint8_t kIgnoreIndex = 255;

// Accumulates mmseg's per-class areas over images.
class SegMetrics {
 public:
  // num_classes in 1..255 (labels are 8-bit and 255 is the ignore index),
  // else Error(Input).
  explicit SegMetrics(int num_classes);

  // pred: class indices (0..K-1) per pixel; label: the annotation's raw
  // values, n pixels each, in the same order. With reduce_zero_label (ADE20K)
  // label 0 is ignored and the others are shifted by -1; 255 is always
  // ignored. Error(Input), and nothing is added, for a label that is not a
  // class after the shift nor 255 ("label 200 is not a class of the 150 ..."),
  // for a prediction >= K (even at an ignored pixel), for n < 0, or for null
  // maps with n > 0.
  void add(const std::uint8_t* pred, const std::uint8_t* label, std::int64_t n, bool reduce_zero_label = true);

  // Adds another accumulator's areas and image count (e.g. one per thread);
  // Error(Input) if its number of classes differs.
  void merge(const SegMetrics& other);

  struct Result {
    double aAcc, mIoU, mAcc;
    std::vector<double> IoU, Acc;  // one per class; NaN where the division is 0/0
    std::int64_t images;           // calls of add (images) summed in
  };
  Result result() const;

  int num_classes() const { return num_classes_; }
  std::int64_t images() const { return images_; }
  // The summed areas, one per class.
  const std::vector<std::int64_t>& area_intersect() const { return intersect_; }
  const std::vector<std::int64_t>& area_union() const { return union_; }
  const std::vector<std::int64_t>& area_pred() const { return pred_; }
  const std::vector<std::int64_t>& area_label() const { return label_; }

 private:
  int num_classes_;
  std::int64_t images_ = 0;
  std::vector<std::int64_t> intersect_, union_, pred_, label_;
};

}  // namespace vrwkv::seg
