// COCO's formats and the evaluation: RLE masks (encode, decode, the
// compressed string, polygon rasterisation), results JSON, and the 12
// numbers of COCOeval against hand computations of the COCO definitions on
// small made-up sets (matching by score, IoU thresholds, 101-point
// interpolated precision, area ranges, maxDets, crowds).
#include <random>

#include "common.hpp"
#include "vrwkv/coco.hpp"

namespace vrwkv::test {
namespace {

using coco::Annotation;
using coco::Dataset;
using coco::Result;
using coco::Rle;

std::vector<std::uint8_t> rectangle(std::int64_t h, std::int64_t w, const std::array<double, 4>& xywh) {
  std::vector<std::uint8_t> m(h * w, 0);
  for (std::int64_t y = static_cast<std::int64_t>(xywh[1]); y < xywh[1] + xywh[3]; ++y)
    for (std::int64_t x = static_cast<std::int64_t>(xywh[0]); x < xywh[0] + xywh[2]; ++x) m[y * w + x] = 1;
  return m;
}

Rle rect_rle(std::int64_t h, std::int64_t w, const std::array<double, 4>& b) {
  const std::vector<std::uint8_t> m = rectangle(h, w, b);
  return coco::rle_encode(m.data(), h, w);
}

TEST(CocoRle, EncodeDecodeAndStringRoundTrip) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const std::int64_t h = 1 + rng() % 40, w = 1 + rng() % 40;
    std::vector<std::uint8_t> m(h * w);
    const unsigned density = rng() % 4;  // runs of every length, empty and full masks too
    for (auto& v : m) v = density == 0 ? 0 : density == 3 ? 1 : (rng() % 5 < density * 2);
    const Rle r = coco::rle_encode(m.data(), h, w);
    std::int64_t total = 0;
    for (const auto c : r.counts) total += c;
    EXPECT_EQ(total, h * w);
    EXPECT_EQ(coco::rle_decode(r), m);
    const Rle back = coco::rle_from_string(coco::rle_to_string(r), h, w);
    EXPECT_EQ(back.counts, r.counts);
    EXPECT_EQ(coco::rle_area(r), std::count(m.begin(), m.end(), 1));
  }
}

TEST(CocoRle, ColumnMajorRunsStartWithZeros) {
  // 2×3, ones at (0,1) and (1,1): column-major 0 0 | 1 1 | 0 0 → runs 2, 2, 2.
  const std::uint8_t m[6] = {0, 1, 0, 0, 1, 0};
  EXPECT_EQ(coco::rle_encode(m, 2, 3).counts, (std::vector<std::uint32_t>{2, 2, 2}));
  // Starting with a one: a zero-length first run.
  const std::uint8_t one[2] = {1, 0};
  EXPECT_EQ(coco::rle_encode(one, 1, 2).counts, (std::vector<std::uint32_t>{0, 1, 1}));
  EXPECT_THROW(coco::rle_from_string("0", 3, 3), Error);  // runs covering 0 of 9 pixels
  // Hostile strings: a count longer than 12 characters, runs beyond the mask, a character outside the alphabet.
  EXPECT_THROW(coco::rle_from_string(std::string(13, 'o') + "0", 3, 3), Error);
  EXPECT_THROW(coco::rle_from_string("o?o?o?o?o?o?", 3, 3), Error);
  EXPECT_THROW(coco::rle_from_string(" ", 3, 3), Error);
}

TEST(CocoRle, PolygonsCoverThePixelsWhoseCentresAreInside) {
  // A 10×10 square with integer corners: pixel centres 0.5 … 9.5 inside, 100 pixels.
  const Rle sq = coco::rle_from_polygons({{0, 0, 10, 0, 10, 10, 0, 10}}, 20, 20);
  EXPECT_EQ(coco::rle_area(sq), 100);
  const std::vector<std::uint8_t> m = coco::rle_decode(sq);
  EXPECT_EQ(m[0], 1);
  EXPECT_EQ(m[9 * 20 + 9], 1);
  EXPECT_EQ(m[10 * 20 + 10], 0);
  // Two polygons merge by union; a right triangle of legs 10 holds about half the square.
  EXPECT_EQ(coco::rle_area(coco::rle_from_polygons({{0, 0, 10, 0, 10, 10, 0, 10}, {5, 5, 15, 5, 15, 15, 5, 15}}, 20, 20)),
            175);
  // A first entry of 4 numbers makes the list boxes (x, y, w, h), as pycocotools' frPyObjects.
  EXPECT_EQ(coco::rle_area(coco::rle_from_polygons({{0, 0, 10, 10}}, 20, 20)), 100);
  EXPECT_THROW(coco::rle_from_polygons({{0, 0, 10}}, 20, 20), Error);
  EXPECT_THROW(coco::rle_from_polygons({{0, 0, 1e9, 0, 0, 10}}, 20, 20), Error);  // outside ±100,000
  const std::int64_t tri = coco::rle_area(coco::rle_from_polygons({{0, 0, 10, 0, 0, 10}}, 20, 20));
  EXPECT_GE(tri, 45);
  EXPECT_LE(tri, 55);
}

TEST(CocoIou, BoxesMasksAndCrowds) {
  EXPECT_DOUBLE_EQ(coco::box_iou({50, 50, 40, 29}, {50, 50, 40, 40}, false), 1160.0 / 1600);
  EXPECT_DOUBLE_EQ(coco::box_iou({5, 5, 20, 20}, {0, 0, 50, 50}, true), 1.0);  // crowd: over the detection's area
  EXPECT_DOUBLE_EQ(coco::box_iou({0, 0, 10, 10}, {10, 0, 10, 10}, false), 0.0);
  const Rle a = rect_rle(100, 100, {50, 50, 40, 29}), b = rect_rle(100, 100, {50, 50, 40, 40});
  EXPECT_DOUBLE_EQ(coco::rle_iou(a, b, false), 1160.0 / 1600);
  EXPECT_DOUBLE_EQ(coco::rle_iou(rect_rle(100, 100, {5, 5, 20, 20}), rect_rle(100, 100, {0, 0, 50, 50}), true), 1.0);
}

Annotation gt_box(std::int64_t id, std::int64_t image, std::int64_t cat, std::array<double, 4> b, bool crowd = false) {
  return {id, image, cat, b, b[2] * b[3], crowd, rect_rle(100, 100, b)};
}
Result det_box(std::int64_t image, std::int64_t cat, std::array<double, 4> b, double score) {
  return {image, cat, b, score, rect_rle(100, 100, b)};
}

// Image 1, category 1: A (10,10,20,20) small, B (50,50,40,40) medium.
// d1 = A (0.9), d2 (50,50,40,29) IoU 0.725 with B (0.8), d3 a small miss (0.7).
Dataset two_objects() {
  Dataset d;
  d.images = {{1, 100, 100, "1.jpg"}};
  d.category_ids = {1};
  d.category_names = {"thing"};
  d.annotations = {gt_box(1, 1, 1, {10, 10, 20, 20}), gt_box(2, 1, 1, {50, 50, 40, 40})};
  return d;
}
std::vector<Result> three_detections() {
  return {det_box(1, 1, {10, 10, 20, 20}, 0.9), det_box(1, 1, {50, 50, 40, 29}, 0.8),
          det_box(1, 1, {0, 60, 10, 10}, 0.7)};
}

// The hand computation (COCO's definitions):
// - IoU thresholds 0.50 … 0.70 (5 of 10): d1, d2 true, d3 false. Recall 1/2, 1, 1;
//   precision 1, 1, 2/3 → interpolated precision 1 at all 101 recall points: AP 1.
// - 0.75 … 0.95: d1 true, d2 and d3 false: recall 1/2 throughout, precision 1 up to
//   recall 0.50 (51 points), 0 beyond: AP 51/101.
// AP = (5·1 + 5·51/101)/10, AP50 = 1, AP75 = 51/101.
// Small (A only; B ignored, d2 ignored as a match of B or as a detection outside the
// range, d3 false): AP 1. Medium (B only; d1 matches the ignored A, d3 outside):
// AP 1 at 5 thresholds, 0 at 5: 0.5. Large: nothing counts, −1.
// AR1: d1 only, recall 1/2 at every threshold. AR10 = AR100: 1 at 5 thresholds, 1/2 at 5.
// ARs 1, ARm 1/2, ARl −1.
TEST(CocoEval, HandComputedExample) {
  const coco::Stats want = {(5 + 5 * 51.0 / 101) / 10, 1, 51.0 / 101, 1, 0.5, -1, 0.5, 0.75, 0.75, 1, 0.5, -1};
  for (const coco::IouType type : {coco::IouType::Box, coco::IouType::Mask}) {
    const coco::Stats got = coco::evaluate(two_objects(), three_detections(), type);
    for (int k = 0; k < 12; ++k) EXPECT_NEAR(got[k], want[k], 1e-12) << coco::kStatNames[k];
  }
}

TEST(CocoEval, PerfectPredictionGivesOne) {
  std::vector<Result> perfect = {det_box(1, 1, {10, 10, 20, 20}, 0.9), det_box(1, 1, {50, 50, 40, 40}, 0.8)};
  for (const coco::IouType type : {coco::IouType::Box, coco::IouType::Mask}) {
    const coco::Stats got = coco::evaluate(two_objects(), perfect, type);
    // AR1: one detection per image finds one of the two objects.
    const coco::Stats want = {1, 1, 1, 1, 1, -1, 0.5, 1, 1, 1, 1, -1};
    for (int k = 0; k < 12; ++k) EXPECT_DOUBLE_EQ(got[k], want[k]) << coco::kStatNames[k];
  }
}

// A crowd region: detections inside it match it (any number of them, by
// IoU over the detection's own area) and are ignored, neither true nor false.
// Image 2: crowd C (0,0,50,50), object D (60,60,30,30) small; e1 and e3 inside C,
// e2 = D. Every threshold: e1, e3 ignored, e2 true: AP 1, AR10 = AR100 = 1; AR1
// counts only the top detection, e1, which finds nothing: 0. Medium and large
// hold no counted object: −1.
TEST(CocoEval, CrowdsAreIgnored) {
  Dataset d;
  d.images = {{2, 100, 100, "2.jpg"}};
  d.category_ids = {1};
  d.category_names = {"thing"};
  d.annotations = {gt_box(3, 2, 1, {0, 0, 50, 50}, true), gt_box(4, 2, 1, {60, 60, 30, 30})};
  const std::vector<Result> r = {det_box(2, 1, {5, 5, 20, 20}, 0.95), det_box(2, 1, {25, 25, 20, 20}, 0.9),
                                 det_box(2, 1, {60, 60, 30, 30}, 0.6)};
  const coco::Stats got = coco::evaluate(d, r, coco::IouType::Box);
  const coco::Stats want = {1, 1, 1, 1, -1, -1, 0, 1, 1, 1, -1, -1};
  for (int k = 0; k < 12; ++k) EXPECT_DOUBLE_EQ(got[k], want[k]) << coco::kStatNames[k];
  // Were the crowd an ordinary object, e1 would be a false positive ranked first.
  d.annotations[0].crowd = false;
  EXPECT_LT(coco::evaluate(d, r, coco::IouType::Box)[0], 0.9);
}

// Categories are evaluated apart and averaged; a class with no objects and no
// detections does not count.
TEST(CocoEval, CategoriesAverage) {
  Dataset d = two_objects();
  d.category_ids = {1, 2, 3};
  d.category_names = {"a", "b", "c"};
  d.annotations.push_back(gt_box(5, 1, 2, {0, 0, 100, 100}));  // large, found exactly
  std::vector<Result> r = three_detections();
  r.push_back(det_box(1, 2, {0, 0, 100, 100}, 0.5));
  const coco::Stats got = coco::evaluate(d, r, coco::IouType::Box);
  EXPECT_NEAR(got[0], ((5 + 5 * 51.0 / 101) / 10 + 1) / 2, 1e-12);
  EXPECT_DOUBLE_EQ(got[5], 1);  // large: category 2 only
}

// Identifiers and sizes that no integer holds (a fuzzer's find: converting 1e104 is undefined) are an error.
TEST(CocoAnnotations, NumbersOutOfRangeAreRefused) {
  const std::string head = R"({"images": [{"id": 1, "file_name": "1.jpg", "height": 20, "width": 30}], )";
  for (const std::string& rest :
       {std::string(R"("categories": [{"id": 1.1e104}], "annotations": []})"),
        std::string(R"("categories": [{"id": 1}], "annotations": [{"id": 1e30, "image_id": 1, "category_id": 1,
           "bbox": [0, 0, 1, 1], "area": 1}]})"),
        std::string(R"("categories": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
           "bbox": [0, 0, 1, 1], "area": 1, "segmentation": {"size": [20, 30], "counts": [-5, 605]}}]})"),
        std::string(R"("categories": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
           "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 2.5}]})")}) {
    const std::string msg = test::input_error_of([&] { coco::parse_annotations(head + rest, "a.json"); });
    EXPECT_NE(msg.find("a.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("whole number"), std::string::npos) << msg;
  }
}

TEST(CocoResults, JsonHasCocoFields) {
  Detections det;
  det.bboxes = Tensor(DType::F32, {1, 4});
  const float b[4] = {1, 2, 11, 22};
  std::copy(b, b + 4, det.bboxes.f32());
  det.scores = Tensor(DType::F32, {1});
  det.scores.f32()[0] = 0.5f;
  det.labels = Tensor(DType::I64, {1});
  det.labels.data<std::int64_t>()[0] = 11;  // the 12th class: COCO category 13 (id 12 is unused)
  det.masks = Tensor(DType::U8, {1, 30, 20});
  std::fill(det.masks.data<std::uint8_t>(), det.masks.data<std::uint8_t>() + 600, 0);
  det.masks.data<std::uint8_t>()[5 * 20 + 3] = 1;
  const auto r = coco::to_results(det, 42, coco_category_ids());
  const nlohmann::json j = nlohmann::json::parse(coco::results_json(r));
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["image_id"], 42);
  EXPECT_EQ(j[0]["category_id"], 13);
  EXPECT_EQ(j[0]["bbox"], (nlohmann::json{1.0, 2.0, 10.0, 20.0}));
  EXPECT_EQ(j[0]["segmentation"]["size"], (nlohmann::json{30, 20}));
  const Rle back = coco::rle_from_string(j[0]["segmentation"]["counts"], 30, 20);
  EXPECT_EQ(coco::rle_decode(back), std::vector<std::uint8_t>(det.masks.data<std::uint8_t>(),
                                                              det.masks.data<std::uint8_t>() + 600));
}

}  // namespace
}  // namespace vrwkv::test
