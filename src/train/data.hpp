// Training and evaluation data (issue "Training in C++", VRWKV.md 6.2):
// labelled image datasets, the training augmentations and a batch loader.
//
// Determinism: every random choice for sample i of epoch e is drawn from a
// generator seeded by (seed, e, i) alone, and the shuffle of epoch e from
// (seed, e), so a batch is the same whatever the number of worker threads,
// and a run can restart at any batch of any epoch.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vrwkv/tensor.hpp"

namespace vrwkv::train {

// An 8-bit image, HWC row-major; channels is 1 (grey) or 3 (RGB).
struct Image8 {
  int height = 0, width = 0, channels = 0;
  std::vector<std::uint8_t> pixels;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual std::int64_t size() const = 0;
  virtual std::int64_t label(std::int64_t i) const = 0;
  // Decoded image i (thread-safe). Throws Error(Input) naming the file for a bad image.
  virtual Image8 image(std::int64_t i) const = 0;
  const std::vector<std::string>& class_names() const { return class_names_; }
  // How the user named it, for messages: "fashion-mnist:train", "imagefolder:DIR".
  const std::string& name() const { return name_; }

 protected:
  std::vector<std::string> class_names_;
  std::string name_;
};

// Opens a dataset by its specification:
//   fashion-mnist:train | fashion-mnist:test   gzip IDX files in $VRWKV_FASHION_MNIST_DIR, or else
//                                              /usr/share/datasets/fashion-mnist (Debian dataset-fashion-mnist)
//   imagefolder:DIR  (or a bare directory)     one sub-directory per class (sorted names), JPEG/PNG files in them
// A missing, truncated or inconsistent dataset throws Error(Input) naming the file and what was expected.
std::unique_ptr<Dataset> open_dataset(const std::string& spec);

// The ten Fashion-MNIST class names, in label order.
const std::vector<std::string>& fashion_mnist_classes();

// How images become input tensors.
struct Transform {
  int height = 224, width = 224;  // output size
  int channels = 3;               // 1: grey (RGB input is converted), 3: RGB (grey is replicated)
  std::array<float, 3> mean{123.675f, 116.28f, 103.53f}, std{58.395f, 57.12f, 57.375f};  // 0..255 units
  // Training augmentations (all off gives the evaluation transform: a plain resize to height×width).
  bool random_resized_crop = false;  // torchvision RandomResizedCrop, bilinear or bicubic
  double crop_scale_min = 0.08, crop_scale_max = 1.0;
  double crop_ratio_min = 3.0 / 4.0, crop_ratio_max = 4.0 / 3.0;
  int random_crop_padding = 0;        // > 0: zero-pad by this many pixels and crop back at a random offset
  double hflip = 0.0;                 // probability of a horizontal flip
  int rand_augment_ops = 0;           // RandAugment: number of ops per image (0 = off)
  double rand_augment_magnitude = 9;  // of 10, with std 0.5 (timm "rand-m9-mstd0.5-inc1")
  double random_erasing = 0.0;        // probability; area [0.02, 1/3], aspect [0.3, 3.3], random normal values
};

// Soft-label batch mixing (VRWKV.md 6.2): per batch either Mixup or CutMix.
struct Mixing {
  double mixup_alpha = 0.0;   // > 0 enables Mixup
  double cutmix_alpha = 0.0;  // > 0 enables CutMix
  double prob = 1.0;          // probability that a batch is mixed at all
  double switch_prob = 0.5;   // when both are enabled: probability of CutMix
};

struct Batch {
  Tensor input;    // F32 [B,channels,height,width], normalised
  Tensor labels;   // I64 [B]
  Tensor targets;  // F32 [B,K] soft targets (one-hot, or mixed); label smoothing is the loss's job
  std::int64_t epoch = 0, index = 0;  // which batch of which epoch this is
};

class Loader {
 public:
  // batch_size ≥ 1; shuffle: a new permutation each epoch; drop_last: only full batches.
  // threads: decoding/augmentation workers (0 = the OpenMP thread count).
  Loader(const Dataset& data, Transform transform, Mixing mixing, std::int64_t batch_size, std::uint64_t seed,
         bool shuffle, bool drop_last, int threads = 0);
  ~Loader();
  std::int64_t batches_per_epoch() const;
  // Batch `index` of epoch `epoch` (0-based). Pure: the same arguments give the same batch.
  Batch batch(std::int64_t epoch, std::int64_t index) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vrwkv::train
