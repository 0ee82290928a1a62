// The pieces of the training transform (vrwkv/data.hpp, VRWKV.md 6.2),
// exposed for the loader and the tests: deterministic random numbers, channel
// conversion, resampling, the torchvision crops, RandAugment (timm "increasing"
// set) on 8-bit images, normalisation and RandomErasing on float.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <random>

#include "vrwkv/data.hpp"

namespace vrwkv::train {

// ------------------------------------------------------------- random ----

// splitmix64 (Steele, Lea, Flood 2014), the standard 64-bit finaliser.
std::uint64_t splitmix64(std::uint64_t x);
// A seed from several parts (stream tag, seed, epoch, position...): splitmix64 chained over them.
std::uint64_t mix_seed(std::initializer_list<std::uint64_t> parts);

// std::mt19937_64 (its output is fixed by the standard) with distributions of
// our own, so that the same seed gives the same numbers with any standard
// library (std::*_distribution are implementation-defined).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : engine_(seed) {}
  std::uint64_t bits() { return engine_(); }
  double uniform();                                 // [0, 1), 53 random bits
  double uniform(double lo, double hi);             // lo + (hi − lo)·uniform()
  std::int64_t integer(std::int64_t lo, std::int64_t hi);  // uniform in [lo, hi], both included (unbiased)
  double normal();                                  // N(0, 1), Marsaglia's polar method
  double gamma(double alpha);                       // Gamma(alpha, 1), Marsaglia–Tsang (2000)
  double beta(double a, double b);                  // X / (X + Y), X ~ Gamma(a), Y ~ Gamma(b)

 private:
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  double spare_ = 0;
};

// ---------------------------------------------------------- channels ----

// Pillow's convert("L"): L = (19595·R + 38470·G + 7471·B + 2^15) >> 16, the
// ITU-R 601-2 luma 0.299/0.587/0.114 in 16-bit fixed point, rounded.
std::uint8_t luma(std::uint8_t r, std::uint8_t g, std::uint8_t b);
Image8 to_grey(const Image8& in);  // 3 → 1 channel by luma(); 1 channel: a copy
Image8 to_rgb(const Image8& in);   // 1 → 3 channels by replication; 3 channels: a copy

// -------------------------------------------------------- geometry ----

// A window of an image: rows [top, top + height), columns [left, left + width).
struct CropBox {
  int top = 0, left = 0, height = 0, width = 0;
};

// The window [box] of `in` resampled to out_height × out_width with an
// antialiased bicubic filter (Keys, a = −0.5, support widened by the reduction
// factor, weights normalised where the support leaves the window: Pillow's
// resampling), separable, horizontal pass first, on float with no rounding
// between the passes; the result is rounded and clipped to uint8. Taps never
// leave the window (crop, then resize, as torchvision's resized_crop). A pass
// whose size does not change is a copy, so a same-size resize keeps the pixels.
Image8 resize_bicubic(const Image8& in, CropBox box, int out_height, int out_width);

// torchvision RandomResizedCrop.get_params: 10 attempts at an area fraction
// uniform in [scale_min, scale_max] and a log-uniform aspect ratio in
// [ratio_min, ratio_max], sides rounded half to even; then the central crop,
// the whole image clamped to the ratio range.
CropBox random_resized_crop_params(int height, int width, double scale_min, double scale_max, double ratio_min,
                                   double ratio_max, Rng& rng);

// torchvision RandomCrop(size, padding): zero-pad every side by `padding`, then
// crop height × width back at a uniformly drawn offset.
Image8 pad_random_crop(const Image8& in, int padding, Rng& rng);

Image8 hflip(const Image8& in);

// ----------------------------------------------------- RandAugment ----

// timm's _RAND_INCREASING_TRANSFORMS ("rand-…-inc1"), in timm's order.
enum class AugmentOp {
  AutoContrast, Equalize, Invert, Rotate, PosterizeIncreasing, SolarizeIncreasing, SolarizeAdd,
  ColorIncreasing, ContrastIncreasing, BrightnessIncreasing, SharpnessIncreasing,
  ShearX, ShearY, TranslateXRel, TranslateYRel,
};
constexpr int kAugmentOps = 15;

// One op with its argument (what timm's level_to_arg gives: degrees, bits,
// threshold, addend, enhance factor, shear factor, translate fraction; unused
// for AutoContrast, Equalize, Invert), on the image in place. `fill` (per
// channel) paints what the geometric ops uncover. The ops follow Pillow:
// ImageOps.autocontrast/equalize/invert/posterize/solarize, ImageEnhance
// (blend with a degenerate image, truncated to uint8), and Image.transform
// AFFINE with bilinear sampling at pixel centres.
void apply_augment_op(Image8& img, AugmentOp op, double arg, const std::array<std::uint8_t, 3>& fill);

// timm RandAugment with AugmentOp(prob 0.5, magnitude_std): `num_ops` ops drawn
// with replacement; each runs with probability 0.5 at magnitude
// N(magnitude, magnitude_std) clipped to [0, 10], signed at random where timm does.
void rand_augment(Image8& img, int num_ops, double magnitude, double magnitude_std,
                  const std::array<std::uint8_t, 3>& fill, Rng& rng);

// ----------------------------------------------------------- float ----

// (pixel − mean[c]) / std[c] as float, written CHW into out[channels·H·W].
void normalise(const Image8& img, const std::array<float, 3>& mean, const std::array<float, 3>& std, float* out);

// timm RandomErasing (one box, 10 attempts, area fraction uniform in
// [0.02, 1/3], log-uniform aspect in [0.3, 1/0.3]) with per-pixel N(0, 1)
// values (timm mode 'pixel'; mmcls mode 'rand' with the normalisation's
// mean and std), on a normalised CHW image, with probability p.
void random_erasing(float* chw, int channels, int height, int width, double p, Rng& rng);

}  // namespace vrwkv::train
