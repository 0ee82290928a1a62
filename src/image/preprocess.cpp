// Evaluation preprocessing (VRWKV.md 6.1; ../shared/golden/preprocess/README.md)
// and a re-implementation of Pillow 9.4's bicubic resampling
// (libImaging/Resample.c), written from its documented algorithm.
//
// Bit-exactness with Pillow rests on doing the same floating-point operations
// in the same order as its C code, compiled for plain x86-64 (no FMA). So
// contraction of a*b+c into fused multiply-adds is switched off for this file:
// with -march=native the compiler would otherwise fuse, e.g., the cubic
// polynomial and change weights in their last bit.
#include "image/preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "vrwkv/error.hpp"

// Pillow's weights are computed without fused multiply-adds; an FMA changes
// their last bit and with it the rounded pixels. CMakeLists.txt compiles this
// file with -ffp-contract=off.

// The resampling loops have no data-dependent branches worth a fuzzer's
// attention; coverage tracing in them made a fuzzing run ~4x slower.
#if defined(__clang__)
#define VRWKV_NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define VRWKV_NO_COVERAGE
#endif

namespace vrwkv {
namespace {

// Pillow's fixed point: 32-bit accumulator, 8 bits of result, 2 bits of
// headroom for the overshoot and sign of the cubic's negative lobes.
constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr std::int64_t kMaxPixels = std::int64_t{1} << 28;

// Keys' cubic convolution kernel with a = -0.5 (support 2), evaluated with the
// same operation order as Pillow so that the doubles agree to the last bit.
double bicubic_kernel(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// The fixed-point weights of one pass along one axis, resized from in_size to
// out_size samples, for the output samples [begin, end) only.
struct AxisWeights {
  int taps = 0;                      // weights stored per output sample
  std::vector<int> first;            // first input sample read, per output sample
  std::vector<int> count;            // input samples read, per output sample
  std::vector<std::int32_t> weight;  // taps per output sample, kPrecisionBits fraction bits
};

// Pillow rounds away from zero when it converts a weight to fixed point.
std::int32_t to_fixed_point(double w) {
  const double scaled = w * (1 << kPrecisionBits);
  return static_cast<std::int32_t>(w < 0 ? -0.5 + scaled : 0.5 + scaled);
}

AxisWeights axis_weights(int in_size, int out_size, int begin, int end) {
  const double scale = static_cast<double>(in_size) / out_size;
  // Antialiasing: when reducing, the kernel is stretched by the reduction factor.
  const double filter_scale = std::max(scale, 1.0);
  const double support = 2.0 * filter_scale;
  const double inverse_filter_scale = 1.0 / filter_scale;

  AxisWeights axis;
  axis.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  const int n_out = end - begin;
  axis.first.resize(n_out);
  axis.count.resize(n_out);
  axis.weight.assign(static_cast<std::size_t>(n_out) * axis.taps, 0);
  std::vector<double> w(axis.taps);
  for (int o = begin; o < end; ++o) {
    const double center = (o + 0.5) * scale;
    // The int casts truncate toward zero, as Pillow's do; that is its rounding.
    const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(center + support + 0.5), in_size);
    const int n = std::min(hi - lo, axis.taps);
    double sum = 0.0;
    for (int i = 0; i < n; ++i) {
      w[i] = bicubic_kernel((i + lo - center + 0.5) * inverse_filter_scale);
      sum += w[i];
    }
    std::int32_t* fixed = &axis.weight[static_cast<std::size_t>(o - begin) * axis.taps];
    for (int i = 0; i < n; ++i) fixed[i] = to_fixed_point(sum != 0.0 ? w[i] / sum : w[i]);
    axis.first[o - begin] = lo;
    axis.count[o - begin] = std::max(n, 0);
  }
  return axis;
}

// The accumulator starts at one half (of the last kept bit), so the shift rounds.
constexpr std::int64_t kRoundingHalf = std::int64_t{1} << (kPrecisionBits - 1);

VRWKV_NO_COVERAGE inline std::uint8_t clip8(std::int64_t accumulator) {
  const std::int64_t v = accumulator >> kPrecisionBits;  // floor, as Pillow's arithmetic shift
  return static_cast<std::uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

// The horizontal pass, for the output columns `axis` was made for and the input
// rows [row_begin, row_end).
VRWKV_NO_COVERAGE Image resample_horizontal(const Image& in, const AxisWeights& axis, int row_begin, int row_end) {
  Image out;
  out.width = static_cast<int>(axis.first.size());
  out.height = row_end - row_begin;
  out.rgb.resize(static_cast<std::size_t>(out.width) * out.height * 3);
  // Raw pointers: vector::operator[] would be a traced call per sample in a fuzzing build.
  const int* first = axis.first.data();
  const int* count = axis.count.data();
  for (int y = 0; y < out.height; ++y) {
    const std::uint8_t* src_row = in.rgb.data() + static_cast<std::size_t>(y + row_begin) * in.width * 3;
    std::uint8_t* dst = out.rgb.data() + static_cast<std::size_t>(y) * out.width * 3;
    for (int x = 0; x < out.width; ++x) {
      const std::int32_t* k = axis.weight.data() + static_cast<std::size_t>(x) * axis.taps;
      const std::uint8_t* src = src_row + static_cast<std::size_t>(first[x]) * 3;
      std::int64_t r = kRoundingHalf, g = kRoundingHalf, b = kRoundingHalf;
      for (int i = 0; i < count[x]; ++i) {
        r += src[3 * i + 0] * std::int64_t{k[i]};
        g += src[3 * i + 1] * std::int64_t{k[i]};
        b += src[3 * i + 2] * std::int64_t{k[i]};
      }
      dst[3 * x + 0] = clip8(r);
      dst[3 * x + 1] = clip8(g);
      dst[3 * x + 2] = clip8(b);
    }
  }
  return out;
}

// The vertical pass; `in` holds the input rows from row_offset on. Whole rows
// are accumulated at a time, so that memory is read in order.
VRWKV_NO_COVERAGE Image resample_vertical(const Image& in, const AxisWeights& axis, int row_offset) {
  Image out;
  out.width = in.width;
  out.height = static_cast<int>(axis.first.size());
  out.rgb.resize(static_cast<std::size_t>(out.width) * out.height * 3);
  const std::size_t stride = static_cast<std::size_t>(in.width) * 3;
  std::vector<std::int64_t> accumulators(stride);
  std::int64_t* acc = accumulators.data();
  for (int y = 0; y < out.height; ++y) {
    for (std::size_t c = 0; c < stride; ++c) acc[c] = kRoundingHalf;
    const std::int32_t* k = axis.weight.data() + static_cast<std::size_t>(y) * axis.taps;
    const std::uint8_t* src = in.rgb.data() + static_cast<std::size_t>(axis.first[y] - row_offset) * stride;
    for (int i = 0; i < axis.count[y]; ++i, src += stride)
      for (std::size_t c = 0; c < stride; ++c) acc[c] += src[c] * std::int64_t{k[i]};
    std::uint8_t* dst = out.rgb.data() + static_cast<std::size_t>(y) * stride;
    for (std::size_t c = 0; c < stride; ++c) dst[c] = clip8(acc[c]);
  }
  return out;
}

struct Window {
  int x, y, width, height;
};

Image crop(const Image& in, const Window& w) {
  Image out;
  out.width = w.width;
  out.height = w.height;
  out.rgb.resize(static_cast<std::size_t>(w.width) * w.height * 3);
  for (int y = 0; y < w.height; ++y) {
    const auto src = in.rgb.begin() + (static_cast<std::ptrdiff_t>(y + w.y) * in.width + w.x) * 3;
    std::copy(src, src + static_cast<std::ptrdiff_t>(w.width) * 3,
              out.rgb.begin() + static_cast<std::ptrdiff_t>(y) * w.width * 3);
  }
  return out;
}

// The window `win` of `in` resized to out_width x out_height. Each output pixel
// depends only on its own coordinates, so computing just the window gives the
// pixels Pillow computes for the whole image.
Image resample_window(const Image& in, int out_width, int out_height, const Window& win) {
  const bool horizontal = out_width != in.width;
  const bool vertical = out_height != in.height;
  int row_begin = win.y, row_end = win.y + win.height;
  AxisWeights rows;
  if (vertical) {
    rows = axis_weights(in.height, out_height, win.y, win.y + win.height);
    row_begin = rows.first.front();
    row_end = row_begin;
    for (std::size_t i = 0; i < rows.first.size(); ++i) row_end = std::max(row_end, rows.first[i] + rows.count[i]);
  }
  Image stage = horizontal ? resample_horizontal(in, axis_weights(in.width, out_width, win.x, win.x + win.width),
                                                 row_begin, row_end)
                           : crop(in, {win.x, row_begin, win.width, row_end - row_begin});
  return vertical ? resample_vertical(stage, rows, row_begin) : stage;
}

void check_image(const Image& in) {
  if (in.width <= 0 || in.height <= 0)
    input_error("image: cannot preprocess an empty image (", in.width, "x", in.height, ")");
  if (in.rgb.size() != static_cast<std::size_t>(in.width) * in.height * 3)
    input_error("image: pixel buffer has ", in.rgb.size(), " bytes, expected ", in.width, "x", in.height, "x3");
}

struct PipelineSizes {
  int short_side;  // of the resize
  int crop;        // square centre crop
};

PipelineSizes pipeline_sizes(Preprocess p) {
  return p == Preprocess::Mmcls ? PipelineSizes{256, 224} : PipelineSizes{384, 384};
}

// int(round((size - crop) / 2.0)) with Python's round, half to even.
int centre_offset(int size, int crop) {
  const int excess = size - crop;
  if (excess < 0) runtime_error("centre crop of ", crop, " from ", size, " pixels");
  const int half = excess / 2;
  return excess % 2 == 1 && half % 2 == 1 ? half + 1 : half;
}

// HWC uint8 to CHW float through per-channel lookup tables.
VRWKV_NO_COVERAGE void to_chw(const Image& pixels, const float (&table)[3][256], float* dst) {
  const std::size_t plane = static_cast<std::size_t>(pixels.width) * pixels.height;
  const std::uint8_t* src = pixels.rgb.data();
  for (std::size_t i = 0; i < plane; ++i)
    for (int c = 0; c < 3; ++c) dst[c * plane + i] = table[c][src[i * 3 + c]];
}

}  // namespace

Image resize_bicubic_pillow(const Image& in, int out_width, int out_height) {
  check_image(in);
  if (out_width <= 0 || out_height <= 0 || std::int64_t{out_width} * out_height > kMaxPixels)
    input_error("resize: cannot resize to ", out_width, "x", out_height);
  if (out_width == in.width && out_height == in.height) return in;
  return resample_window(in, out_width, out_height, {0, 0, out_width, out_height});
}

Image preprocess_uint8(const Image& in, Preprocess p) {
  check_image(in);
  const auto [short_side, crop_size] = pipeline_sizes(p);
  int width = in.width, height = in.height;
  if (std::min(width, height) != short_side) {
    // Float division, then int() truncation: mmcls and torchvision both do so
    // (not mmcv's rescale_size, which rounds).
    if (width < height) {
      height = static_cast<int>(static_cast<double>(short_side * height) / width);
      width = short_side;
    } else {
      width = static_cast<int>(static_cast<double>(short_side * width) / height);
      height = short_side;
    }
  }
  const Window win{centre_offset(width, crop_size), centre_offset(height, crop_size), crop_size, crop_size};
  if (width == in.width && height == in.height) return crop(in, win);
  return resample_window(in, width, height, win);
}

int preprocess_size(Preprocess p) { return pipeline_sizes(p).crop; }

std::pair<int, int> preprocess_size(const InputFormat& f) {
  const Preprocess p = f.preprocessing.kind;
  if (p != Preprocess::Resize) return {preprocess_size(p), preprocess_size(p)};
  if (f.height < 1 || f.width < 1 || f.height > 16384 || f.width > 16384)
    input_error("the resize preprocessing needs an input size in 1..16384, got ", f.height, "x", f.width);
  return {static_cast<int>(f.height), static_cast<int>(f.width)};
}

Tensor preprocess_image(const Image& in, const InputFormat& f) {
  const Preprocessing& pre = f.preprocessing;
  if (pre.kind != Preprocess::Resize) {
    if (f.channels != 3) input_error("the ", to_string(pre.kind), " preprocessing makes RGB input, but the model takes ", f.channels, " channels");
    return preprocess_image(in, pre.kind);
  }
  check_image(in);
  if (f.channels != 1 && f.channels != 3)
    input_error("the resize preprocessing makes grey or RGB input, but the model takes ", f.channels, " channels");
  Image src = in;
  if (f.channels == 1)  // Pillow convert("L"), kept in all three channels so one resampler serves both
    for (std::size_t i = 0; i < src.rgb.size(); i += 3) {
      const std::uint8_t l = static_cast<std::uint8_t>(
          (19595u * src.rgb[i] + 38470u * src.rgb[i + 1] + 7471u * src.rgb[i + 2] + 32768u) >> 16);
      src.rgb[i] = src.rgb[i + 1] = src.rgb[i + 2] = l;
    }
  const auto [height, width] = preprocess_size(f);
  const Image pixels = resize_bicubic_pillow(src, width, height);
  const std::int64_t channels = f.channels, plane = std::int64_t{width} * height;
  Tensor out(DType::F32, {1, channels, height, width});
  for (std::int64_t ch = 0; ch < channels; ++ch)
    for (std::int64_t i = 0; i < plane; ++i)
      out.f32()[ch * plane + i] = (static_cast<float>(pixels.rgb[i * 3 + ch]) - pre.mean[ch]) / pre.std[ch];
  return out;
}

Tensor preprocess_image(const Image& in, Preprocess p) {
  const Image pixels = preprocess_uint8(in, p);
  const int size = pixels.width;
  // One table per channel: all arithmetic in float32, in the order of the
  // reference (mmcv imnormalize; torchvision ToTensor + Normalize).
  float table[3][256];
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      if (p == Preprocess::Mmcls) {
        static constexpr float kMean[3] = {123.675f, 116.28f, 103.53f};
        static constexpr float kStd[3] = {58.395f, 57.12f, 57.375f};
        table[c][v] = (static_cast<float>(v) - kMean[c]) / kStd[c];
      } else {
        static constexpr float kMean[3] = {0.485f, 0.456f, 0.406f};
        static constexpr float kStd[3] = {0.229f, 0.224f, 0.225f};
        table[c][v] = (static_cast<float>(v) / 255.0f - kMean[c]) / kStd[c];
      }
    }
  }
  Tensor out(DType::F32, {1, 3, size, size});
  to_chw(pixels, table, out.f32());
  return out;
}

}  // namespace vrwkv
