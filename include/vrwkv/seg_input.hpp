// Images as segmentor input: the ADE20K test pipeline of the official
// configs (DENSE.md (d); shared/golden/dense/preprocess): decode as
// cv2.imdecode(IMREAD_COLOR), keep-ratio rescale to (2048, 512) and resize
// to a multiple of 32, both with OpenCV's bilinear resize, then
// (x − mean)/std in RGB order.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "vrwkv/tensor.hpp"

namespace vrwkv {

struct SegPipeline {
  std::int64_t long_edge = 2048, short_edge = 512;  // img_scale (2048, 512), keep ratio
  std::int64_t size_divisor = 32;                   // ResizeToMultiple
  std::array<float, 3> mean{123.675f, 116.28f, 103.53f}, std{58.395f, 57.12f, 57.375f};  // RGB
};

struct SegImage {
  std::int64_t ori_h = 0, ori_w = 0;      // the decoded image (ori_shape)
  std::vector<std::uint8_t> original;     // RGB HWC, ori_h × ori_w
  std::vector<std::uint8_t> rescaled;     // RGB HWC after the keep-ratio rescale
  std::int64_t rescaled_h = 0, rescaled_w = 0;
  std::vector<std::uint8_t> resized;      // RGB HWC after the resize to a multiple of 32
  Tensor input;                           // F32 [1,3,H,W], normalised, RGB
};

// mmcv.imrescale's size: scale = min(long/max(h,w), short/min(h,w)) in
// double, each side int(side·scale + 0.5).
std::array<std::int64_t, 2> rescale_size(std::int64_t h, std::int64_t w, const SegPipeline& p = {});

// A missing, unreadable or corrupt file throws Error(Input) naming it.
SegImage load_seg_image(const std::string& path, const SegPipeline& pipeline = {});
// The pipeline on already decoded RGB pixels (h × w × 3).
SegImage preprocess_seg_image(std::vector<std::uint8_t> rgb, std::int64_t h, std::int64_t w,
                              const SegPipeline& pipeline = {});

}  // namespace vrwkv
