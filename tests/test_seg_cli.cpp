// The segmentation commands end to end: `run` on a golden segmentor through
// the file contract, `segment` on photos, `eval --task seg` on a generated
// ADE20K-layout folder, `info`, and the error contract (exit 2, one line, no
// output) for bad checkpoints, impossible options and mismatched folders.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli_fixture.hpp"
#include "common.hpp"
#include "vrwkv/seg_data.hpp"
#include "vrwkv/seg_input.hpp"
#include "vrwkv/seg_metrics.hpp"
#include "vrwkv/segmentor.hpp"

namespace vrwkv {
namespace {

namespace fs = std::filesystem;

const std::string kWhole = "dense/dense_small_96x128_whole";
const std::string kSlide = "dense/dense_small_80x120_slide_postnorm";
// The options the small golden segmentors need beyond their tensors (their json).
const std::string kWholeFlags = " --interaction-indexes 0,1,2,3 --deform-heads 4 --deform-points 4 ";
const std::string kSlideFlags =
    " --interaction-indexes 0-1,2-3,4-5,6-7 --deform-heads 4 --deform-points 3 --post-norm true --mode slide "
    "--crop 64x64 --stride 43x43 ";

using SegCli = Cli;

TEST_F(SegCli, RunReproducesGoldenThroughTheFileContract) {
  for (const auto& [name, flags] : {std::pair{kWhole, kWholeFlags + "--mode whole "}, std::pair{kSlide, kSlideFlags}}) {
    const CliResult r = run("run --model " + test::golden(name + ".pth") + flags + "--input " +
                            test::golden(name + ".safetensors") + " --output " + path("out.safetensors"));
    ASSERT_EQ(r.code, 0) << r.err;
    const TensorMap out = read_safetensors(path("out.safetensors"));
    const TensorMap g = read_safetensors(test::golden(name + ".safetensors"));
    std::vector<std::string> keys = {"seg.logits"};
    if (name == kWhole) keys.insert(keys.end(), {"features.0", "features.3", "decode.logits", "aux.logits"});
    for (const std::string& k : keys) {
      ASSERT_TRUE(out.count(k)) << k;
      EXPECT_TRUE(test::close_to(out.at(k), g.at(k), 5e-5)) << name << " " << k;  // the bound
    }
    ASSERT_TRUE(out.count("seg.pred"));
    EXPECT_EQ(out.at("seg.pred").shape(), g.at("seg.pred").shape());
  }
}

TEST_F(SegCli, SegmentWritesBothPicturesAtThePhotoSize) {
  const std::string photo = test::golden("dense/preprocess/text.png");  // 448x172, grey
  const CliResult r = run("segment --model " + test::golden(kWhole + ".pth") + kWholeFlags + "--mode slide --crop 64x64 "
                          "--stride 64x64 --threads 2 -o " + path("out") + " " + photo);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("text.png: 448x172, class "), std::string::npos) << r.out;
  const seg::LabelMap map = seg::read_label_png(path("out/text.png"));
  EXPECT_EQ(map.height, 172);
  EXPECT_EQ(map.width, 448);
  for (std::uint8_t v : map.values) ASSERT_LT(v, 19);
  EXPECT_TRUE(fs::exists(path("out/text_overlay.png")));
  EXPECT_GT(fs::file_size(path("out/text_overlay.png")), 1000u);
  // A file that is not an image among photos: one line naming it, the others segmented, exit 2.
  write("notes.jpg", "not a picture");
  const CliResult bad = run("segment --model " + test::golden(kWhole + ".pth") + kWholeFlags + "--mode slide --crop 64x64 "
                            "--stride 64x64 --threads 2 -o " + path("out2") + " " + path("notes.jpg") + " " + photo);
  expect_input_error(bad, path("notes.jpg"));
  EXPECT_TRUE(fs::exists(path("out2/text.png")));
  EXPECT_FALSE(fs::exists(path("out2/notes.png")));
}

// A generated ADE20K folder: the annotations are the model's own predictions
// (shifted by one, as reduce_zero_label expects) with known changes, so the
// metrics printed must equal SegMetrics over the same pairs.
TEST_F(SegCli, EvalSegMatchesTheMetricsOfItsPredictions) {
  fs::create_directories(path("ade/images/validation"));
  fs::create_directories(path("ade/annotations/validation"));
  const Segmentor seg = Segmentor::load(
      test::golden(kWhole + ".pth"),
      {.post_norm = false, .interactions = std::vector<BlockRange>{{0, 0}, {1, 1}, {2, 2}, {3, 3}},
       .deform_heads = 4, .deform_points = 4, .wkv = {}, .wkv_chunks = {}});
  seg::SegMetrics want(19);
  const std::string photos[] = {test::golden("dense/preprocess/rocket.jpg"), test::golden("dense/preprocess/text.png")};
  SegmentOptions o;
  o.mode = SegmentOptions::Mode::Slide, o.crop_h = o.crop_w = 64, o.stride_h = o.stride_w = 64;
  for (int i = 0; i < 2; ++i) {
    const SegImage img = load_seg_image(photos[i]);
    o.out_h = img.ori_h, o.out_w = img.ori_w;
    const Tensor pred = Segmentor::predict(seg.infer(img.input, o, {2}));
    seg::LabelMap label{img.ori_h, img.ori_w, std::vector<std::uint8_t>(pred.numel())};
    std::vector<std::uint8_t> p(pred.numel());
    for (std::int64_t k = 0; k < pred.numel(); ++k) {
      p[k] = static_cast<std::uint8_t>(pred.data<std::int64_t>()[k]);
      label.values[k] = static_cast<std::uint8_t>(p[k] + 1);
      if (k % 7 == 0) label.values[k] = static_cast<std::uint8_t>((p[k] + 1) % 19 + 1);  // wrong, on purpose
      if (k % 11 == 0) label.values[k] = 0;                                                // ignored
    }
    want.add(p.data(), label.values.data(), pred.numel(), true);
    fs::copy_file(photos[i], path("ade/images/validation/" + std::string(i ? "b" : "a") + ".jpg"));
    seg::write_label_png(path("ade/annotations/validation/" + std::string(i ? "b" : "a") + ".png"), label);
  }
  // The pictures keep their format (a .jpg name over a PNG is still decoded by its bytes).
  const CliResult r = run("eval --task seg --data ade20k:" + path("ade") + " --model " + test::golden(kWhole + ".pth") +
                          kWholeFlags + "--mode slide --crop 64x64 --stride 64x64 --threads 2 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  const seg::SegMetrics::Result w = want.result();
  EXPECT_EQ(j.at("images"), 2);
  EXPECT_NEAR(j.at("aAcc").get<double>(), 100 * w.aAcc, 1e-9);
  EXPECT_NEAR(j.at("mIoU").get<double>(), 100 * w.mIoU, 1e-9);
  EXPECT_NEAR(j.at("mAcc").get<double>(), 100 * w.mAcc, 1e-9);
  EXPECT_LT(w.aAcc, 0.9);  // the changes are seen: 1/7 of the counted pixels are wrong
  EXPECT_GT(w.aAcc, 0.8);
}

// convert keeps the settings the tensors do not tell: the converted file runs
// with no flags and reproduces the golden.
TEST_F(SegCli, ConvertedSegmentorNeedsNoFlags) {
  ASSERT_EQ(run("convert " + test::golden(kSlide + ".pth") + " " + path("s.safetensors") + kSlideFlags).code, 0);
  const CliResult r = run("run --model " + path("s.safetensors") + " --mode slide --crop 64x64 --stride 43x43 --input " +
                          test::golden(kSlide + ".safetensors") + " --output " + path("out.safetensors"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(test::close_to(read_safetensors(path("out.safetensors")).at("seg.logits"),
                             read_safetensors(test::golden(kSlide + ".safetensors")).at("seg.logits"), 5e-5));
}

TEST_F(SegCli, InfoReportsASegmentor) {
  const CliResult r = run("info upernet_vrwkv_t");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("segmentation"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("36500380"), std::string::npos) << r.out;  // DENSE.md (e): 36,500,380 with both heads
  EXPECT_NE(r.out.find("0-2 3-5 6-8 9-11"), std::string::npos) << r.out;
}

TEST_F(SegCli, BadCheckpointsAndOptions) {
  const std::string out = " --output " + path("o.safetensors");
  const std::string input = " --input " + test::golden(kWhole + ".safetensors");
  TensorMap sd = read_safetensors(test::golden(kWhole + ".safetensors"));  // not a checkpoint: no spm
  // A checkpoint with a missing tensor, and one with a mis-shaped tensor.
  Segmentor seg = Segmentor::load(test::golden(kWhole + ".pth"),
                                  {.post_norm = false, .interactions = std::vector<BlockRange>{{0, 0}, {1, 1}, {2, 2}, {3, 3}},
                                   .deform_heads = 4, .deform_points = 4, .wkv = {}, .wkv_chunks = {}});
  TensorMap params = seg.parameters();
  for (const auto& [k, t] : seg.backbone().parameters()) params.emplace(k, t);
  TensorMap missing = params;
  missing.erase("backbone.interactions.2.extractor.ffn.fc2.weight");
  write_safetensors(path("missing.safetensors"), missing);
  expect_input_error(run("run --model " + path("missing.safetensors") + kWholeFlags + input + out),
                     "backbone.interactions.2.extractor.ffn.fc2.weight");
  TensorMap bad = params;
  bad["decode_head.fpn_bottleneck.conv.weight"] = Tensor(DType::F32, {32, 128, 3, 1});
  write_safetensors(path("bad.safetensors"), bad);
  expect_input_error(run("run --model " + path("bad.safetensors") + kWholeFlags + input + out),
                     "decode_head.fpn_bottleneck.conv.weight");
  // Heads and points that the value width does not allow; block ranges outside the depth.
  const std::string m = "run --model " + test::golden(kWhole + ".pth") + input + out;
  expect_input_error(run(m + " --interaction-indexes 0,1,2,3 --deform-heads 3 --deform-points 4"), "deform");
  expect_input_error(run(m + " --interaction-indexes 0,1,2,9 --deform-heads 4"), "9");
  expect_input_error(run(m + " --interaction-indexes 0,1,2 --deform-heads 4"), "interaction");
  // Slide options: stride 0, a crop that is not a multiple of 32, a stride beyond the crop.
  const std::string s = m + kWholeFlags + "--mode slide";
  expect_input_error(run(s + " --stride 0x43"), "--stride");
  expect_input_error(run(s + " --crop 48x64"), "--crop");
  expect_input_error(run(s + " --crop 64x64 --stride 96x96"), "--stride");
  // Whole mode needs a multiple of 32: the 80x120 input.
  expect_input_error(run("run --model " + test::golden(kWhole + ".pth") + kWholeFlags + "--mode whole --input " +
                         test::golden(kSlide + ".safetensors") + out),
                     "multiples of 32");
  EXPECT_FALSE(fs::exists(path("o.safetensors")));
}

TEST_F(SegCli, EvalFolderMismatch) {
  fs::create_directories(path("ade/images/validation"));
  fs::create_directories(path("ade/annotations/validation"));
  write("ade/images/validation/a.jpg", "x");
  write("ade/images/validation/b.jpg", "x");
  write("ade/annotations/validation/a.png", "x");
  expect_input_error(run("eval --task seg --data ade20k:" + path("ade") + " --model " + test::golden(kWhole + ".pth") +
                         kWholeFlags),
                     "b.jpg");
  expect_input_error(run("eval --task seg --data imagefolder:" + path("ade") + " --model " +
                         test::golden(kWhole + ".pth") + kWholeFlags),
                     "ade20k:");
}

}  // namespace
}  // namespace vrwkv
