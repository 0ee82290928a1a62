// Images as detector input: the COCO test pipeline of the official configs
// (DETECTION.md 0): decode, keep-ratio resize to (1333, 800) with OpenCV's
// bilinear resize, (x − mean)/std in RGB order, zero padding bottom/right to
// a multiple of 32 (after normalising).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "vrwkv/detector.hpp"
#include "vrwkv/tensor.hpp"

namespace vrwkv {

struct DetPipeline {
  std::int64_t long_edge = 1333, short_edge = 800;  // img_scale (1333, 800), keep ratio
  std::int64_t size_divisor = 32;                   // Pad
  std::array<float, 3> mean{123.675f, 116.28f, 103.53f}, std{58.395f, 57.12f, 57.375f};  // RGB
};

struct DetImage {
  std::vector<std::uint8_t> original;  // RGB HWC, meta.ori_h × meta.ori_w
  ImageMeta meta;
  Tensor input;  // F32 [1,3,pad_h,pad_w], normalised, RGB, zero-padded
};

// A missing, unreadable or corrupt file throws Error(Input) naming it.
DetImage load_det_image(const std::string& path, const DetPipeline& pipeline = {});
// The pipeline on already decoded RGB pixels (h × w × 3).
DetImage preprocess_det_image(std::vector<std::uint8_t> rgb, std::int64_t h, std::int64_t w,
                              const DetPipeline& pipeline = {});

}  // namespace vrwkv
