// The training transform's pieces (see augment.hpp): what torchvision, timm
// and Pillow do, on 8-bit HWC images, re-derived and written compactly.
#include "train/augment.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include "vrwkv/error.hpp"

namespace vrwkv::train {
namespace {

using Lut = std::array<std::uint8_t, 256>;

std::uint8_t clip_round(double v) { return static_cast<std::uint8_t>(std::clamp(std::floor(v + 0.5), 0.0, 255.0)); }

Image8 blank_like(const Image8& in) {
  Image8 out{in.height, in.width, in.channels, {}};
  out.pixels.resize(in.pixels.size());
  return out;
}

void check_image(const Image8& img) {
  if (img.height <= 0 || img.width <= 0 || (img.channels != 1 && img.channels != 3) ||
      img.pixels.size() != static_cast<std::size_t>(img.height) * img.width * img.channels)
    input_error("image of ", img.height, "x", img.width, "x", img.channels, " with ", img.pixels.size(),
                " bytes: expected height·width·channels bytes, 1 or 3 channels");
}

}  // namespace

// ------------------------------------------------------------- random ----

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

std::uint64_t mix_seed(std::initializer_list<std::uint64_t> parts) {
  std::uint64_t h = 0;
  for (std::uint64_t p : parts) h = splitmix64(h ^ p);
  return h;
}

double Rng::uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

double Rng::uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

std::int64_t Rng::integer(std::int64_t lo, std::int64_t hi) {
  const std::uint64_t range = static_cast<std::uint64_t>(hi) - static_cast<std::uint64_t>(lo) + 1;
  if (range == 0) return static_cast<std::int64_t>(engine_());  // the full 64-bit range
  // Reject the 2^64 mod range smallest values so that every residue is equally likely.
  const std::uint64_t reject_below = (0 - range) % range;
  std::uint64_t r;
  do r = engine_();
  while (r < reject_below);
  return lo + static_cast<std::int64_t>(r % range);
}

double Rng::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u, v, s;
  do {
    u = 2 * uniform() - 1;
    v = 2 * uniform() - 1;
    s = u * u + v * v;
  } while (s >= 1 || s == 0);
  const double m = std::sqrt(-2 * std::log(s) / s);
  spare_ = v * m;
  has_spare_ = true;
  return u * m;
}

double Rng::gamma(double alpha) {
  if (alpha < 1) {  // Gamma(a) = Gamma(a + 1)·U^(1/a)
    const double g = gamma(alpha + 1);
    return g * std::pow(uniform(), 1 / alpha);
  }
  const double d = alpha - 1.0 / 3, c = 1 / std::sqrt(9 * d);
  for (;;) {
    double x, v;
    do {
      x = normal();
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const double u = uniform();
    if (u < 1 - 0.0331 * (x * x) * (x * x)) return d * v;
    if (u > 0 && std::log(u) < 0.5 * x * x + d * (1 - v + std::log(v))) return d * v;
  }
}

double Rng::beta(double a, double b) {
  const double x = gamma(a), y = gamma(b);
  return x + y > 0 ? x / (x + y) : 0.5;
}

// ---------------------------------------------------------- channels ----

std::uint8_t luma(std::uint8_t r, std::uint8_t g, std::uint8_t b) {
  return static_cast<std::uint8_t>((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

Image8 to_grey(const Image8& in) {
  if (in.channels == 1) return in;
  Image8 out{in.height, in.width, 1, std::vector<std::uint8_t>(static_cast<std::size_t>(in.height) * in.width)};
  for (std::size_t i = 0; i < out.pixels.size(); ++i)
    out.pixels[i] = luma(in.pixels[3 * i], in.pixels[3 * i + 1], in.pixels[3 * i + 2]);
  return out;
}

Image8 to_rgb(const Image8& in) {
  if (in.channels == 3) return in;
  Image8 out{in.height, in.width, 3, std::vector<std::uint8_t>(in.pixels.size() * 3)};
  for (std::size_t i = 0; i < in.pixels.size(); ++i)
    out.pixels[3 * i] = out.pixels[3 * i + 1] = out.pixels[3 * i + 2] = in.pixels[i];
  return out;
}

// -------------------------------------------------------- geometry ----

namespace {

// Keys' cubic convolution kernel with a = −0.5 (Pillow's bicubic_filter), support 2.
double keys_cubic(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

// Pillow's precompute_coeffs for an input of in_size samples and out_size
// outputs: output i reads inputs first[i] .. first[i] + count[i] − 1 with
// weights w[i·taps ..], normalised to sum 1.
struct Taps {
  int taps = 0;
  std::vector<int> first, count;
  std::vector<double> w;
};

Taps bicubic_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0), support = 2 * filter_scale;
  Taps t;
  t.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.w.assign(static_cast<std::size_t>(out_size) * t.taps, 0.0);
  for (int i = 0; i < out_size; ++i) {
    const double center = (i + 0.5) * scale;
    const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(center + support + 0.5), in_size);
    double* w = &t.w[static_cast<std::size_t>(i) * t.taps];
    double sum = 0;
    for (int k = 0; k < hi - lo; ++k) sum += w[k] = keys_cubic((k + lo - center + 0.5) / filter_scale);
    if (sum != 0)
      for (int k = 0; k < hi - lo; ++k) w[k] /= sum;
    t.first[i] = lo;
    t.count[i] = hi - lo;
  }
  return t;
}

}  // namespace

Image8 resize_bicubic(const Image8& in, CropBox box, int out_height, int out_width) {
  check_image(in);
  if (box.top < 0 || box.left < 0 || box.height <= 0 || box.width <= 0 || box.top + box.height > in.height ||
      box.left + box.width > in.width || out_height <= 0 || out_width <= 0)
    input_error("resize: window ", box.height, "x", box.width, " at (", box.top, ",", box.left, ") of a ", in.height,
                "x", in.width, " image to ", out_height, "x", out_width, " is out of range");
  const int C = in.channels;
  const std::size_t row = static_cast<std::size_t>(out_width) * C;

  // Horizontal pass: the window's rows, out_width columns, float.
  std::vector<float> tmp(static_cast<std::size_t>(box.height) * row);
  const Taps tx = box.width == out_width ? Taps{} : bicubic_taps(box.width, out_width);
  for (int y = 0; y < box.height; ++y) {
    const std::uint8_t* src = &in.pixels[(static_cast<std::size_t>(box.top + y) * in.width + box.left) * C];
    float* dst = &tmp[y * row];
    for (int x = 0; x < out_width; ++x)
      for (int c = 0; c < C; ++c) {
        if (tx.taps == 0) {
          dst[x * C + c] = src[x * C + c];
          continue;
        }
        const double* w = &tx.w[static_cast<std::size_t>(x) * tx.taps];
        double s = 0;
        for (int k = 0; k < tx.count[x]; ++k) s += w[k] * src[(tx.first[x] + k) * C + c];
        dst[x * C + c] = static_cast<float>(s);
      }
  }

  // Vertical pass, rounded and clipped to uint8.
  Image8 out{out_height, out_width, C, std::vector<std::uint8_t>(out_height * row)};
  const Taps ty = box.height == out_height ? Taps{} : bicubic_taps(box.height, out_height);
  for (int y = 0; y < out_height; ++y) {
    std::uint8_t* dst = &out.pixels[y * row];
    if (ty.taps == 0) {
      for (std::size_t i = 0; i < row; ++i) dst[i] = clip_round(tmp[y * row + i]);
      continue;
    }
    const double* w = &ty.w[static_cast<std::size_t>(y) * ty.taps];
    for (std::size_t i = 0; i < row; ++i) {
      double s = 0;
      for (int k = 0; k < ty.count[y]; ++k) s += w[k] * tmp[(ty.first[y] + k) * row + i];
      dst[i] = clip_round(s);
    }
  }
  return out;
}

CropBox random_resized_crop_params(int height, int width, double scale_min, double scale_max, double ratio_min,
                                   double ratio_max, Rng& rng) {
  const double area = static_cast<double>(height) * width;
  const double log_lo = std::log(ratio_min), log_hi = std::log(ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * rng.uniform(scale_min, scale_max);
    const double aspect = std::exp(rng.uniform(log_lo, log_hi));
    const int w = static_cast<int>(std::nearbyint(std::sqrt(target_area * aspect)));  // Python round(): half to even
    const int h = static_cast<int>(std::nearbyint(std::sqrt(target_area / aspect)));
    if (0 < w && w <= width && 0 < h && h <= height) {
      const int top = static_cast<int>(rng.integer(0, height - h));
      const int left = static_cast<int>(rng.integer(0, width - w));
      return {top, left, h, w};
    }
  }
  // Fallback: the central crop, the whole image clamped to the ratio range.
  const double in_ratio = static_cast<double>(width) / height;
  int w = width, h = height;
  if (in_ratio < ratio_min)
    h = std::max(1, static_cast<int>(std::nearbyint(w / ratio_min)));
  else if (in_ratio > ratio_max)
    w = std::max(1, static_cast<int>(std::nearbyint(h * ratio_max)));
  return {(height - h) / 2, (width - w) / 2, h, w};
}

Image8 pad_random_crop(const Image8& in, int padding, Rng& rng) {
  const int top = static_cast<int>(rng.integer(0, 2 * padding)) - padding;
  const int left = static_cast<int>(rng.integer(0, 2 * padding)) - padding;
  Image8 out = blank_like(in);  // zero: the padding
  const int C = in.channels;
  for (int y = 0; y < in.height; ++y) {
    const int sy = y + top;
    if (sy < 0 || sy >= in.height) continue;
    for (int x = 0; x < in.width; ++x) {
      const int sx = x + left;
      if (sx < 0 || sx >= in.width) continue;
      for (int c = 0; c < C; ++c)
        out.pixels[(static_cast<std::size_t>(y) * in.width + x) * C + c] =
            in.pixels[(static_cast<std::size_t>(sy) * in.width + sx) * C + c];
    }
  }
  return out;
}

Image8 hflip(const Image8& in) {
  Image8 out = blank_like(in);
  const int C = in.channels;
  for (int y = 0; y < in.height; ++y)
    for (int x = 0; x < in.width; ++x)
      for (int c = 0; c < C; ++c)
        out.pixels[(static_cast<std::size_t>(y) * in.width + x) * C + c] =
            in.pixels[(static_cast<std::size_t>(y) * in.width + (in.width - 1 - x)) * C + c];
  return out;
}

// ----------------------------------------------------- RandAugment ----

namespace {

// One 256-entry table per channel, built from that channel's histogram (ImageOps._lut).
template <class MakeLut>
void per_channel_lut(Image8& img, MakeLut make_lut) {
  const int C = img.channels;
  for (int c = 0; c < C; ++c) {
    std::array<std::int64_t, 256> hist{};
    for (std::size_t i = c; i < img.pixels.size(); i += C) ++hist[img.pixels[i]];
    const Lut lut = make_lut(hist);
    for (std::size_t i = c; i < img.pixels.size(); i += C) img.pixels[i] = lut[img.pixels[i]];
  }
}

void apply_lut(Image8& img, const Lut& lut) {
  for (std::uint8_t& p : img.pixels) p = lut[p];
}

Lut identity_lut() {
  Lut lut;
  for (int i = 0; i < 256; ++i) lut[i] = static_cast<std::uint8_t>(i);
  return lut;
}

// ImageOps.autocontrast(cutoff=0): stretch [lowest, highest] to [0, 255], truncating.
Lut autocontrast_lut(const std::array<std::int64_t, 256>& h) {
  int lo = 0, hi = 255;
  while (lo < 256 && h[lo] == 0) ++lo;
  while (hi >= 0 && h[hi] == 0) --hi;
  if (hi <= lo) return identity_lut();
  const double scale = 255.0 / (hi - lo), offset = -lo * scale;
  Lut lut;
  for (int i = 0; i < 256; ++i) lut[i] = static_cast<std::uint8_t>(std::clamp(static_cast<int>(i * scale + offset), 0, 255));
  return lut;
}

// ImageOps.equalize: step = (pixels − count of the highest used value) // 256; lut[i] = (step//2 + cdf(i−1)) // step.
Lut equalize_lut(const std::array<std::int64_t, 256>& h) {
  std::int64_t total = 0, last = 0;
  int used = 0;
  for (std::int64_t n : h)
    if (n) total += n, last = n, ++used;
  if (used <= 1) return identity_lut();
  const std::int64_t step = (total - last) / 256;
  if (step == 0) return identity_lut();
  Lut lut;
  std::int64_t n = step / 2;
  for (int i = 0; i < 256; ++i) {
    lut[i] = static_cast<std::uint8_t>(std::min<std::int64_t>(n / step, 255));
    n += h[i];
  }
  return lut;
}

// Image.blend(degenerate, img, factor) as ImageEnhance does it: float, clipped, truncated.
void blend_from(Image8& img, const Image8& degenerate, double factor) {
  const float alpha = static_cast<float>(factor);
  for (std::size_t i = 0; i < img.pixels.size(); ++i) {
    const int d = degenerate.pixels[i];
    const float t = static_cast<float>(d + alpha * (img.pixels[i] - d));
    img.pixels[i] = t <= 0 ? 0 : t >= 255 ? 255 : static_cast<std::uint8_t>(t);
  }
}

// ImageFilter.SMOOTH (3×3 kernel 1 1 1 / 1 5 1 / 1 1 1, divided by 13), rounded; the border is copied.
Image8 smooth(const Image8& in) {
  Image8 out = in;
  const int C = in.channels, W = in.width;
  auto at = [&](int y, int x, int c) { return static_cast<int>(in.pixels[(static_cast<std::size_t>(y) * W + x) * C + c]); };
  for (int y = 1; y + 1 < in.height; ++y)
    for (int x = 1; x + 1 < W; ++x)
      for (int c = 0; c < C; ++c) {
        int s = 4 * at(y, x, c);
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) s += at(y + dy, x + dx, c);
        out.pixels[(static_cast<std::size_t>(y) * W + x) * C + c] = static_cast<std::uint8_t>((2 * s + 13) / 26);
      }
  return out;
}

// Image.transform(size, AFFINE, (a, b, c, d, e, f), BILINEAR, fillcolor): output
// pixel (x, y) samples the input at (a·x' + b·y' + c, d·x' + e·y' + f) with
// x' = x + 0.5, y' = y + 0.5; samples outside the image take the fill colour,
// neighbours past the edge are clamped.
void affine(Image8& img, const std::array<double, 6>& m, const std::array<std::uint8_t, 3>& fill) {
  const Image8 in = img;
  const int C = in.channels, W = in.width, H = in.height;
  auto at = [&](int y, int x, int c) {
    return static_cast<double>(in.pixels[(static_cast<std::size_t>(std::clamp(y, 0, H - 1)) * W + std::clamp(x, 0, W - 1)) * C + c]);
  };
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      std::uint8_t* out = &img.pixels[(static_cast<std::size_t>(y) * W + x) * C];
      const double xi = m[0] * (x + 0.5) + m[1] * (y + 0.5) + m[2];
      const double yi = m[3] * (x + 0.5) + m[4] * (y + 0.5) + m[5];
      if (!(xi >= 0 && xi < W && yi >= 0 && yi < H)) {
        for (int c = 0; c < C; ++c) out[c] = fill[c];
        continue;
      }
      const double fx = xi - 0.5, fy = yi - 0.5;
      const int x0 = static_cast<int>(std::floor(fx)), y0 = static_cast<int>(std::floor(fy));
      const double dx = fx - x0, dy = fy - y0;
      for (int c = 0; c < C; ++c) {
        const double top = at(y0, x0, c) + dx * (at(y0, x0 + 1, c) - at(y0, x0, c));
        const double bottom = at(y0 + 1, x0, c) + dx * (at(y0 + 1, x0 + 1, c) - at(y0 + 1, x0, c));
        out[c] = clip_round(top + dy * (bottom - top));
      }
    }
}

}  // namespace

void apply_augment_op(Image8& img, AugmentOp op, double arg, const std::array<std::uint8_t, 3>& fill) {
  check_image(img);
  switch (op) {
    case AugmentOp::AutoContrast: per_channel_lut(img, autocontrast_lut); return;
    case AugmentOp::Equalize: per_channel_lut(img, equalize_lut); return;
    case AugmentOp::Invert: {
      for (std::uint8_t& p : img.pixels) p = static_cast<std::uint8_t>(255 - p);
      return;
    }
    case AugmentOp::PosterizeIncreasing: {  // ImageOps.posterize: keep the `bits` high bits (timm: none if ≥ 8)
      const int bits = static_cast<int>(arg);
      if (bits >= 8) return;
      const int mask = bits <= 0 ? 0 : (0xff << (8 - bits)) & 0xff;
      Lut lut;
      for (int i = 0; i < 256; ++i) lut[i] = static_cast<std::uint8_t>(i & mask);
      apply_lut(img, lut);
      return;
    }
    case AugmentOp::SolarizeIncreasing: {  // ImageOps.solarize: invert values ≥ threshold
      Lut lut;
      for (int i = 0; i < 256; ++i) lut[i] = static_cast<std::uint8_t>(i < arg ? i : 255 - i);
      apply_lut(img, lut);
      return;
    }
    case AugmentOp::SolarizeAdd: {  // timm solarize_add: values < 128 get `add`, saturating
      Lut lut;
      for (int i = 0; i < 256; ++i) lut[i] = static_cast<std::uint8_t>(i < 128 ? std::min(255, i + static_cast<int>(arg)) : i);
      apply_lut(img, lut);
      return;
    }
    case AugmentOp::ColorIncreasing: {  // ImageEnhance.Color: blend with the grey (L) image
      if (img.channels == 1) return;      // an L image is its own degenerate
      blend_from(img, to_rgb(to_grey(img)), arg);
      return;
    }
    case AugmentOp::ContrastIncreasing: {  // ImageEnhance.Contrast: blend with the mean grey, int(mean + 0.5)
      const Image8 grey = to_grey(img);
      double sum = 0;
      for (std::uint8_t p : grey.pixels) sum += p;
      const auto mean = static_cast<std::uint8_t>(static_cast<int>(sum / grey.pixels.size() + 0.5));
      Image8 degenerate = img;
      std::fill(degenerate.pixels.begin(), degenerate.pixels.end(), mean);
      blend_from(img, degenerate, arg);
      return;
    }
    case AugmentOp::BrightnessIncreasing: {  // ImageEnhance.Brightness: blend with black
      Image8 black = blank_like(img);
      blend_from(img, black, arg);
      return;
    }
    case AugmentOp::SharpnessIncreasing:  // ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH
      blend_from(img, smooth(img), arg);
      return;
    case AugmentOp::Rotate: {  // Image.rotate(degrees) about the centre, counter-clockwise
      const double a = -arg * std::numbers::pi / 180, cs = std::cos(a), sn = std::sin(a);
      const double cx = img.width / 2.0, cy = img.height / 2.0;
      affine(img, {cs, sn, cx - cs * cx - sn * cy, -sn, cs, cy + sn * cx - cs * cy}, fill);
      return;
    }
    case AugmentOp::ShearX: affine(img, {1, arg, 0, 0, 1, 0}, fill); return;
    case AugmentOp::ShearY: affine(img, {1, 0, 0, arg, 1, 0}, fill); return;
    case AugmentOp::TranslateXRel: affine(img, {1, 0, arg * img.width, 0, 1, 0}, fill); return;
    case AugmentOp::TranslateYRel: affine(img, {1, 0, 0, 0, 1, arg * img.height}, fill); return;
  }
}

void rand_augment(Image8& img, int num_ops, double magnitude, double magnitude_std,
                  const std::array<std::uint8_t, 3>& fill, Rng& rng) {
  // RandAugment.__call__: np.random.choice(ops, num_ops, replace=True), then each AugmentOp in turn.
  std::vector<AugmentOp> ops(std::max(num_ops, 0));
  for (AugmentOp& op : ops) op = static_cast<AugmentOp>(rng.integer(0, kAugmentOps - 1));
  for (AugmentOp op : ops) {
    if (rng.uniform() > 0.5) continue;  // AugmentOp: prob 0.5
    double m = magnitude_std > 0 ? magnitude + magnitude_std * rng.normal() : magnitude;
    m = std::clamp(m, 0.0, 10.0);
    const double level = m / 10;
    auto negate = [&](double v) { return rng.uniform() > 0.5 ? -v : v; };  // timm _randomly_negate
    double arg = 0;
    switch (op) {  // timm LEVEL_TO_ARG
      case AugmentOp::AutoContrast:
      case AugmentOp::Equalize:
      case AugmentOp::Invert: break;
      case AugmentOp::Rotate: arg = negate(level * 30); break;
      case AugmentOp::PosterizeIncreasing: arg = 4 - static_cast<int>(level * 4); break;
      case AugmentOp::SolarizeIncreasing: arg = 256 - std::min(256, static_cast<int>(level * 256)); break;
      case AugmentOp::SolarizeAdd: arg = std::min(128, static_cast<int>(level * 110)); break;
      case AugmentOp::ColorIncreasing:
      case AugmentOp::ContrastIncreasing:
      case AugmentOp::BrightnessIncreasing:
      case AugmentOp::SharpnessIncreasing: arg = std::max(0.1, 1.0 + negate(level * 0.9)); break;
      case AugmentOp::ShearX:
      case AugmentOp::ShearY: arg = negate(level * 0.3); break;
      case AugmentOp::TranslateXRel:
      case AugmentOp::TranslateYRel: arg = negate(level * 0.45); break;
    }
    apply_augment_op(img, op, arg, fill);
  }
}

// ----------------------------------------------------------- float ----

void normalise(const Image8& img, const std::array<float, 3>& mean, const std::array<float, 3>& std, float* out) {
  const int C = img.channels;
  const std::size_t plane = static_cast<std::size_t>(img.height) * img.width;
  for (int c = 0; c < C; ++c)
    for (std::size_t i = 0; i < plane; ++i)
      out[c * plane + i] = (static_cast<float>(img.pixels[i * C + c]) - mean[c]) / std[c];
}

void random_erasing(float* chw, int channels, int height, int width, double p, Rng& rng) {
  if (rng.uniform() > p) return;
  const double area = static_cast<double>(height) * width;
  const double log_lo = std::log(0.3), log_hi = std::log(1 / 0.3);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = rng.uniform(0.02, 1.0 / 3) * area;
    const double aspect = std::exp(rng.uniform(log_lo, log_hi));
    const int h = static_cast<int>(std::nearbyint(std::sqrt(target_area * aspect)));
    const int w = static_cast<int>(std::nearbyint(std::sqrt(target_area / aspect)));
    if (w < width && h < height) {
      const int top = static_cast<int>(rng.integer(0, height - h));
      const int left = static_cast<int>(rng.integer(0, width - w));
      for (int c = 0; c < channels; ++c)
        for (int y = top; y < top + h; ++y)
          for (int x = left; x < left + w; ++x)
            chw[(static_cast<std::size_t>(c) * height + y) * width + x] = static_cast<float>(rng.normal());
      return;
    }
  }
}

}  // namespace vrwkv::train
