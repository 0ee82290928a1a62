// The detector after the backbone (DETECTION.md 1-6), one image, NHWC maps:
// FPN → RPN (anchors, top-k per level, decoding, NMS per level) → RoIAlign
// of the proposals → Shared2FC box head → multi-class NMS → RoIAlign of the
// detections → FCN mask head → masks pasted on the original image.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>

#include "det/state.hpp"
#include "ops/boxes.hpp"
#include "ops/maps.hpp"
#include "ops/roi_align.hpp"
#include "threads.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::det {

using adapter::Map;
using adapter::to_nchw;

const float* State::fc0_weight_nhwc(std::int64_t C) {
  std::call_once(fc0_once, [&] {
    const LinearW& l = w.box.shared[0];
    const std::int64_t P = kRoiSize * kRoiSize;
    fc0_nhwc.resize(l.out * l.in);
    for (std::int64_t o = 0; o < l.out; ++o)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t p = 0; p < P; ++p) fc0_nhwc[o * l.in + p * C + c] = l.weight[o * l.in + c * P + p];
  });
  return fc0_nhwc.data();
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

float sigmoid(float x) { return static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(x)))); }

Tensor rows_tensor(const std::vector<float>& v, std::int64_t n, std::int64_t k) {
  Tensor t(DType::F32, {n, k});
  if (n > 0 && k > 0) std::memcpy(t.f32(), v.data(), sizeof(float) * n * k);
  return t;
}

// [n,S,S,C] NHWC RoI features → [n,C,S,S].
Tensor roi_nchw(const std::vector<float>& x, std::int64_t n, std::int64_t S, std::int64_t C) {
  Tensor t(DType::F32, {n, C, S, S});
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t p = 0; p < S * S; ++p)
      for (std::int64_t c = 0; c < C; ++c) t.f32()[(i * C + c) * S * S + p] = x[(i * S * S + p) * C + c];
  return t;
}

// The first four FPN levels (P6 feeds only the RPN).
std::vector<ops::RoiMap> roi_maps(const std::array<Map, 5>& P) {
  std::vector<ops::RoiMap> maps;
  for (int l = 0; l < 4; ++l) maps.push_back({P[l].data(), P[l].H, P[l].W, 1.0 / kAnchorStrides[l]});
  return maps;
}

}  // namespace

Detections run_heads(const DetectorConfig& cfg, State& st, const std::array<Map, 4>& f, const ImageMeta& meta,
                     const DetectOptions& options, const Context& ctx, TensorMap* trace, DetStageTimes* times) {
  const ThreadScope threads(ctx);
  adapter::Runner r(st.convs, options.reference, options.bf16);
  const DetWeights& W = st.w;
  const DetHeadConfig& hc = cfg.head;
  const DetTestConfig& tc = cfg.test;
  const std::int64_t F = hc.fpn_channels, K = hc.num_classes, A = static_cast<std::int64_t>(kAnchorRatios.size());
  // Stores make() under `name` when tracing; make runs only then.
  const auto keep = [&](const std::string& name, auto&& make) {
    if (trace) (*trace)[name] = make();
  };
  DetStageTimes local;
  DetStageTimes& tm = times ? *times : local;
  const auto roi_align = options.reference ? ops::roi_align_ref : ops::roi_align;

  // FPN: laterals, the top-down sums (nearest, by size), 3×3 outputs, and P6 = P5[::2, ::2].
  auto t0 = Clock::now();
  std::array<Map, 5> P;
  {
    Map lat[4];
    for (int i = 0; i < 4; ++i) lat[i] = r.conv(W.fpn.lateral[i], f[i]);
    for (int i = 3; i > 0; --i)
      ops::add_nearest(lat[i].data(), 1, lat[i].H, lat[i].W, F, lat[i - 1].data(), lat[i - 1].H, lat[i - 1].W);
    for (int i = 0; i < 4; ++i) P[i] = r.conv(W.fpn.fpn[i], lat[i]);
    const Map& p4 = P[3];
    P[4] = Map(1, (p4.H + 1) / 2, (p4.W + 1) / 2, F);
    for (std::int64_t y = 0; y < P[4].H; ++y)
      for (std::int64_t x = 0; x < P[4].W; ++x)
        std::copy_n(p4.data() + ((2 * y) * p4.W + 2 * x) * F, F, P[4].data() + (y * P[4].W + x) * F);
    for (int i = 0; i < 5; ++i) keep("fpn." + std::to_string(i), [&] { return to_nchw(P[i]); });
  }
  tm.fpn += since(t0);

  // RPN: per level the top nms_pre anchors by score, then one decode, the
  // zero-size filter and NMS within each level.
  t0 = Clock::now();
  std::vector<float> anchors, deltas, scores;
  std::vector<std::int64_t> level_ids;
  for (int l = 0; l < 5; ++l) {
    const Map t = r.conv(W.rpn.conv, P[l]);
    const Map cls = r.conv(W.rpn.cls, t), reg = r.conv(W.rpn.reg, t);
    keep("rpn.cls." + std::to_string(l), [&] { return to_nchw(cls); });
    keep("rpn.reg." + std::to_string(l), [&] { return to_nchw(reg); });
    const std::int64_t n = P[l].H * P[l].W * A;  // row (y·W + x)·A + a, as the flattened head outputs
    std::vector<float> s(n);
    for (std::int64_t i = 0; i < n; ++i) s[i] = sigmoid(cls.v[i]);
    std::vector<std::int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    if (tc.rpn_nms_pre > 0 && tc.rpn_nms_pre < n) {
      // The first nms_pre of a stable sort by descending score.
      std::partial_sort(order.begin(), order.begin() + tc.rpn_nms_pre, order.end(),
                        [&](std::int64_t a, std::int64_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
      order.resize(tc.rpn_nms_pre);
    }
    const std::vector<float> grid = ops::grid_anchors(P[l].H, P[l].W, kAnchorStrides[l], kAnchorScale, kAnchorRatios);
    for (const std::int64_t i : order) {
      scores.push_back(s[i]);
      anchors.insert(anchors.end(), grid.begin() + i * 4, grid.begin() + i * 4 + 4);
      deltas.insert(deltas.end(), reg.v.begin() + i * 4, reg.v.begin() + i * 4 + 4);
      level_ids.push_back(l);
    }
  }
  std::vector<float> proposals;  // [P,5]
  {
    const std::int64_t n = static_cast<std::int64_t>(scores.size());
    std::vector<float> boxes(n * 4);
    const double zeros[4] = {0, 0, 0, 0}, ones[4] = {1, 1, 1, 1};
    ops::delta2bbox(anchors.data(), deltas.data(), boxes.data(), n, 1, zeros, ones, meta.img_h, meta.img_w);
    std::vector<float> vb, vs;
    std::vector<std::int64_t> vl;
    for (std::int64_t i = 0; i < n; ++i) {
      const float* b = boxes.data() + i * 4;
      if (!(b[2] - b[0] > 0 && b[3] - b[1] > 0)) continue;  // min_bbox_size 0: strictly positive sides
      vb.insert(vb.end(), b, b + 4);
      vs.push_back(scores[i]);
      vl.push_back(level_ids[i]);
    }
    std::vector<std::int64_t> kept =
        ops::batched_nms(vb.data(), vs.data(), vl.data(), static_cast<std::int64_t>(vs.size()), tc.rpn_iou);
    if (static_cast<std::int64_t>(kept.size()) > tc.rpn_max_per_img) kept.resize(tc.rpn_max_per_img);
    for (const std::int64_t k : kept) {
      proposals.insert(proposals.end(), vb.begin() + k * 4, vb.begin() + k * 4 + 4);
      proposals.push_back(vs[k]);
    }
  }
  const std::int64_t nP = static_cast<std::int64_t>(proposals.size() / 5);
  keep("proposals", [&] { return rows_tensor(proposals, nP, 5); });
  tm.rpn += since(t0);

  // Box head on the proposals.
  t0 = Clock::now();
  const std::vector<ops::RoiMap> maps = roi_maps(P);
  std::vector<float> rois(nP * 4);
  for (std::int64_t i = 0; i < nP; ++i) std::copy_n(proposals.data() + i * 5, 4, rois.data() + i * 4);
  std::vector<float> cls_score(nP * (K + 1)), bbox_pred(nP * 4 * K);
  if (nP) {
    // The rows padded to a multiple of 64 (zeros), so that the packed GEMMs see few distinct sizes.
    const std::int64_t S = kRoiSize, D = F * S * S, Hd = hc.fc_channels, Mp = (nP + 63) / 64 * 64;
    std::vector<float> feats(Mp * D, 0.0f);
    const std::vector<std::int64_t> lv = ops::roi_levels(rois.data(), nP, 4);
    roi_align(maps, F, rois.data(), lv.data(), nP, S, feats.data());
    if (trace || options.reference) {
      Tensor nchw = roi_nchw(feats, nP, S, F);
      if (options.reference) std::memcpy(feats.data(), nchw.f32(), sizeof(float) * nP * D);
      keep("roi_feats", [&] { return std::move(nchw); });
    }
    std::vector<float> h0(Mp * Hd), h1(Mp * Hd), cls(Mp * (K + 1)), reg(Mp * 4 * K);
    // The fast path reads the RoI features in NHWC order, with shared_fcs.0's columns reordered to match.
    r.linear(W.box.shared[0], feats.data(), h0.data(), Mp, options.reference ? nullptr : st.fc0_weight_nhwc(F));
    ops::relu(h0.data(), Mp * Hd);
    r.linear(W.box.shared[1], h0.data(), h1.data(), Mp);
    ops::relu(h1.data(), Mp * Hd);
    r.linear(W.box.cls, h1.data(), cls.data(), Mp);
    r.linear(W.box.reg, h1.data(), reg.data(), Mp);
    std::copy_n(cls.begin(), nP * (K + 1), cls_score.begin());
    std::copy_n(reg.begin(), nP * 4 * K, bbox_pred.begin());
  }
  keep("bbox.cls_score", [&] { return rows_tensor(cls_score, nP, K + 1); });
  keep("bbox.bbox_pred", [&] { return rows_tensor(bbox_pred, nP, 4 * K); });

  // Scores (softmax, background last), class-specific boxes rescaled to the
  // original image, then multi-class NMS.
  std::vector<float> det_boxes, det_scores;
  std::vector<std::int64_t> det_labels;
  {
    std::vector<float> boxes(nP * 4 * K);
    const double means[4] = {0, 0, 0, 0}, stds[4] = {0.1, 0.1, 0.2, 0.2};
    ops::delta2bbox(rois.data(), bbox_pred.data(), boxes.data(), nP, K, means, stds, meta.img_h, meta.img_w);
    std::vector<float> cb, cs;
    std::vector<std::int64_t> cl;
    for (std::int64_t i = 0; i < nP; ++i) {
      const float* z = cls_score.data() + i * (K + 1);
      const double top = *std::max_element(z, z + K + 1);
      double sum = 0;
      for (std::int64_t k = 0; k <= K; ++k) sum += std::exp(static_cast<double>(z[k]) - top);
      for (std::int64_t k = 0; k < K; ++k) {
        const float s = static_cast<float>(std::exp(static_cast<double>(z[k]) - top) / sum);
        if (!(s > tc.score_thr)) continue;
        const float* b = boxes.data() + (i * K + k) * 4;
        for (int j = 0; j < 4; ++j) cb.push_back(b[j] / meta.scale_factor[j]);
        cs.push_back(s);
        cl.push_back(k);
      }
    }
    std::vector<std::int64_t> kept =
        ops::batched_nms(cb.data(), cs.data(), cl.data(), static_cast<std::int64_t>(cs.size()), tc.iou);
    if (static_cast<std::int64_t>(kept.size()) > tc.max_per_img) kept.resize(tc.max_per_img);
    for (const std::int64_t k : kept) {
      det_boxes.insert(det_boxes.end(), cb.begin() + k * 4, cb.begin() + k * 4 + 4);
      det_scores.push_back(cs[k]);
      det_labels.push_back(cl[k]);
    }
  }
  const std::int64_t N = static_cast<std::int64_t>(det_scores.size());
  for (const float v : det_boxes)
    if (!std::isfinite(v)) runtime_error("the detector's boxes hold a non-finite value: the computation overflowed");
  Detections out;
  out.proposals = nP;
  out.bboxes = rows_tensor(det_boxes, N, 4);
  out.scores = Tensor(DType::F32, {N});
  out.labels = Tensor(DType::I64, {N});
  std::copy(det_scores.begin(), det_scores.end(), out.scores.f32());
  std::copy(det_labels.begin(), det_labels.end(), out.labels.data<std::int64_t>());
  tm.roi += since(t0);
  if (!options.masks) return out;

  // Masks: the detections back in the resized image, RoIAlign 14×14, the
  // FCN head, each detection's class channel pasted on the original image.
  t0 = Clock::now();
  out.masks = Tensor(DType::U8, {N, meta.ori_h, meta.ori_w});
  std::vector<float> mrois(N * 4);
  for (std::int64_t i = 0; i < N * 4; ++i) mrois[i] = det_boxes[i] * meta.scale_factor[i % 4];
  keep("mask.rois", [&] { return rows_tensor(mrois, N, 4); });
  std::vector<float> label_logits(N * 28 * 28);
  if (N) {
    const std::int64_t S = kMaskRoiSize;
    Map x(N, S, S, F);
    const std::vector<std::int64_t> lv = ops::roi_levels(mrois.data(), N, 4);
    roi_align(maps, F, mrois.data(), lv.data(), N, S, x.data());
    for (int i = 0; i < 4; ++i) x = r.conv(W.mask.convs[i], x);
    const Map logits = r.conv(W.mask.logits, r.conv_transpose(W.mask.upsample, x));  // [N,28,28,K]
    const std::int64_t M = logits.H;
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t p = 0; p < M * M; ++p) label_logits[i * M * M + p] = logits.v[(i * M * M + p) * K + det_labels[i]];
    std::vector<float> prob(M * M);
    std::uint8_t* masks = out.masks.data<std::uint8_t>();
    for (std::int64_t i = 0; i < N; ++i) {
      for (std::int64_t p = 0; p < M * M; ++p) prob[p] = sigmoid(label_logits[i * M * M + p]);
      float box[4];
      for (int j = 0; j < 4; ++j) box[j] = mrois[i * 4 + j] / meta.scale_factor[j];
      ops::paste_mask(prob.data(), M, box, meta.ori_h, meta.ori_w, tc.mask_thr, masks + i * meta.ori_h * meta.ori_w);
    }
  }
  if (trace) {
    Tensor t(DType::F32, {N, 28, 28});
    if (N) std::memcpy(t.f32(), label_logits.data(), sizeof(float) * N * 28 * 28);
    keep("mask.logits", [&] { return std::move(t); });
  }
  tm.mask += since(t0);
  return out;
}

}  // namespace vrwkv::det
