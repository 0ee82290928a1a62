// Tests of the segmentation evaluation (src/seg/metrics.cpp, src/seg/ade20k.cpp):
// mmseg's intersect/union areas and mIoU on hand-computed maps, the ADE20K
// folder listing, label PNGs written here with libpng (every bit depth and
// colour type, damaged and forged files), and a generated ADE20K folder whose
// predictions disagree with the labels in known ways.
#include <png.h>

#include <array>
#include <cmath>
#include <csetjmp>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/seg_data.hpp"
#include "vrwkv/seg_metrics.hpp"

namespace vrwkv::seg {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

// ------------------------------------------------------------ helpers ----

// A fresh temporary directory, removed with its contents at the end of the test.
struct TempDir : vrwkv::test::TempDir {
  TempDir() : vrwkv::test::TempDir("vrwkv_test_seg") {}
};

void write_file(const fs::path& path, const Bytes& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// Asserts that `f` throws Error(Input) with a one-line message containing every one of `texts`.
void expect_input_error(const std::function<void()>& f, const std::vector<std::string>& texts) {
  try {
    f();
    ADD_FAILURE() << "no error (expected one with \"" << texts.front() << "\")";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Error::Kind::Input) << e.what();
    const std::string message = e.what();
    for (const std::string& t : texts) EXPECT_NE(message.find(t), std::string::npos) << message << "\nlacks: " << t;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

// Both NaN, or equal to the last bit.
::testing::AssertionResult same(double got, double want) {
  if ((std::isnan(got) && std::isnan(want)) || got == want) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << std::hexfloat << got << " != " << want;
}

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---------------------------------------------------- PNG writing -------

struct PngSpec {
  int width = 1, height = 1;
  int color_type = PNG_COLOR_TYPE_GRAY;
  int bit_depth = 8;
  bool interlaced = false;
  bool transparency = false;  // a tRNS chunk (palette: the first entries; grey: value 1)
};

int channels_of(int color_type) {
  switch (color_type) {
    case PNG_COLOR_TYPE_RGB:
      return 3;
    case PNG_COLOR_TYPE_RGB_ALPHA:
      return 4;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
      return 2;
    default:
      return 1;
  }
}

void append_to_bytes(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<Bytes*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + length);
}

// The libpng calls; false after a libpng error. No object with a destructor
// lives in this frame, so the longjmp skips nothing.
bool encode_steps(png_structp png, png_infop info, const PngSpec& spec, png_bytepp rows, Bytes* out) {
  if (setjmp(png_jmpbuf(png)) != 0) return false;
  png_set_write_fn(png, out, append_to_bytes, nullptr);
  png_set_IHDR(png, info, spec.width, spec.height, spec.bit_depth, spec.color_type,
               spec.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (spec.color_type == PNG_COLOR_TYPE_PALETTE) {
    // Colours unlike the indices, so that decoding colours would show.
    png_color palette[256];
    const int entries = 1 << spec.bit_depth;
    for (int i = 0; i < entries; ++i)
      palette[i] = {static_cast<png_byte>(255 - i), static_cast<png_byte>(i * 7), static_cast<png_byte>(i * 13)};
    png_set_PLTE(png, info, palette, entries);
    if (spec.transparency) {
      png_byte alpha[2] = {0, 128};
      png_set_tRNS(png, info, alpha, 2, nullptr);
    }
  } else if (spec.transparency) {
    png_color_16 grey{};
    grey.gray = 1;
    png_set_tRNS(png, info, nullptr, 0, &grey);
  }
  png_write_info(png, info);
  if (spec.bit_depth < 8) png_set_packing(png);  // rows hold one sample a byte
  png_write_image(png, rows);
  png_write_end(png, nullptr);
  return true;
}

// A PNG of `samples`: one byte a sample for depths up to 8 (unpacked), two
// big-endian bytes for 16.
Bytes encode_png(const PngSpec& spec, const Bytes& samples) {
  const std::size_t row_bytes =
      static_cast<std::size_t>(spec.width) * channels_of(spec.color_type) * (spec.bit_depth == 16 ? 2 : 1);
  if (samples.size() != row_bytes * spec.height) throw std::runtime_error("encode_png: wrong sample count");
  Bytes copy(samples);
  std::vector<png_bytep> rows(spec.height);
  for (int y = 0; y < spec.height; ++y) rows[y] = copy.data() + y * row_bytes;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  Bytes out;
  const bool ok = encode_steps(png, info, spec, rows.data(), &out);
  png_destroy_write_struct(&png, &info);
  if (!ok) throw std::runtime_error("encode_png: libpng error");
  return out;
}

Bytes random_bytes(std::size_t n, int lo, int hi, std::mt19937& rng) {
  std::uniform_int_distribution<int> d(lo, hi);
  Bytes v(n);
  for (auto& x : v) x = static_cast<std::uint8_t>(d(rng));
  return v;
}

// The CRC of a PNG chunk (type and data), to forge headers.
std::uint32_t png_crc(const std::uint8_t* p, std::size_t n) {
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return c ^ 0xFFFFFFFFu;
}

void put_u32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::uint8_t>(v >> (24 - 8 * i));
}

// `png` with its IHDR's width and height replaced (and the chunk's CRC fixed).
Bytes forge_size(Bytes png, std::uint32_t width, std::uint32_t height) {
  // Signature (8), IHDR length (4), "IHDR" at 12, width at 16, height at 20, CRC at 29.
  put_u32(&png[16], width);
  put_u32(&png[20], height);
  put_u32(&png[29], png_crc(&png[12], 17));
  return png;
}

LabelMap decode(const Bytes& png, const std::string& name = "label.png") {
  return decode_label_png(png.data(), png.size(), name);
}

// ==================================================== SegMetrics ====

// Three classes, no reduce_zero_label. Ten pixels:
//   label: 0 0 0 1 1 2 2 2 255 0
//   pred:  0 0 1 1 2 2 2 0 1   0
// Pixel 8 (label 255) is dropped from every count, its prediction too. The
// nine (label, pred) pairs left: (0,0) (0,0) (0,1) (1,1) (1,2) (2,2) (2,2) (2,0) (0,0).
//   area_label     = [4, 2, 3]  (class 0 at pixels 0, 1, 2, 9; 1 at 3, 4; 2 at 5, 6, 7)
//   area_pred      = [4, 2, 3]  (pred 0 at 0, 1, 7, 9; 1 at 2, 3; 2 at 4, 5, 6)
//   area_intersect = [3, 1, 2]  (pixels 0, 1, 9; 3; 5, 6)
//   area_union     = pred + label - intersect = [5, 3, 4]
//   IoU = [3/5, 1/3, 2/4], Acc = [3/4, 1/2, 2/3], aAcc = 6/9.
TEST(SegMetrics, HandComputedThreeClasses) {
  const Bytes label = {0, 0, 0, 1, 1, 2, 2, 2, 255, 0};
  const Bytes pred = {0, 0, 1, 1, 2, 2, 2, 0, 1, 0};
  SegMetrics m(3);
  m.add(pred.data(), label.data(), 10, /*reduce_zero_label=*/false);
  EXPECT_EQ(m.area_label(), (std::vector<std::int64_t>{4, 2, 3}));
  EXPECT_EQ(m.area_pred(), (std::vector<std::int64_t>{4, 2, 3}));
  EXPECT_EQ(m.area_intersect(), (std::vector<std::int64_t>{3, 1, 2}));
  EXPECT_EQ(m.area_union(), (std::vector<std::int64_t>{5, 3, 4}));
  const SegMetrics::Result r = m.result();
  EXPECT_EQ(r.images, 1);
  EXPECT_EQ(r.IoU, (std::vector<double>{3.0 / 5, 1.0 / 3, 2.0 / 4}));
  EXPECT_EQ(r.Acc, (std::vector<double>{3.0 / 4, 1.0 / 2, 2.0 / 3}));
  EXPECT_EQ(r.aAcc, 6.0 / 9);
  // numpy sums fewer than 8 entries in order, from 0.
  EXPECT_EQ(r.mIoU, (3.0 / 5 + 1.0 / 3 + 2.0 / 4) / 3);
  EXPECT_EQ(r.mAcc, (3.0 / 4 + 1.0 / 2 + 2.0 / 3) / 3);

  // A second image: the areas add up, the metrics come from the totals.
  //   label: 2 2 1, pred: 2 1 1 -> label [0,1,2], pred [0,2,1], intersect [0,1,1]
  const Bytes label2 = {2, 2, 1}, pred2 = {2, 1, 1};
  m.add(pred2.data(), label2.data(), 3, false);
  EXPECT_EQ(m.area_label(), (std::vector<std::int64_t>{4, 3, 5}));
  EXPECT_EQ(m.area_pred(), (std::vector<std::int64_t>{4, 4, 4}));
  EXPECT_EQ(m.area_intersect(), (std::vector<std::int64_t>{3, 2, 3}));
  EXPECT_EQ(m.area_union(), (std::vector<std::int64_t>{5, 5, 6}));
  const SegMetrics::Result r2 = m.result();
  EXPECT_EQ(r2.images, 2);
  EXPECT_EQ(r2.IoU, (std::vector<double>{3.0 / 5, 2.0 / 5, 3.0 / 6}));
  EXPECT_EQ(r2.aAcc, 8.0 / 12);
}

// Four classes. Class 2 is predicted but absent from the ground truth: its
// union is 2, so IoU = 0/2 = 0 (counted in mIoU), Acc = 0/0 = NaN. Class 3 is
// neither in the ground truth nor predicted: IoU and Acc are 0/0 = NaN, left
// out of both means. As mmseg's torch division and np.nanmean.
//   label: 0 0 1 1, pred: 0 2 1 2
//   area_label [2,2,0,0], area_pred [1,1,2,0], intersect [1,1,0,0], union [2,2,2,0]
TEST(SegMetrics, ClassesWithoutGroundTruth) {
  const Bytes label = {0, 0, 1, 1}, pred = {0, 2, 1, 2};
  SegMetrics m(4);
  m.add(pred.data(), label.data(), 4, false);
  EXPECT_EQ(m.area_union(), (std::vector<std::int64_t>{2, 2, 2, 0}));
  const SegMetrics::Result r = m.result();
  EXPECT_TRUE(same(r.IoU[0], 0.5));
  EXPECT_TRUE(same(r.IoU[1], 0.5));
  EXPECT_TRUE(same(r.IoU[2], 0.0));
  EXPECT_TRUE(same(r.IoU[3], kNaN));
  EXPECT_TRUE(same(r.Acc[0], 0.5));
  EXPECT_TRUE(same(r.Acc[1], 0.5));
  EXPECT_TRUE(same(r.Acc[2], kNaN));
  EXPECT_TRUE(same(r.Acc[3], kNaN));
  EXPECT_EQ(r.mIoU, (0.5 + 0.5 + 0.0) / 3);
  EXPECT_EQ(r.mAcc, (0.5 + 0.5) / 2);
  EXPECT_EQ(r.aAcc, 2.0 / 4);
}

// ADE20K's reduce_zero_label: raw 0 is ignored, raw v in 1..K is class v-1,
// 255 stays ignored. Three classes:
//   raw:   0 1 2 3 255 1 0
//   class: - 0 1 2  -  0 -
//   pred:  2 0 1 2  0  1 0
// Counted pairs (class, pred): (0,0) (1,1) (2,2) (0,1).
//   area_label [2,1,1], area_pred [1,2,1], intersect [1,1,1], union [2,2,1]
TEST(SegMetrics, ReduceZeroLabel) {
  const Bytes raw = {0, 1, 2, 3, 255, 1, 0}, pred = {2, 0, 1, 2, 0, 1, 0};
  SegMetrics m(3);
  m.add(pred.data(), raw.data(), 7);  // reduce_zero_label is the default
  EXPECT_EQ(m.area_label(), (std::vector<std::int64_t>{2, 1, 1}));
  EXPECT_EQ(m.area_pred(), (std::vector<std::int64_t>{1, 2, 1}));
  EXPECT_EQ(m.area_intersect(), (std::vector<std::int64_t>{1, 1, 1}));
  EXPECT_EQ(m.area_union(), (std::vector<std::int64_t>{2, 2, 1}));
  const SegMetrics::Result r = m.result();
  EXPECT_EQ(r.IoU, (std::vector<double>{0.5, 0.5, 1.0}));
  EXPECT_EQ(r.Acc, (std::vector<double>{0.5, 1.0, 1.0}));
  EXPECT_EQ(r.aAcc, 3.0 / 4);

  // Without the shift the same raw map has labels 0..3 and 255: 3 is not a class of 3.
  SegMetrics plain(3);
  expect_input_error([&] { plain.add(pred.data(), raw.data(), 7, false); },
                     {"label 3 is not a class of the 3", "pixel 3"});
}

// Pixels labelled 255 count nowhere: not in the label area, nor (whatever
// their prediction) in the prediction area; a map of only 255 adds nothing.
TEST(SegMetrics, IgnoreIndexCountsNowhere) {
  const Bytes label = {255, 255, 1, 255}, pred = {0, 1, 1, 1};
  SegMetrics m(2);
  m.add(pred.data(), label.data(), 4, false);
  EXPECT_EQ(m.area_label(), (std::vector<std::int64_t>{0, 1}));
  EXPECT_EQ(m.area_pred(), (std::vector<std::int64_t>{0, 1}));
  EXPECT_EQ(m.area_intersect(), (std::vector<std::int64_t>{0, 1}));
  EXPECT_EQ(m.area_union(), (std::vector<std::int64_t>{0, 1}));
  const SegMetrics::Result r = m.result();
  EXPECT_TRUE(same(r.IoU[0], kNaN));
  EXPECT_EQ(r.IoU[1], 1.0);
  EXPECT_EQ(r.mIoU, 1.0);
  EXPECT_EQ(r.aAcc, 1.0);

  // With reduce_zero_label, 0 and 255 are both ignored.
  const Bytes none = {0, 255, 0}, any = {1, 0, 1};
  SegMetrics z(2);
  z.add(any.data(), none.data(), 3);
  EXPECT_EQ(z.area_pred(), (std::vector<std::int64_t>{0, 0}));
  EXPECT_EQ(z.images(), 1);
  const SegMetrics::Result rz = z.result();
  EXPECT_TRUE(same(rz.aAcc, kNaN));  // 0 / 0
  EXPECT_TRUE(same(rz.mIoU, kNaN));  // nanmean of nothing but NaN
  EXPECT_TRUE(same(rz.mAcc, kNaN));
}

TEST(SegMetrics, BadLabelsAndPredictions) {
  // ADE20K: 150 classes are raw 1..150; raw 200 would be class 199.
  SegMetrics m(150);
  const Bytes good_label = {1, 150, 0, 255}, good_pred = {0, 149, 3, 7};
  m.add(good_pred.data(), good_label.data(), 4);
  const Bytes label = {1, 2, 200, 151}, pred = {0, 1, 2, 3};
  expect_input_error([&] { m.add(pred.data(), label.data(), 4); },
                     {"label 200 is not a class of the 150", "pixel 2", "reduce_zero_label"});
  const Bytes label151 = {151};
  expect_input_error([&] { m.add(pred.data(), label151.data(), 1); }, {"label 151 is not a class of the 150"});
  const Bytes label150 = {150}, pred150 = {150};
  expect_input_error([&] { m.add(pred150.data(), label150.data(), 1); }, {"prediction 150 is not a class of the 150"});
  // A prediction out of range is refused even where the label is ignored.
  const Bytes ignored = {0};
  expect_input_error([&] { m.add(pred150.data(), ignored.data(), 1); }, {"prediction 150"});
  expect_input_error([&] { m.add(pred.data(), label.data(), -1); }, {"-1 pixels"});
  expect_input_error([&] { m.add(nullptr, label.data(), 4); }, {"no prediction map"});
  // A refused image adds nothing.
  EXPECT_EQ(m.images(), 1);
  EXPECT_EQ(m.area_label()[0], 1);
  EXPECT_EQ(m.area_label()[149], 1);
  std::int64_t total = 0;
  for (std::int64_t a : m.area_pred()) total += a;
  EXPECT_EQ(total, 2);
  // Nothing at all is fine.
  m.add(nullptr, nullptr, 0);
  EXPECT_EQ(m.images(), 2);

  expect_input_error([] { SegMetrics(0); }, {"0 classes", "1..255"});
  expect_input_error([] { SegMetrics(256); }, {"256 classes"});
  // 255 classes: with the shift raw 1..254 are classes 0..253; class 254 can only be predicted.
  SegMetrics ok(255);
  const Bytes l = {254, 255}, p = {253, 254};
  ok.add(p.data(), l.data(), 2);
  EXPECT_EQ(ok.area_intersect()[253], 1);
  EXPECT_EQ(ok.area_pred()[254], 0);
}

TEST(SegMetrics, MergeEqualsSequentialAdds) {
  std::mt19937 rng(5);
  SegMetrics all(7), a(7), b(7);
  for (int i = 0; i < 6; ++i) {
    const Bytes label = random_bytes(500, 0, 7, rng), pred = random_bytes(500, 0, 6, rng);
    all.add(pred.data(), label.data(), 500);
    (i % 2 ? a : b).add(pred.data(), label.data(), 500);
  }
  a.merge(b);
  EXPECT_EQ(a.images(), 6);
  EXPECT_EQ(a.area_intersect(), all.area_intersect());
  EXPECT_EQ(a.area_union(), all.area_union());
  EXPECT_EQ(a.area_pred(), all.area_pred());
  EXPECT_EQ(a.area_label(), all.area_label());
  SegMetrics other(8);
  expect_input_error([&] { a.merge(other); }, {"8 classes into 7"});
}

// The means sum the per-class values in numpy's pairwise order (8
// accumulators over blocks of up to 128, halves beyond that), which for 150
// classes can differ from a running sum in the last bits. Class c here has
// Acc = 1/(c+2) (c+2 pixels, one of them predicted right); class 7 has no
// ground truth.
TEST(SegMetrics, MeansSumInNumpyOrder) {
  const int k = 150;
  Bytes label, pred;
  for (int c = 0; c < k; ++c) {
    if (c == 7) continue;
    for (int i = 0; i < c + 2; ++i) {
      label.push_back(static_cast<std::uint8_t>(c + 1));  // reduce_zero_label: raw c+1 is class c
      pred.push_back(static_cast<std::uint8_t>(i == 0 ? c : (c + 1) % k));
    }
  }
  SegMetrics m(k);
  m.add(pred.data(), label.data(), static_cast<std::int64_t>(label.size()));
  const SegMetrics::Result r = m.result();
  for (int c = 0; c < k; ++c) ASSERT_TRUE(same(r.Acc[c], c == 7 ? kNaN : 1.0 / (c + 2))) << "class " << c;
  // np.nanmean of these 150 values (numpy 1.24): the pairwise sum of halves
  // of 72 and 78 entries, each summed with 8 accumulators, NaN taken as 0.
  const double want = 0x1.ed5afe96440a8p-6;
  std::vector<double> acc(r.Acc);
  acc[7] = 0;
  EXPECT_TRUE(same(r.mAcc, want));
  double running = 0;
  for (double x : acc) running += x;
  // The case is chosen so that the order shows (else the check above proves little).
  EXPECT_NE(running / 149, want);
}

// ======================================================== Ade20k ====

TEST(Ade20k, LabelPngValues) {
  std::mt19937 rng(11);
  const int w = 13, h = 7;
  const Bytes v8 = random_bytes(w * h, 0, 255, rng);
  for (bool interlaced : {false, true}) {
    for (int type : {PNG_COLOR_TYPE_PALETTE, PNG_COLOR_TYPE_GRAY}) {
      for (bool trns : {false, true}) {
        SCOPED_TRACE(testing::Message() << "type " << type << " interlaced " << interlaced << " tRNS " << trns);
        const LabelMap m = decode(encode_png({w, h, type, 8, interlaced, trns}, v8));
        EXPECT_EQ(m.height, h);
        EXPECT_EQ(m.width, w);
        EXPECT_EQ(m.values, v8);  // the palette indices, not the colours
      }
    }
  }
  for (int depth : {1, 2, 4}) {
    const Bytes raw = random_bytes(w * h, 0, (1 << depth) - 1, rng);
    for (bool interlaced : {false, true}) {
      SCOPED_TRACE(testing::Message() << "depth " << depth << " interlaced " << interlaced);
      // Palette: the indices as they are.
      EXPECT_EQ(decode(encode_png({w, h, PNG_COLOR_TYPE_PALETTE, depth, interlaced}, raw)).values, raw);
      // Grey: Pillow's 1-bit mode reads as 0/1, 2- and 4-bit grey is scaled to 0..255.
      Bytes want(raw);
      for (auto& x : want) x = static_cast<std::uint8_t>(depth == 1 ? x : depth == 2 ? x * 85 : x * 17);
      EXPECT_EQ(decode(encode_png({w, h, PNG_COLOR_TYPE_GRAY, depth, interlaced}, raw)).values, want);
    }
  }
}

TEST(Ade20k, LabelPngRefused) {
  std::mt19937 rng(12);
  // A 5x4 PNG of random samples of that colour type and depth.
  const auto png_of = [&](int color_type, int bit_depth) {
    const std::size_t n = 5 * 4 * channels_of(color_type) * (bit_depth == 16 ? 2 : 1);
    return encode_png({5, 4, color_type, bit_depth}, random_bytes(n, 0, 255, rng));
  };
  expect_input_error([&] { decode(png_of(PNG_COLOR_TYPE_GRAY, 16), "a.png"); },
                     {"a.png", "16-bit greyscale PNG", "expected a label image"});
  expect_input_error([&] { decode(png_of(PNG_COLOR_TYPE_RGB, 8), "b.png"); },
                     {"b.png", "8-bit RGB PNG", "palette or greyscale"});
  expect_input_error([&] { decode(png_of(PNG_COLOR_TYPE_RGB_ALPHA, 8)); }, {"8-bit RGBA PNG"});
  expect_input_error([&] { decode(png_of(PNG_COLOR_TYPE_GRAY_ALPHA, 8)); }, {"8-bit greyscale+alpha PNG"});
  expect_input_error([&] { decode(png_of(PNG_COLOR_TYPE_RGB, 16)); }, {"16-bit RGB PNG"});
  expect_input_error([] { decode(Bytes{}, "e.png"); }, {"e.png", "empty file"});
  expect_input_error([] { decode(Bytes{0xFF, 0xD8, 0xFF, 0xE0, 0, 0}, "j.png"); }, {"j.png", "a JPEG"});
  expect_input_error([] { decode(Bytes{'G', 'I', 'F', '8', '9', 'a', 0, 0, 0}, "g.png"); }, {"g.png", "not a PNG"});
  expect_input_error([] { read_label_png("/nonexistent/x.png"); }, {"/nonexistent/x.png", "cannot open"});
}

// Every truncation and a byte flipped in every position: an error or a
// complete map, never a crash (AddressSanitizer builds check the reads).
TEST(Ade20k, LabelPngDamaged) {
  std::mt19937 rng(13);
  const int w = 40, h = 30;
  for (bool interlaced : {false, true}) {
    const Bytes values = random_bytes(w * h, 0, 255, rng);
    const Bytes png = encode_png({w, h, PNG_COLOR_TYPE_PALETTE, 8, interlaced}, values);
    for (std::size_t n = 1; n < png.size(); ++n) {
      const Bytes cut(png.begin(), png.begin() + n);
      SCOPED_TRACE(testing::Message() << "cut at " << n << " of " << png.size());
      expect_input_error([&] { decode(cut, "cut.png"); }, {"cut.png"});
    }
    for (std::size_t i = 8; i < png.size(); ++i) {
      Bytes bad(png);
      bad[i] ^= 0x5A;
      try {
        const LabelMap m = decode(bad);
        EXPECT_EQ(m.values.size(), static_cast<std::size_t>(m.height * m.width));
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), Error::Kind::Input);
      }
    }
  }
  // A byte of image data flipped: the chunk's CRC no longer matches.
  const Bytes png = encode_png({w, h, PNG_COLOR_TYPE_GRAY, 8}, random_bytes(w * h, 0, 255, rng));
  Bytes bad(png);
  bad[png.size() - 20] ^= 1;  // inside the last IDAT (IEND is the last 12 bytes)
  expect_input_error([&] { decode(bad, "crc.png"); }, {"crc.png", "invalid PNG data"});
}

TEST(Ade20k, LabelPngForgedSizes) {
  std::mt19937 rng(14);
  const Bytes png = encode_png({4, 4, PNG_COLOR_TYPE_GRAY, 8}, random_bytes(16, 0, 255, rng));
  ASSERT_EQ(decode(forge_size(png, 4, 4)).values.size(), 16u);  // the forger keeps a valid file valid
  expect_input_error([&] { decode(forge_size(png, 65536, 1), "wide.png"); }, {"wide.png", "too large"});
  expect_input_error([&] { decode(forge_size(png, 60000, 60000), "big.png"); }, {"big.png", "too large"});
  expect_input_error([&] { decode(forge_size(png, 10000, 10000), "short.png"); }, {"short.png", "truncated"});
  expect_input_error([&] { decode(forge_size(png, 0, 4), "empty.png"); }, {"empty.png"});
}

// An ADE20K folder whose image files are empty placeholders (listing reads no file).
void make_layout(const fs::path& root, const std::vector<std::string>& images,
                 const std::vector<std::string>& annotations, const std::string& split = "validation") {
  fs::create_directories(root / "images" / split);
  fs::create_directories(root / "annotations" / split);
  for (const std::string& name : images) write_file(root / "images" / split / name, {});
  for (const std::string& name : annotations) write_file(root / "annotations" / split / name, {});
}

TEST(Ade20k, ListingPairsAndSorts) {
  TempDir t;
  // Written out of order; "b-1" sorts before "b.x" and "b" by file name ('-' < '.').
  make_layout(t.path, {"c.jpg", "b.jpg", "b-1.jpg", "a.jpg"}, {"b-1.png", "a.png", "c.png", "b.png"});
  write_file(t.path / "images/validation/notes.txt", {});  // other suffixes are skipped
  write_file(t.path / "annotations/validation/a.png.bak", {});
  write_file(t.path / "images/validation/upper.JPG", {});        // suffixes match in lower case, as mmseg
  fs::create_directories(t.path / "images/validation/sub.jpg");  // folders are not images
  const std::vector<SegSample> s = list_ade20k(t.path.string());
  ASSERT_EQ(s.size(), 4u);
  const fs::path im = t.path / "images/validation", an = t.path / "annotations/validation";
  const std::vector<std::string> order = {"a", "b-1", "b", "c"};
  for (std::size_t i = 0; i < order.size(); ++i) {
    EXPECT_EQ(s[i].image, (im / (order[i] + ".jpg")).string());
    EXPECT_EQ(s[i].annotation, (an / (order[i] + ".png")).string());
  }
  make_layout(t.path, {"t2.jpg", "t1.jpg"}, {"t1.png", "t2.png"}, "training");
  const std::vector<SegSample> train = list_ade20k(t.path.string(), "training");
  ASSERT_EQ(train.size(), 2u);
  EXPECT_EQ(train[0].annotation, (t.path / "annotations/training/t1.png").string());
}

TEST(Ade20k, ListingErrors) {
  TempDir t;
  const std::string root = t.path.string();
  expect_input_error([&] { list_ade20k(root + "/missing"); },
                     {root + "/missing", "not a folder", "images/validation/*.jpg"});
  expect_input_error([&] { list_ade20k(root); }, {root + "/images/validation", "no such folder"});
  fs::create_directories(t.path / "images/validation");
  expect_input_error([&] { list_ade20k(root); },
                     {root + "/annotations/validation", "no such folder", "annotations/validation/*.png"});
  fs::create_directories(t.path / "annotations/validation");
  expect_input_error([&] { list_ade20k(root); }, {root + "/images/validation", "no .jpg images"});
  make_layout(t.path, {"x3.jpg", "x1.jpg", "x2.jpg", "x4.jpg"}, {"x2.png", "x4.png"});
  expect_input_error([&] { list_ade20k(root); }, {root + "/annotations/validation", "no annotation x1.png",
                                                  root + "/images/validation/x1.jpg", "2 of the 4 images have none"});
  make_layout(t.path, {}, {"x1.png", "x3.png", "y.png", "w.png"});
  expect_input_error([&] { list_ade20k(root); },
                     {root + "/images/validation", "no image w.jpg", root + "/annotations/validation/w.png",
                      "2 of the 6 annotations have none"});
  fs::remove(t.path / "annotations/validation/w.png");
  expect_input_error([&] { list_ade20k(root); }, {"no image y.jpg", "1 of the 5 annotations has none"});
  write_file(t.path / "images/training", {});  // a file where the folder should be
  expect_input_error([&] { list_ade20k(root, "training"); }, {root + "/images/training", "not a folder"});
  expect_input_error([&] { list_ade20k(root, ""); }, {"empty split"});

  const SegSample sample{"img.jpg", "ann.png"};
  LabelMap label;
  label.height = 4;
  label.width = 6;
  label.values.assign(24, 1);
  check_annotation_size(sample, label, 4, 6);
  expect_input_error([&] { check_annotation_size(sample, label, 6, 4); },
                     {"ann.png", "6x4 pixels", "img.jpg", "4x6 pixels", "same size"});
}

// A generated ADE20K folder: 5 classes (raw 1..5, plus 0 and 255 ignored) in
// label PNGs of four kinds. The prediction of every pixel is its class,
// except that in image i the first flip[i] pixels of class from[i] are
// predicted as to[i]; ignored pixels get a random prediction. Per image, with
// n[c] the class counts the generator made:
//   intersect[c] += n[c] - (c == from ? flip : 0)
//   pred[c]      += n[c] - (c == from ? flip : 0) + (c == to ? flip : 0)
//   label[c]     += n[c]
// Class 3 (raw 4) never occurs in the ground truth but is predicted in image
// 1 (IoU 0, Acc NaN); class 4 (raw 5) occurs nowhere (IoU and Acc NaN).
TEST(Ade20k, GeneratedFolderMetrics) {
  TempDir t;
  constexpr int kClasses = 5;
  struct Case {
    int width, height, color_type, bit_depth;
    bool interlaced;
    int from, to, flip;
  };
  const std::vector<Case> cases = {
      {37, 23, PNG_COLOR_TYPE_PALETTE, 8, false, 0, 1, 17},
      {16, 40, PNG_COLOR_TYPE_GRAY, 8, false, 2, 3, 9},  // predicts the absent class 3
      {25, 25, PNG_COLOR_TYPE_PALETTE, 4, true, 1, 0, 30},
      {50, 9, PNG_COLOR_TYPE_GRAY, 8, true, 0, 2, 0},
  };
  // The raw values drawn: 0 (ignored), 1..3 (classes 0..2), 255 (ignored; not in the 4-bit palette).
  std::mt19937 rng(21);
  std::vector<Bytes> labels(cases.size());
  std::vector<std::array<std::int64_t, kClasses>> counts(cases.size());
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    std::uniform_int_distribution<int> d(0, c.bit_depth == 4 ? 3 : 4);
    labels[i].resize(c.width * c.height);
    counts[i].fill(0);
    for (auto& x : labels[i]) {
      const int r = d(rng);
      x = static_cast<std::uint8_t>(r == 4 ? 255 : r);
      if (r >= 1 && r <= 3) ++counts[i][r - 1];
    }
  }
  // Written in reverse order: the listing sorts.
  for (std::size_t j = cases.size(); j-- > 0;) {
    const Case& c = cases[j];
    const std::string name = "ADE_val_0000000" + std::to_string(j + 1);
    write_file(t.path / "annotations/validation" / (name + ".png"),
               encode_png({c.width, c.height, c.color_type, c.bit_depth, c.interlaced}, labels[j]));
    write_file(t.path / "images/validation" / (name + ".jpg"), {});
  }

  const std::vector<SegSample> samples = list_ade20k(t.path.string());
  ASSERT_EQ(samples.size(), cases.size());
  SegMetrics m(kClasses);
  std::array<std::int64_t, kClasses> inter{}, pred_area{}, label_area{};
  std::uniform_int_distribution<int> any_class(0, kClasses - 1);
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const Case& c = cases[i];
    EXPECT_EQ(fs::path(samples[i].annotation).filename(), "ADE_val_0000000" + std::to_string(i + 1) + ".png");
    const LabelMap label = read_label_png(samples[i].annotation);
    check_annotation_size(samples[i], label, c.height, c.width);
    ASSERT_EQ(label.values, labels[i]);
    Bytes pred(label.values.size());
    int flipped = 0;
    for (std::size_t p = 0; p < pred.size(); ++p) {
      const int v = label.values[p];
      if (v == 0 || v == 255) {
        pred[p] = static_cast<std::uint8_t>(any_class(rng));
      } else if (v - 1 == c.from && flipped < c.flip) {
        pred[p] = static_cast<std::uint8_t>(c.to);
        ++flipped;
      } else {
        pred[p] = static_cast<std::uint8_t>(v - 1);
      }
    }
    ASSERT_EQ(flipped, c.flip) << "image " << i << " has too few pixels of class " << c.from;
    m.add(pred.data(), label.values.data(), static_cast<std::int64_t>(pred.size()));
    for (int k = 0; k < kClasses; ++k) {
      const std::int64_t lost = k == c.from ? c.flip : 0, gained = k == c.to ? c.flip : 0;
      inter[k] += counts[i][k] - lost;
      pred_area[k] += counts[i][k] - lost + gained;
      label_area[k] += counts[i][k];
    }
  }
  std::vector<double> iou(kClasses), acc(kClasses);
  std::int64_t total_inter = 0, total_label = 0;
  for (int k = 0; k < kClasses; ++k) {
    EXPECT_EQ(m.area_intersect()[k], inter[k]) << "class " << k;
    EXPECT_EQ(m.area_pred()[k], pred_area[k]) << "class " << k;
    EXPECT_EQ(m.area_label()[k], label_area[k]) << "class " << k;
    EXPECT_EQ(m.area_union()[k], pred_area[k] + label_area[k] - inter[k]) << "class " << k;
    const std::int64_t uni = pred_area[k] + label_area[k] - inter[k];
    iou[k] = uni == 0 ? kNaN : static_cast<double>(inter[k]) / uni;
    acc[k] = label_area[k] == 0 ? kNaN : static_cast<double>(inter[k]) / label_area[k];
    total_inter += inter[k];
    total_label += label_area[k];
  }
  const SegMetrics::Result r = m.result();
  EXPECT_EQ(r.images, 4);
  for (int k = 0; k < kClasses; ++k) {
    EXPECT_TRUE(same(r.IoU[k], iou[k])) << "class " << k;
    EXPECT_TRUE(same(r.Acc[k], acc[k])) << "class " << k;
  }
  EXPECT_EQ(r.IoU[3], 0.0);  // predicted, never in the ground truth
  EXPECT_TRUE(std::isnan(r.Acc[3]));
  EXPECT_TRUE(std::isnan(r.IoU[4]));  // nowhere
  EXPECT_EQ(r.aAcc, static_cast<double>(total_inter) / total_label);
  EXPECT_EQ(r.mIoU, (iou[0] + iou[1] + iou[2] + iou[3]) / 4);
  EXPECT_EQ(r.mAcc, (acc[0] + acc[1] + acc[2]) / 3);
  EXPECT_LT(r.mIoU, 1.0);
  EXPECT_GT(r.mIoU, 0.5);
}

}  // namespace
}  // namespace vrwkv::seg
