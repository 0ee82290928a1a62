// The COCO evaluation (pycocotools' COCOeval: evaluateImg, accumulate,
// summarize) for boxes and masks: per image and category, detections
// matched greedily by score to the best remaining ground truth at ten IoU
// thresholds; crowds and out-of-range areas ignored; precision interpolated
// at 101 recall points; maxDets 1, 10, 100; area ranges all / small /
// medium / large.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

#include "vrwkv/coco.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::coco {

const char* const kStatNames[12] = {"AP",    "AP50",  "AP75",  "APs",  "APm",  "APl",
                                    "AR1",   "AR10",  "AR100", "ARs",  "ARm",  "ARl"};

namespace {

constexpr int kT = 10, kR = 101, kA = 4, kM = 3;
const double kAreas[kA][2] = {{0, 1e10}, {0, 32.0 * 32}, {32.0 * 32, 96.0 * 96}, {96.0 * 96, 1e10}};
const std::int64_t kMaxDets[kM] = {1, 10, 100};

// np.linspace(start, stop, n): start + i·step, the last exactly stop.
std::vector<double> linspace(double start, double stop, int n) {
  std::vector<double> v(n);
  const double step = (stop - start) / (n - 1);
  for (int i = 0; i < n; ++i) v[i] = i * step + start;
  v[n - 1] = stop;
  return v;
}

struct Gt {
  const Annotation* a;
  bool ignore;  // iscrowd, or out of the area range
};

// evaluateImg's result for one (image, category, area range), maxDet 100.
struct ImgEval {
  std::vector<double> scores;                   // detections by descending score
  std::vector<std::array<bool, kT>> matched, ignored;  // per detection and threshold
  std::int64_t gt_not_ignored = 0;
};

}  // namespace

Stats evaluate(const Dataset& gt, const std::vector<Result>& results, IouType type) {
  const std::vector<double> iou_thrs = linspace(0.5, 0.95, kT), rec_thrs = linspace(0.0, 1.0, kR);
  std::map<std::int64_t, const Image*> images;
  for (const Image& im : gt.images) images[im.id] = &im;
  std::map<std::int64_t, std::size_t> cat_at;
  for (std::size_t k = 0; k < gt.category_ids.size(); ++k) cat_at[gt.category_ids[k]] = k;
  const std::size_t K = gt.category_ids.size();
  // Ground truths and detections by (image, category); results on unknown images are an error.
  std::map<std::pair<std::int64_t, std::int64_t>, std::vector<const Annotation*>> gts;
  std::map<std::pair<std::int64_t, std::int64_t>, std::vector<const Result*>> dts;
  for (const Annotation& a : gt.annotations) gts[{a.image_id, a.category_id}].push_back(&a);
  for (const Result& r : results) {
    if (!images.count(r.image_id)) input_error("results name image ", r.image_id, ", which the annotations do not list");
    if (type == IouType::Mask && r.segmentation.counts.empty())
      input_error("mask evaluation: a result on image ", r.image_id, " has no segmentation");
    dts[{r.image_id, r.category_id}].push_back(&r);
  }
  // precision [T][R][K][A][M], recall [T][K][A][M]; −1 where nothing counts.
  std::vector<double> precision(static_cast<std::size_t>(kT) * kR * K * kA * kM, -1.0),
      recall(static_cast<std::size_t>(kT) * K * kA * kM, -1.0);
  const auto P = [&](int t, int r, std::size_t k, int a, int m) -> double& {
    return precision[(((static_cast<std::size_t>(t) * kR + r) * K + k) * kA + a) * kM + m];
  };
  const auto Rc = [&](int t, std::size_t k, int a, int m) -> double& {
    return recall[((static_cast<std::size_t>(t) * K + k) * kA + a) * kM + m];
  };

  for (std::size_t k = 0; k < K; ++k) {
    const std::int64_t cat = gt.category_ids[k];
    std::vector<std::vector<ImgEval>> per_area(kA);
    for (const auto& [image_id, im] : images) {
      const auto gi = gts.find({image_id, cat});
      const auto di = dts.find({image_id, cat});
      const std::vector<const Annotation*> g0 = gi == gts.end() ? std::vector<const Annotation*>{} : gi->second;
      std::vector<const Result*> d = di == dts.end() ? std::vector<const Result*>{} : di->second;
      if (g0.empty() && d.empty()) continue;
      // computeIoU: detections by descending score (stable), the first 100.
      std::stable_sort(d.begin(), d.end(), [](const Result* a, const Result* b) { return a->score > b->score; });
      if (static_cast<std::int64_t>(d.size()) > kMaxDets[kM - 1]) d.resize(kMaxDets[kM - 1]);
      const std::size_t D = d.size(), G = g0.size();
      std::vector<double> ious(D * G);
      for (std::size_t i = 0; i < D; ++i)
        for (std::size_t j = 0; j < G; ++j)
          ious[i * G + j] =
              type == IouType::Box ? box_iou(d[i]->bbox, g0[j]->bbox, g0[j]->crowd)
              // Masks of another size match nothing (pycocotools' IoU −1).
              : d[i]->segmentation.h != g0[j]->segmentation.h || d[i]->segmentation.w != g0[j]->segmentation.w
                  ? -1.0
                  : rle_iou(d[i]->segmentation, g0[j]->segmentation, g0[j]->crowd);
      for (int a = 0; a < kA; ++a) {
        // Ground truths: not ignored first (stable), as evaluateImg reorders them.
        std::vector<std::size_t> order(G);
        std::iota(order.begin(), order.end(), 0);
        std::vector<bool> ign(G);
        for (std::size_t j = 0; j < G; ++j)
          ign[j] = g0[j]->crowd || g0[j]->area < kAreas[a][0] || g0[j]->area > kAreas[a][1];
        std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) { return !ign[x] && ign[y]; });
        ImgEval e;
        e.matched.assign(D, {}), e.ignored.assign(D, {});
        for (std::size_t j = 0; j < G; ++j) e.gt_not_ignored += !ign[j];
        for (int t = 0; t < kT; ++t) {
          std::vector<bool> gt_taken(G, false);
          for (std::size_t i = 0; i < D; ++i) {
            double best = std::min(iou_thrs[t], 1 - 1e-10);
            std::ptrdiff_t m = -1;
            for (std::size_t oj = 0; oj < G; ++oj) {
              const std::size_t j = order[oj];
              if (gt_taken[j] && !g0[j]->crowd) continue;
              if (m > -1 && !ign[order[m]] && ign[j]) break;
              if (ious[i * G + j] < best) continue;
              best = ious[i * G + j];
              m = static_cast<std::ptrdiff_t>(oj);
            }
            if (m == -1) continue;
            const std::size_t j = order[m];
            e.ignored[i][t] = ign[j];
            e.matched[i][t] = true;
            gt_taken[j] = true;
          }
        }
        // Unmatched detections outside the area range are ignored (a detection's
        // area: its box's w·h, as loadRes sets it when results carry boxes).
        for (std::size_t i = 0; i < D; ++i) {
          const double area = d[i]->bbox[2] * d[i]->bbox[3];
          const bool out = area < kAreas[a][0] || area > kAreas[a][1];
          for (int t = 0; t < kT; ++t) e.ignored[i][t] = e.ignored[i][t] || (!e.matched[i][t] && out);
          e.scores.push_back(d[i]->score);
        }
        per_area[a].push_back(std::move(e));
      }
    }
    // accumulate
    for (int a = 0; a < kA; ++a) {
      const std::vector<ImgEval>& E = per_area[a];
      if (E.empty()) continue;
      for (int mi = 0; mi < kM; ++mi) {
        const std::int64_t maxdet = kMaxDets[mi];
        struct Det {
          double score;
          const ImgEval* e;
          std::size_t i;
        };
        std::vector<Det> all;
        std::int64_t npig = 0;
        for (const ImgEval& e : E) {
          for (std::size_t i = 0; i < e.scores.size() && static_cast<std::int64_t>(i) < maxdet; ++i)
            all.push_back({e.scores[i], &e, i});
          npig += e.gt_not_ignored;
        }
        if (npig == 0) continue;
        std::stable_sort(all.begin(), all.end(), [](const Det& x, const Det& y) { return x.score > y.score; });
        for (int t = 0; t < kT; ++t) {
          std::vector<double> rc, pr;
          double tp = 0, fp = 0;
          for (const Det& dd : all) {
            if (dd.e->ignored[dd.i][t]) {
              // Ignored detections keep the running sums (they still occupy a rank).
            } else if (dd.e->matched[dd.i][t]) {
              tp += 1;
            } else {
              fp += 1;
            }
            rc.push_back(tp / static_cast<double>(npig));
            pr.push_back(tp / (fp + tp + std::numeric_limits<double>::epsilon()));
          }
          Rc(t, k, a, mi) = rc.empty() ? 0 : rc.back();
          for (std::size_t i = pr.size(); i-- > 1;) pr[i - 1] = std::max(pr[i - 1], pr[i]);
          for (int r = 0; r < kR; ++r) {
            const std::size_t at = std::lower_bound(rc.begin(), rc.end(), rec_thrs[r]) - rc.begin();
            P(t, r, k, a, mi) = at < pr.size() ? pr[at] : 0.0;
          }
        }
      }
    }
  }
  // summarize
  const auto mean_of = [](const std::vector<double>& v) {
    double s = 0;
    std::int64_t n = 0;
    for (const double x : v)
      if (x > -1) s += x, ++n;
    return n ? s / n : -1.0;
  };
  const auto ap = [&](int t_only, int a, int m) {
    std::vector<double> v;
    for (int t = 0; t < kT; ++t)
      if (t_only < 0 || t == t_only)
        for (int r = 0; r < kR; ++r)
          for (std::size_t k = 0; k < K; ++k) v.push_back(P(t, r, k, a, m));
    return mean_of(v);
  };
  const auto ar = [&](int a, int m) {
    std::vector<double> v;
    for (int t = 0; t < kT; ++t)
      for (std::size_t k = 0; k < K; ++k) v.push_back(Rc(t, k, a, m));
    return mean_of(v);
  };
  return {ap(-1, 0, 2), ap(0, 0, 2), ap(5, 0, 2), ap(-1, 1, 2), ap(-1, 2, 2), ap(-1, 3, 2),
          ar(0, 0),     ar(0, 1),    ar(0, 2),    ar(1, 2),     ar(2, 2),     ar(3, 2)};
}

}  // namespace vrwkv::coco
