// Box and mask ops of the detector (DETECTION.md 1-5, 7), as mmdet 2.x and
// mmcv 1.7 compute them. Boxes are (x1, y1, x2, y2) rows, float32, in pixels;
// widths are x2 − x1 (no +1). These ops are cheap next to the convolutions
// and GEMMs, so one implementation serves both paths.
#pragma once

#include <cstdint>
#include <vector>

namespace vrwkv::ops {

// F.interpolate(mode='nearest', size=(Ho, Wo)) on an NHWC map, added into y:
// source index floor(dst · (in/out)) with the scale in float32, as PyTorch.
void add_nearest(const float* x, std::int64_t B, std::int64_t H, std::int64_t W, std::int64_t C, float* y,
                 std::int64_t Ho, std::int64_t Wo);

// AnchorGenerator(scales=[scale], ratios, strides) of one level, centre
// offset 0: anchor (y, x, a) at row (y·W + x)·A + a, [H·W·A, 4].
std::vector<float> grid_anchors(std::int64_t H, std::int64_t W, double stride, double scale,
                                const std::vector<double>& ratios);

// DeltaXYWHBBoxCoder.decode (delta2bbox): n rows of `rois` [n,4], each
// with k class columns of `deltas` [n, 4k]; out [n, 4k]. dw, dh clamped to
// ±|log(16/1000)|, boxes clipped to [0, max_w] × [0, max_h].
void delta2bbox(const float* rois, const float* deltas, float* out, std::int64_t n, std::int64_t k,
                const double means[4], const double stds[4], double max_h, double max_w);

// mmcv nms (nms_cpu, offset 0): indices of the kept boxes by descending
// score (equal scores in index order); a box is dropped when its IoU with a
// kept one is > iou_threshold. IoU in float32 as the kernel computes it.
std::vector<std::int64_t> nms(const float* boxes, const float* scores, std::int64_t n, float iou_threshold);

// mmcv batched_nms: NMS within each group id on the boxes moved apart by the
// offset trick (boxes + id · (max coordinate + 1), in float32, as mmcv), one
// group at a time. Returns the kept indices by descending score (equal scores
// in index order).
std::vector<std::int64_t> batched_nms(const float* boxes, const float* scores, const std::int64_t* ids,
                                      std::int64_t n, float iou_threshold);

// mmdet's _do_paste_mask for one box on the CPU path, thresholded: the
// M×M mask (probabilities) sampled bilinearly (grid_sample, align_corners
// False, zero padding) at the pixel centres of box (x0, y0, x1, y1) inside
// the window [floor(x0)−1, ceil(x1)+1) × (same for y) clipped to the image,
// and out[y·img_w + x] = (value ≥ threshold); pixels outside the window
// are 0. out: img_h × img_w bytes, written in full.
void paste_mask(const float* mask, std::int64_t M, const float box[4], std::int64_t img_h, std::int64_t img_w,
                float threshold, std::uint8_t* out);

}  // namespace vrwkv::ops
