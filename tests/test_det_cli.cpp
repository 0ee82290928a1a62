// The detection commands end to end: `detect` on a photo (picture at the
// photo's size, COCO results JSON), `eval --task det` on a COCO-layout set
// made from a run's own detections, `info`, `convert`, and the error contract
// (exit 2, one line, no output) for mismatched or hostile checkpoints, bad
// features and bad annotation files.
#include <filesystem>
#include <cstring>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "cli_fixture.hpp"
#include "common.hpp"
#include "model/checkpoint.hpp"
#include "vrwkv/coco.hpp"
#include "vrwkv/safetensors.hpp"

namespace vrwkv {
namespace {

namespace fs = std::filesystem;

const std::string kE2E = "det_e2e/det_e2e_s1_72x100_r96x133";
const std::string kHeads = "det/det_s1_rescale";
// The options the small end-to-end detector needs beyond its tensors (its json).
const std::string kE2EFlags =
    " --interaction-indexes 0-0,1-1,2-2,3-3 --deform-heads 4 --deform-points 4 --post-norm false ";

using DetCli = Cli;

// A PNG's width and height from its IHDR chunk.
std::pair<std::uint32_t, std::uint32_t> png_size(const std::string& path) {
  const std::string b = test::slurp(path);
  if (b.size() < 24) return {0, 0};
  const auto be = [&](std::size_t at) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(b[at])) << 24 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(b[at + 1])) << 16 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(b[at + 2])) << 8 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(b[at + 3]));
  };
  return {be(16), be(20)};
}

TEST_F(DetCli, DetectDrawsAtThePhotoSizeAndWritesCocoResults) {
  const std::string photo = test::golden("dense/preprocess/rocket.jpg");  // 640x427
  const CliResult r = run("detect --model " + test::golden(kE2E + ".pth") + kE2EFlags + "--threads 2 --score-thr 0 -o " +
                          path("out") + " --json " + path("out/results.json") + " " + photo);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("rocket.jpg: 640x427, 100 detections"), std::string::npos) << r.out;
  EXPECT_EQ(png_size(path("out/rocket.png")), std::make_pair(640u, 427u));
  const nlohmann::json j = nlohmann::json::parse(test::slurp(path("out/results.json")));
  ASSERT_EQ(j.size(), 100u);
  double last = 2;
  for (const auto& d : j) {
    EXPECT_EQ(d["image_id"], 1);  // not a COCO file name: its place on the command line
    EXPECT_GE(d["category_id"], 0);
    EXPECT_LT(d["category_id"], 5);  // 5 classes, no COCO ids
    ASSERT_EQ(d["bbox"].size(), 4u);
    EXPECT_GE(d["bbox"][2].get<double>(), 0);
    EXPECT_LE(d["score"].get<double>(), last);
    last = d["score"];
    EXPECT_EQ(d["segmentation"]["size"], (nlohmann::json{427, 640}));
    EXPECT_NO_THROW(coco::rle_from_string(d["segmentation"]["counts"], 427, 640));
  }
}

// A COCO set whose ground truth is a run's own detections: evaluating the
// same detector gives box AP 1 (each detection is its own object), and the
// command's numbers are the library's evaluation of the same files.
TEST_F(DetCli, EvalScoresTheDetectorsOwnDetectionsAsPerfect) {
  fs::create_directories(path("images"));
  fs::copy_file(test::golden("dense/preprocess/rocket.jpg"), path("images/000000000007.jpg"));
  const std::string model = test::golden(kE2E + ".pth") + kE2EFlags;
  CliResult r = run("detect --model " + model + "--threads 2 -o " + path("pictures") + " --json " +
                    path("results.json") + " " + path("images/000000000007.jpg"));
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json results = nlohmann::json::parse(test::slurp(path("results.json")));
  ASSERT_GT(results.size(), 10u);
  nlohmann::json ann{{"images", {{{"id", 7}, {"file_name", "000000000007.jpg"}, {"height", 427}, {"width", 640}}}},
                     {"categories", nlohmann::json::array()},
                     {"annotations", nlohmann::json::array()}};
  for (int k = 0; k < 5; ++k) ann["categories"].push_back({{"id", k}, {"name", "c" + std::to_string(k)}});
  int id = 1;
  for (const auto& d : results) {
    EXPECT_EQ(d["image_id"], 7);  // a COCO file name gives its id
    const coco::Rle m = coco::rle_from_string(d["segmentation"]["counts"], 427, 640);
    ann["annotations"].push_back({{"id", id++}, {"image_id", 7}, {"category_id", d["category_id"]},
                                  {"bbox", d["bbox"]}, {"area", coco::rle_area(m)}, {"iscrowd", 0},
                                  {"segmentation", d["segmentation"]}});
  }
  write("ann.json", ann.dump());
  r = run("eval --task det --model " + model + "--threads 2 --json --data coco:" + path("ann.json") + "," +
          path("images"));
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["images"], 1);
  EXPECT_DOUBLE_EQ(j["bbox"]["AP"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(j["bbox"]["AP50"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(j["bbox"]["AP75"].get<double>(), 1.0);
  // The masks: as the library evaluates the files (an empty mask matches nothing, as in pycocotools).
  const coco::Dataset gt = coco::read_annotations(path("ann.json"));
  std::vector<coco::Result> res;
  for (const auto& d : results)
    res.push_back({7, d["category_id"], {d["bbox"][0], d["bbox"][1], d["bbox"][2], d["bbox"][3]}, d["score"],
                   coco::rle_from_string(d["segmentation"]["counts"], 427, 640)});
  const coco::Stats mask = coco::evaluate(gt, res, coco::IouType::Mask);
  for (int k = 0; k < 12; ++k) EXPECT_NEAR(j["segm"][coco::kStatNames[k]].get<double>(), mask[k], 1e-6) << coco::kStatNames[k];
}

TEST_F(DetCli, InfoAndConvert) {
  CliResult r = run("info mask_rcnn_vrwkv_t");
  ASSERT_EQ(r.code, 0) << r.err;
  // DETECTION.md 8: backbone 8.4M + neck and heads 20.1M.
  EXPECT_NE(r.out.find("parameters    28506464 (28.5M"), std::string::npos) << r.out;
  r = run("info " + test::golden(kHeads + ".pth"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("neck and heads only"), std::string::npos) << r.out;
  // A converted detector keeps its settings and gives the same detections.
  r = run("convert " + test::golden(kE2E + ".pth") + kE2EFlags + path("det.safetensors"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string in = " --input " + test::golden(kE2E + ".safetensors");
  ASSERT_EQ(run("run --model " + path("det.safetensors") + in + " -o " + path("a.safetensors")).code, 0);
  ASSERT_EQ(run("run --model " + test::golden(kE2E + ".pth") + kE2EFlags + in + " -o " + path("b.safetensors")).code, 0);
  const TensorMap a = read_safetensors(path("a.safetensors")), b = read_safetensors(path("b.safetensors"));
  for (const char* k : {"det.bboxes", "det.scores", "det.labels", "mask.binary"}) {
    ASSERT_EQ(a.at(k).nbytes(), b.at(k).nbytes()) << k;
    EXPECT_EQ(std::memcmp(a.at(k).raw(), b.at(k).raw(), a.at(k).nbytes()), 0) << k;
  }
}

// The golden heads-only checkpoint with one tensor changed, written to `p` as safetensors.
std::string altered(const std::string& p, const std::function<void(TensorMap&)>& change) {
  LoadReport rep;
  TensorMap sd = model::read_checkpoint(test::golden(kHeads + ".pth"), rep);
  change(sd);
  write_safetensors(p, sd);
  return p;
}

TEST_F(DetCli, BadCheckpointsAreOneLineErrors) {
  const std::string features = " --from-features --input " + test::golden(kHeads + ".safetensors") + " -o " + path("o.st");
  struct Case {
    const char* file;
    std::function<void(TensorMap&)> change;
    const char* mention;
  };
  const std::vector<Case> cases = {
      {"narrow.safetensors", [](TensorMap& sd) { sd["roi_head.bbox_head.fc_reg.weight"] = Tensor(DType::F32, {20, 63}); },
       "roi_head.bbox_head.fc_reg.weight"},
      {"anchors.safetensors", [](TensorMap& sd) { sd["rpn_head.rpn_cls.weight"] = Tensor(DType::F32, {4, 16, 1, 1}); },
       "anchors"},
      {"missing.safetensors", [](TensorMap& sd) { sd.erase("roi_head.mask_head.conv_logits.weight"); },
       "roi_head.mask_head.conv_logits.weight"},
      {"nan.safetensors", [](TensorMap& sd) { sd.at("neck.fpn_convs.2.conv.weight").f32()[5] = NAN; }, "non-finite"},
      {"ints.safetensors",
       [](TensorMap& sd) { sd["neck.fpn_convs.0.conv.bias"] = Tensor(DType::I64, {16}); }, "neck.fpn_convs.0.conv.bias"},
  };
  for (const Case& c : cases) {
    const std::string p = altered(path(c.file), c.change);
    const CliResult r = run("run --model " + p + features);
    expect_input_error(r, c.mention);
    EXPECT_FALSE(fs::exists(path("o.st"))) << c.file;
  }
  // A file that is no checkpoint at all.
  write("junk.pth", std::string(300, 'x'));
  expect_input_error(run("run --model " + path("junk.pth") + features), "junk.pth");
  // Features of the wrong width for the neck.
  TensorMap f = read_safetensors(test::golden(kHeads + ".safetensors"));
  f["features.2"] = Tensor(DType::F32, {1, 31, 6, 10});
  write_safetensors(path("f.safetensors"), f);
  expect_input_error(run("run --model " + test::golden(kHeads + ".pth") + " --from-features --input " +
                         path("f.safetensors") + " -o " + path("o.st")),
                     "feature map 2");
  // Image metadata whose scale factor does not take the original size to the resized one.
  TensorMap m = read_safetensors(test::golden(kHeads + ".safetensors"));
  m["scale_factor"] = Tensor(DType::F32, {4});
  std::fill(m["scale_factor"].f32(), m["scale_factor"].f32() + 4, 1e-30f);
  write_safetensors(path("m.safetensors"), m);
  expect_input_error(run("run --model " + test::golden(kHeads + ".pth") + " --from-features --input " +
                         path("m.safetensors") + " -o " + path("o.st")),
                     "scale factor");
  // A heads-only detector cannot detect on a photo.
  expect_input_error(run("detect --model " + test::golden(kHeads + ".pth") + " -o " + path("d") + " " +
                         test::golden("dense/preprocess/rocket.jpg")),
                     "neck and heads");
  EXPECT_FALSE(fs::exists(path("o.st")));
}

TEST_F(DetCli, BadAnnotationFilesAreOneLineErrors) {
  const std::string model = " --model " + test::golden(kE2E + ".pth") + kE2EFlags;
  fs::create_directories(path("images"));
  write("broken.json", "{\"images\": [");
  expect_input_error(run("eval --task det" + model + "--data coco:" + path("broken.json") + "," + path("images")),
                     "broken.json");
  write("missing.json", R"({"images": [{"id": 3, "file_name": "absent.jpg", "height": 10, "width": 10}],
                            "categories": [{"id": 0}], "annotations": []})");
  expect_input_error(run("eval --task det" + model + "--data coco:" + path("missing.json") + "," + path("images")),
                     "absent.jpg");
  write("orphan.json", R"({"images": [], "categories": [{"id": 0}],
                           "annotations": [{"id": 1, "image_id": 9, "category_id": 0, "bbox": [0, 0, 1, 1], "area": 1}]})");
  expect_input_error(run("eval --task det" + model + "--data coco:" + path("orphan.json") + "," + path("images")),
                     "image 9");
  write("nofield.json", R"({"images": [{"id": 3, "height": 10, "width": 10}], "categories": [], "annotations": []})");
  expect_input_error(run("eval --task det" + model + "--data coco:" + path("nofield.json") + "," + path("images")),
                     "nofield.json");
  expect_input_error(run("eval --task det" + model + "--data coco:" + path("broken.json")), "coco:ANNOTATIONS.json,IMAGES_DIR");
}

}  // namespace
}  // namespace vrwkv
