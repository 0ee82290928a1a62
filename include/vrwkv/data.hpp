// Training and evaluation data (VRWKV.md 6.2):
// labelled image datasets, the training augmentations and a batch loader.
//
// Determinism: every random choice for the sample at position i of epoch e
// (i = batch index · batch size + place in the batch) is drawn from a
// generator seeded by (seed, e, i) alone, the shuffle of epoch e from
// (seed, e), and the batch mixing of batch b from (seed, e, b), so a batch is
// the same whatever the number of worker threads, and a run can restart at
// any batch of any epoch. The generators are std::mt19937_64 with
// distributions of our own (train/augment.hpp), the same with any library.
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

// How images become input tensors. Per sample, in timm's order: grey
// conversion (Pillow convert("L")) or grey replication, RandomResizedCrop or a
// plain resize, padded random crop, horizontal flip, RandAugment (all on
// uint8), normalisation to float CHW, RandomErasing. Resizing is antialiased
// bicubic on float (Pillow's filter, a = −0.5), rounded to uint8.
struct Transform {
  int height = 224, width = 224;  // output size
  int channels = 3;               // 1: grey (RGB input is converted), 3: RGB (grey is replicated)
  std::array<float, 3> mean{123.675f, 116.28f, 103.53f}, std{58.395f, 57.12f, 57.375f};  // 0..255 units
  // Training augmentations (all off gives the evaluation transform: a plain resize to height×width).
  bool random_resized_crop = false;  // torchvision RandomResizedCrop (get_params), then the bicubic resize
  double crop_scale_min = 0.08, crop_scale_max = 1.0;
  double crop_ratio_min = 3.0 / 4.0, crop_ratio_max = 4.0 / 3.0;
  int random_crop_padding = 0;        // > 0: zero-pad by this many pixels and crop back at a random offset
  double hflip = 0.0;                 // probability of a horizontal flip
  int rand_augment_ops = 0;           // RandAugment: number of ops per image (0 = off); timm's 15
                                      // "increasing" ops, each with probability 0.5, fill = round(mean)
  double rand_augment_magnitude = 9;  // of 10, with std 0.5 (timm "rand-m9-mstd0.5-inc1")
  double random_erasing = 0.0;        // probability; area [0.02, 1/3], aspect [0.3, 1/0.3], per-pixel N(0, 1)
                                      // values in normalised units (mmcls mode 'rand', timm mode 'pixel')
};

// Soft-label batch mixing (VRWKV.md 6.2), as timm's Mixup in mode 'batch':
// per batch either Mixup or CutMix (λ ~ Beta(α, α); CutMix's λ corrected to
// the box area), each sample mixed with the one at the mirrored position.
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
  // threads: decoding/augmentation workers (0 = every core, as Context).
  // Keeps a reference to `data`, which must outlive the loader. Bad options throw Error(Input).
  Loader(const Dataset& data, Transform transform, Mixing mixing, std::int64_t batch_size, std::uint64_t seed,
         bool shuffle, bool drop_last, int threads = 0);
  ~Loader();
  std::int64_t batches_per_epoch() const;
  // Batch `index` of epoch `epoch` (0-based). Pure: the same arguments give the same batch.
  Batch batch(std::int64_t epoch, std::int64_t index) const;
  // Samples shard_begin .. shard_begin + shard_size − 1 of that batch, exactly as batch() makes them (a rank's
  // shard in data-parallel training): every random draw is a function of (seed, epoch, position), and mixing
  // pairs each sample with the one at the mirrored position of the whole batch.
  Batch batch(std::int64_t epoch, std::int64_t index, std::int64_t shard_begin, std::int64_t shard_size) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vrwkv::train
