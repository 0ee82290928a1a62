// COCO's formats and metrics: run-length encoded masks as pycocotools
// stores them, the results file of `vrwkv detect --json`, annotation files,
// and the box / mask AP and AR of the COCO evaluation (COCOeval).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "vrwkv/detector.hpp"

namespace vrwkv::coco {

// A binary mask as runs in column-major order, starting with a run of zeros
// (pycocotools' RLE); counts sum to h·w.
struct Rle {
  std::int64_t h = 0, w = 0;
  std::vector<std::uint32_t> counts;
};

Rle rle_encode(const std::uint8_t* mask, std::int64_t h, std::int64_t w);  // mask row-major h × w
std::vector<std::uint8_t> rle_decode(const Rle& rle);                      // row-major h × w
// The compressed string form of "counts" (rleToString / rleFrString).
std::string rle_to_string(const Rle& rle);
Rle rle_from_string(const std::string& counts, std::int64_t h, std::int64_t w);
// Polygons [x0,y0,x1,y1,...] rasterised as pycocotools' frPyObjects (each
// polygon upsampled ×5 along its edges, then merged by union). Coordinates
// must be finite and within ±100,000 (Error(Input) otherwise).
Rle rle_from_polygons(const std::vector<std::vector<double>>& polygons, std::int64_t h, std::int64_t w);
std::int64_t rle_area(const Rle& rle);
Rle rle_union(const Rle& a, const Rle& b);
// IoU as maskUtils.iou: intersection / union, or intersection / area(dt) when gt is a crowd.
double rle_iou(const Rle& dt, const Rle& gt, bool crowd);
double box_iou(const std::array<double, 4>& dt, const std::array<double, 4>& gt, bool crowd);  // xywh

// One detection in a results file.
struct Result {
  std::int64_t image_id, category_id;
  std::array<double, 4> bbox;  // x, y, w, h
  double score;
  Rle segmentation;            // empty counts: no mask
};

// The detections of one image as results (bbox as x, y, w, h; category
// ids mapped through `category_ids`, one per class).
std::vector<Result> to_results(const Detections& d, std::int64_t image_id,
                               const std::vector<std::int64_t>& category_ids);
// The COCO results JSON (a list of {image_id, category_id, bbox, score, segmentation}).
std::string results_json(const std::vector<Result>& results);

struct Image {
  std::int64_t id, height, width;
  std::string file_name;
};
struct Annotation {
  std::int64_t id, image_id, category_id;
  std::array<double, 4> bbox;  // x, y, w, h
  double area;
  bool crowd;
  Rle segmentation;            // rasterised (polygons or RLE), empty without one
};
struct Dataset {
  std::vector<Image> images;
  std::vector<Annotation> annotations;
  std::vector<std::int64_t> category_ids;  // in the file's order (sorted, as COCO's getCatIds)
  std::vector<std::string> category_names;
};
// An instances JSON file; a file that does not parse or lacks a field: Error(Input) naming it.
Dataset read_annotations(const std::string& path);
Dataset parse_annotations(const std::string& json, const std::string& source);

// COCOeval's summary, in its order: AP, AP50, AP75, APs, APm, APl, AR1,
// AR10, AR100, ARs, ARm, ARl (−1 where nothing counts).
using Stats = std::array<double, 12>;
enum class IouType { Box, Mask };
Stats evaluate(const Dataset& gt, const std::vector<Result>& results, IouType type);
extern const char* const kStatNames[12];

}  // namespace vrwkv::coco
