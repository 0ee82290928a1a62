// Datasets (Fashion-MNIST IDX files, ImageFolder trees) and the batch loader
// of include/vrwkv/data.hpp; the per-image transform's pieces are in augment.cpp.
#include "vrwkv/data.hpp"

#include <omp.h>
#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <mutex>
#include <set>
#include <utility>

#include "image/image.hpp"
#include "train/augment.hpp"
#include "vrwkv/context.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::train {

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

namespace {

namespace fs = std::filesystem;

// ------------------------------------------------------- Fashion-MNIST ----

// zlib's message, less the "path: " it puts in front.
std::string gz_message(gzFile f, const std::string& path, int* errnum) {
  std::string message = gzerror(f, errnum);
  if (message.starts_with(path + ": ")) message.erase(0, path.size() + 2);
  return message;
}

// An IDX file (LeCun's MNIST format), gzip-compressed: a big-endian header
// (magic 2049 = labels, uint8, 1 dimension; 2051 = images, uint8, 3
// dimensions), then the samples. Reads at most `limit` bytes of the
// decompressed stream, growing the buffer as data arrives, so a forged count
// cannot make us allocate more than the file holds.
std::vector<std::uint8_t> read_gzip(const std::string& path, std::uint64_t limit) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr)
    input_error(path, ": cannot open (Fashion-MNIST is looked for in $VRWKV_FASHION_MNIST_DIR, else in "
                      "/usr/share/datasets/fashion-mnist from the Debian package dataset-fashion-mnist)");
  std::vector<std::uint8_t> data;
  constexpr std::uint64_t kChunk = 1 << 20;
  while (data.size() < limit) {
    const std::size_t old = data.size();
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, limit - old));
    data.resize(old + want);
    const int got = gzread(f, data.data() + old, static_cast<unsigned>(want));
    if (got < 0) {
      int errnum = 0;
      const std::string message = gz_message(f, path, &errnum);
      gzclose(f);
      input_error(path, ": damaged gzip data (", message, ")");
    }
    data.resize(old + got);
    if (got == 0) break;
  }
  int errnum = Z_OK;
  const std::string message = gz_message(f, path, &errnum);
  gzclose(f);
  if (errnum != Z_OK) input_error(path, ": damaged or truncated gzip data (", message, ")");
  return data;
}

std::uint32_t big_endian(const std::uint8_t* p) {
  return std::uint32_t{p[0]} << 24 | std::uint32_t{p[1]} << 16 | std::uint32_t{p[2]} << 8 | p[3];
}

// Returns the samples after the header; `dims` = 1 (labels) or 3 (images, 28×28).
std::vector<std::uint8_t> read_idx(const std::string& path, int dims, std::uint32_t* count) {
  const std::uint32_t magic = dims == 1 ? 2049 : 2051;
  const std::uint64_t header = 4 + 4 * static_cast<std::uint64_t>(dims);
  std::vector<std::uint8_t> head = read_gzip(path, header);
  if (head.size() < header)
    input_error(path, ": truncated IDX header (", head.size(), " of ", header, " bytes)");
  if (big_endian(head.data()) != magic)
    input_error(path, ": not an IDX ", dims == 1 ? "label" : "image", " file (magic number ", big_endian(head.data()),
                ", expected ", magic, ")");
  *count = big_endian(head.data() + 4);
  std::uint64_t sample = 1;
  if (dims == 3) {
    const std::uint32_t rows = big_endian(head.data() + 8), cols = big_endian(head.data() + 12);
    if (rows != 28 || cols != 28) input_error(path, ": images of ", rows, "x", cols, ", expected 28x28");
    sample = 28 * 28;
  }
  const std::uint64_t expected = header + *count * sample;
  // One byte more than expected tells a longer file from an exact one.
  std::vector<std::uint8_t> data = read_gzip(path, expected + 1);
  if (data.size() != expected)
    input_error(path, ": ", data.size(), " bytes of IDX data, expected ", expected, " (a ", header,
                "-byte header and ", *count, dims == 1 ? " labels" : " images of 28x28", ")");
  data.erase(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(header));
  return data;
}

class FashionMnist final : public Dataset {
 public:
  explicit FashionMnist(const std::string& split) {
    const char* env = std::getenv("VRWKV_FASHION_MNIST_DIR");
    const fs::path dir = env != nullptr && *env != '\0' ? fs::path(env) : fs::path("/usr/share/datasets/fashion-mnist");
    const std::string prefix = split == "train" ? "train" : "t10k";
    const std::string images_path = (dir / (prefix + "-images-idx3-ubyte.gz")).string();
    const std::string labels_path = (dir / (prefix + "-labels-idx1-ubyte.gz")).string();
    std::uint32_t n_images = 0, n_labels = 0;
    labels_ = read_idx(labels_path, 1, &n_labels);
    images_ = read_idx(images_path, 3, &n_images);
    if (n_images != n_labels)
      input_error(images_path, " holds ", n_images, " images but ", labels_path, " holds ", n_labels,
                  " labels: expected the same count");
    for (std::size_t i = 0; i < labels_.size(); ++i)
      if (labels_[i] >= 10)
        input_error(labels_path, ": label ", int{labels_[i]}, " of sample ", i, ", expected 0..9");
    class_names_ = fashion_mnist_classes();
    name_ = "fashion-mnist:" + split;
  }
  std::int64_t size() const override { return static_cast<std::int64_t>(labels_.size()); }
  std::int64_t label(std::int64_t i) const override { return labels_.at(i); }
  Image8 image(std::int64_t i) const override {
    if (i < 0 || i >= size()) input_error(name_, ": no image ", i, " (", size(), " images)");
    const auto first = images_.begin() + i * 28 * 28;
    return Image8{28, 28, 1, std::vector<std::uint8_t>(first, first + 28 * 28)};
  }

 private:
  std::vector<std::uint8_t> images_, labels_;
};

// --------------------------------------------------------- ImageFolder ----

bool is_image_file(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

// p lies inside root (both canonical).
bool inside(const fs::path& p, const fs::path& root) {
  auto a = p.begin(), b = root.begin();
  for (; b != root.end(); ++a, ++b)
    if (a == p.end() || *a != *b) return false;
  return true;
}

// A directory's identity, whatever the path that reached it.
using DirId = std::pair<dev_t, ino_t>;
bool dir_id(const fs::path& p, DirId& id) {
  struct stat st;
  if (stat(p.c_str(), &st) != 0) return false;
  id = {st.st_dev, st.st_ino};
  return true;
}

// torchvision.datasets.ImageFolder: classes are the sorted sub-directory names;
// each class's images are found by os.walk (following links), directories in
// sorted order and the file names in each sorted. A directory link that leads
// back into the tree is not followed (its images are found where they are),
// and no directory is entered twice (device and inode), so a link loop
// neither hangs the scan nor counts an image many times.
class ImageFolder final : public Dataset {
 public:
  explicit ImageFolder(const std::string& dir) {
    name_ = "imagefolder:" + dir;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) input_error(name_, ": ", dir, " is not a directory");
    for (const fs::directory_entry& e : fs::directory_iterator(dir, ec))
      if (e.is_directory(ec)) class_names_.push_back(e.path().filename().string());
    if (ec) input_error(name_, ": cannot list ", dir, " (", ec.message(), ")");
    std::sort(class_names_.begin(), class_names_.end());
    if (class_names_.empty())
      input_error(name_, ": no class directories in ", dir, " (expected one sub-directory per class holding "
                  ".jpg/.jpeg/.png files)");
    std::vector<std::string> empty;
    const fs::path tree = fs::canonical(dir, ec);
    if (ec) input_error(name_, ": cannot resolve ", dir, " (", ec.message(), ")");
    std::set<DirId> visited;
    for (std::size_t k = 0; k < class_names_.size(); ++k) {
      std::vector<std::pair<std::string, std::string>> found;  // (directory, file name)
      const fs::path root = fs::path(dir) / class_names_[k];
      if (DirId id; dir_id(root, id)) visited.insert(id);
      for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::follow_directory_symlink, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        std::error_code e2;
        if (it->is_directory(e2)) {
          bool enter = true;
          if (it->is_symlink(e2)) {  // a link back into the tree: its directory is walked where it is
            const fs::path target = fs::canonical(it->path(), e2);
            enter = !e2 && !inside(target, tree);
          }
          DirId id;
          enter = enter && dir_id(it->path(), id) && visited.insert(id).second;
          if (!enter) it.disable_recursion_pending();
          continue;
        }
        if (is_image_file(it->path()))
          found.emplace_back(it->path().parent_path().string(), it->path().filename().string());
      }
      if (ec) input_error(name_, ": cannot list ", root.string(), " (", ec.message(), ")");
      std::sort(found.begin(), found.end());
      if (found.empty()) empty.push_back(class_names_[k]);
      for (const auto& [parent, file] : found) {
        files_.push_back((fs::path(parent) / file).string());
        labels_.push_back(static_cast<std::int64_t>(k));
      }
    }
    if (!empty.empty()) {
      std::string list;
      for (const std::string& e : empty) list += (list.empty() ? "" : ", ") + e;
      input_error(name_, ": no .jpg/.jpeg/.png files in the class director", empty.size() == 1 ? "y " : "ies ", list);
    }
  }
  std::int64_t size() const override { return static_cast<std::int64_t>(files_.size()); }
  std::int64_t label(std::int64_t i) const override { return labels_.at(i); }
  Image8 image(std::int64_t i) const override {
    if (i < 0 || i >= size()) input_error(name_, ": no image ", i, " (", size(), " images)");
    Image rgb = decode_image(files_[i]);
    return Image8{rgb.height, rgb.width, 3, std::move(rgb.rgb)};
  }

 private:
  std::vector<std::string> files_;
  std::vector<std::int64_t> labels_;
};

}  // namespace

std::unique_ptr<Dataset> open_dataset(const std::string& spec) {
  const std::string forms =
      "expected fashion-mnist:train, fashion-mnist:test, imagefolder:DIR or a directory";
  if (spec == "fashion-mnist:train") return std::make_unique<FashionMnist>("train");
  if (spec == "fashion-mnist:test") return std::make_unique<FashionMnist>("test");
  if (spec.starts_with("imagefolder:")) {
    const std::string dir = spec.substr(12);
    if (dir.empty()) input_error("dataset \"", spec, "\": no directory after imagefolder: (", forms, ")");
    return std::make_unique<ImageFolder>(dir);
  }
  std::error_code ec;
  if (!spec.starts_with("fashion-mnist") && fs::is_directory(spec, ec)) return std::make_unique<ImageFolder>(spec);
  input_error("dataset \"", spec, "\": neither a known dataset nor a directory (", forms, ")");
}

// -------------------------------------------------------------- Loader ----

namespace {

// Streams of random numbers, kept apart by a tag in their seeds.
enum Stream : std::uint64_t { kShuffle = 1, kSample = 2, kBatch = 3 };

void check_options(const Dataset& data, const Transform& t, const Mixing& m, std::int64_t batch_size) {
  const std::string& n = data.name();
  auto probability = [&](double p, const char* what) {
    if (!(p >= 0 && p <= 1)) input_error(n, ": ", what, " ", p, ", expected a probability in [0, 1]");
  };
  if (data.size() <= 0) input_error(n, ": the dataset is empty");
  if (data.class_names().empty()) input_error(n, ": the dataset has no classes");
  if (batch_size < 1) input_error(n, ": batch size ", batch_size, ", expected at least 1");
  if (t.height < 1 || t.width < 1 || t.height > 65535 || t.width > 65535 ||
      static_cast<std::int64_t>(t.height) * t.width > (std::int64_t{1} << 28))
    input_error(n, ": transform size ", t.height, "x", t.width, ", expected 1..65535 a side and at most 2^28 pixels");
  if (t.channels != 1 && t.channels != 3) input_error(n, ": transform channels ", t.channels, ", expected 1 or 3");
  for (int c = 0; c < t.channels; ++c)
    if (!(t.std[c] != 0 && std::isfinite(t.std[c]) && std::isfinite(t.mean[c])))
      input_error(n, ": normalisation mean ", t.mean[c], " std ", t.std[c], " for channel ", c,
                  ", expected finite values and std ≠ 0");
  if (t.random_resized_crop &&
      !(t.crop_scale_min > 0 && t.crop_scale_min <= t.crop_scale_max && t.crop_scale_max <= 1 &&
        t.crop_ratio_min > 0 && t.crop_ratio_min <= t.crop_ratio_max && std::isfinite(t.crop_ratio_max)))
    input_error(n, ": RandomResizedCrop scale [", t.crop_scale_min, ", ", t.crop_scale_max, "] ratio [",
                t.crop_ratio_min, ", ", t.crop_ratio_max, "], expected 0 < scale min ≤ max ≤ 1, 0 < ratio min ≤ max");
  if (t.random_crop_padding < 0 || t.random_crop_padding > 65535)
    input_error(n, ": random crop padding ", t.random_crop_padding, ", expected 0..65535");
  probability(t.hflip, "horizontal flip probability");
  probability(t.random_erasing, "random erasing probability");
  if (t.rand_augment_ops < 0 || t.rand_augment_ops > 100)
    input_error(n, ": RandAugment ops ", t.rand_augment_ops, ", expected 0..100");
  if (!(t.rand_augment_magnitude >= 0 && t.rand_augment_magnitude <= 10))
    input_error(n, ": RandAugment magnitude ", t.rand_augment_magnitude, ", expected 0..10");
  if (!(m.mixup_alpha >= 0 && m.cutmix_alpha >= 0 && std::isfinite(m.mixup_alpha) && std::isfinite(m.cutmix_alpha)))
    input_error(n, ": mixup alpha ", m.mixup_alpha, " cutmix alpha ", m.cutmix_alpha, ", expected finite values ≥ 0");
  probability(m.prob, "mixing probability");
  probability(m.switch_prob, "mixing switch probability");
}

// One training sample: decode, then (each step only when enabled) grey
// conversion, RandomResizedCrop or resize, RGB replication, padded random
// crop, horizontal flip, RandAugment, normalisation, RandomErasing: the order
// of timm's transforms_imagenet_train. `out`: channels·height·width floats.
void transform_sample(const Dataset& data, std::int64_t index, const Transform& t, Rng& rng, float* out) {
  Image8 img = data.image(index);
  if (img.height <= 0 || img.width <= 0 || (img.channels != 1 && img.channels != 3) ||
      img.pixels.size() != static_cast<std::size_t>(img.height) * img.width * img.channels)
    runtime_error(data.name(), ": image ", index, " is ", img.height, "x", img.width, "x", img.channels, " with ",
                  img.pixels.size(), " bytes");
  // Grey output: convert first (less to resample). RGB output from a grey
  // image: replicate after the resize, which gives the same pixels.
  if (t.channels == 1 && img.channels == 3) img = to_grey(img);
  CropBox box{0, 0, img.height, img.width};
  if (t.random_resized_crop)
    box = random_resized_crop_params(img.height, img.width, t.crop_scale_min, t.crop_scale_max, t.crop_ratio_min,
                                     t.crop_ratio_max, rng);
  img = resize_bicubic(img, box, t.height, t.width);
  if (t.channels == 3 && img.channels == 1) img = to_rgb(img);
  if (t.random_crop_padding > 0) img = pad_random_crop(img, t.random_crop_padding, rng);
  if (t.hflip > 0 && rng.uniform() < t.hflip) img = hflip(img);
  if (t.rand_augment_ops > 0) {
    std::array<std::uint8_t, 3> fill{};  // timm: img_mean = round(255·mean)
    for (int c = 0; c < 3; ++c) fill[c] = static_cast<std::uint8_t>(std::clamp(std::nearbyint(t.mean[c]), 0.0f, 255.0f));
    rand_augment(img, t.rand_augment_ops, t.rand_augment_magnitude, 0.5, fill, rng);
  }
  normalise(img, t.mean, t.std, out);
  if (t.random_erasing > 0) random_erasing(out, t.channels, t.height, t.width, t.random_erasing, rng);
}

// timm Mixup._mix_batch (mode 'batch', correct_lam): each sample is mixed with
// the sample at the mirrored batch position (position B − 1 − j of the whole
// batch for position j; flip_input/flip_targets hold those samples, row for
// row, so that a shard of the batch mixes as the whole batch does). Mixup: x ← λ·x + (1 − λ)·x_flip,
// λ ~ Beta(α, α). CutMix: the box of rand_bbox (sides int(H·√(1−λ)),
// int(W·√(1−λ)), centre uniform, clipped to the image) is taken from x_flip,
// and λ becomes 1 − box area / image area. Targets: λ·y + (1 − λ)·y_flip.
void mix_batch(const Mixing& m, Rng& rng, Tensor& input, Tensor& targets, const Tensor& flip_input,
               const Tensor& flip_targets) {
  if (!(m.mixup_alpha > 0 || m.cutmix_alpha > 0) || !(rng.uniform() < m.prob)) return;
  bool cutmix = false;
  double lam;
  if (m.mixup_alpha > 0 && m.cutmix_alpha > 0) {
    cutmix = rng.uniform() < m.switch_prob;
    lam = cutmix ? rng.beta(m.cutmix_alpha, m.cutmix_alpha) : rng.beta(m.mixup_alpha, m.mixup_alpha);
  } else if (m.mixup_alpha > 0) {
    lam = rng.beta(m.mixup_alpha, m.mixup_alpha);
  } else {
    cutmix = true;
    lam = rng.beta(m.cutmix_alpha, m.cutmix_alpha);
  }
  if (lam == 1) return;
  const std::int64_t B = input.dim(0), C = input.dim(1), H = input.dim(2), W = input.dim(3);
  const float* x = flip_input.f32();  // row b: the sample at the mirrored position of row b
  float* y = input.f32();
  const std::int64_t n = C * H * W;
  if (cutmix) {
    const double ratio = std::sqrt(1 - lam);
    const std::int64_t cut_h = static_cast<std::int64_t>(H * ratio), cut_w = static_cast<std::int64_t>(W * ratio);
    const std::int64_t cy = rng.integer(0, H - 1), cx = rng.integer(0, W - 1);
    const std::int64_t y0 = std::clamp(cy - cut_h / 2, std::int64_t{0}, H), y1 = std::clamp(cy + cut_h / 2, std::int64_t{0}, H);
    const std::int64_t x0 = std::clamp(cx - cut_w / 2, std::int64_t{0}, W), x1 = std::clamp(cx + cut_w / 2, std::int64_t{0}, W);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t r = y0; r < y1; ++r)
          for (std::int64_t q = x0; q < x1; ++q) y[b * n + (c * H + r) * W + q] = x[b * n + (c * H + r) * W + q];
    lam = 1 - static_cast<double>((y1 - y0) * (x1 - x0)) / static_cast<double>(H * W);
  } else {
    const float a = static_cast<float>(lam), b_weight = static_cast<float>(1 - lam);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < n; ++i) y[b * n + i] = a * y[b * n + i] + b_weight * x[b * n + i];
  }
  const std::int64_t K = targets.dim(1);
  const float* t0 = flip_targets.f32();
  float* t = targets.f32();
  const float a = static_cast<float>(lam), b_weight = static_cast<float>(1 - lam);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t k = 0; k < K; ++k) t[b * K + k] = a * t[b * K + k] + b_weight * t0[b * K + k];
}

}  // namespace

struct Loader::Impl {
  Impl(const Dataset& data_, const Transform& transform_, const Mixing& mixing_, std::int64_t batch_size_,
       std::uint64_t seed_, bool shuffle_, bool drop_last_, int threads_)
      : data(data_), transform(transform_), mixing(mixing_), batch_size(batch_size_), seed(seed_), shuffle(shuffle_),
        drop_last(drop_last_), threads(threads_) {}
  const Dataset& data;
  Transform transform;
  Mixing mixing;
  std::int64_t batch_size;
  std::uint64_t seed;
  bool shuffle, drop_last;
  int threads;

  // The permutation of the last epoch asked for (Fisher–Yates from (seed, epoch)).
  mutable std::mutex mutex;
  mutable std::int64_t cached_epoch = -1;
  mutable std::shared_ptr<const std::vector<std::int64_t>> cached_order;

  std::shared_ptr<const std::vector<std::int64_t>> order(std::int64_t epoch) const {
    std::lock_guard<std::mutex> lock(mutex);
    if (cached_epoch != epoch || !cached_order) {
      auto perm = std::make_shared<std::vector<std::int64_t>>(data.size());
      for (std::int64_t i = 0; i < data.size(); ++i) (*perm)[i] = i;
      Rng rng(mix_seed({kShuffle, seed, static_cast<std::uint64_t>(epoch)}));
      for (std::int64_t i = data.size() - 1; i > 0; --i) std::swap((*perm)[i], (*perm)[rng.integer(0, i)]);
      cached_order = std::move(perm);
      cached_epoch = epoch;
    }
    return cached_order;
  }
};

Loader::Loader(const Dataset& data, Transform transform, Mixing mixing, std::int64_t batch_size, std::uint64_t seed,
               bool shuffle, bool drop_last, int threads) {
  check_options(data, transform, mixing, batch_size);
  if (drop_last && data.size() < batch_size)
    input_error(data.name(), ": ", data.size(), " samples make no full batch of ", batch_size,
                " (drop_last): expected at least one");
  if (threads < 0) input_error(data.name(), ": loader threads ", threads, ",expected ≥ 0 (0 = every core)");
  impl_ = std::make_unique<Impl>(data, transform, mixing, batch_size, seed, shuffle, drop_last, threads);
}

Loader::~Loader() = default;

std::int64_t Loader::batches_per_epoch() const {
  const std::int64_t n = impl_->data.size(), b = impl_->batch_size;
  return impl_->drop_last ? n / b : (n + b - 1) / b;
}

Batch Loader::batch(std::int64_t epoch, std::int64_t index) const {
  const std::int64_t first = index * impl_->batch_size;
  return batch(epoch, index, 0, std::min(impl_->batch_size, impl_->data.size() - std::max<std::int64_t>(first, 0)));
}

Batch Loader::batch(std::int64_t epoch, std::int64_t index, std::int64_t shard_begin, std::int64_t shard_size) const {
  const Impl& im = *impl_;
  const Transform& t = im.transform;
  if (epoch < 0 || index < 0 || index >= batches_per_epoch())
    input_error(im.data.name(), ": batch ", index, " of epoch ", epoch, ", expected epoch ≥ 0 and batch 0..",
                batches_per_epoch() - 1);
  const std::int64_t first = index * im.batch_size;
  const std::int64_t B = std::min(im.batch_size, im.data.size() - first);  // the whole batch
  if (shard_begin < 0 || shard_size < 1 || shard_begin + shard_size > B)
    input_error(im.data.name(), ": samples ", shard_begin, "..", shard_begin + shard_size - 1, " of batch ", index,
                ", expected a range within 0..", B - 1);
  const std::int64_t K = static_cast<std::int64_t>(im.data.class_names().size());
  std::shared_ptr<const std::vector<std::int64_t>> order;
  if (im.shuffle) order = im.order(epoch);
  const std::int64_t sample_floats = static_cast<std::int64_t>(t.channels) * t.height * t.width;
  const int threads = Context{im.threads}.resolved_threads();

  // Samples at batch positions first + j, j in `positions`, into rows of input/targets. Each depends on
  // (seed, epoch, position in the epoch) only, so neither the split over threads nor the shard can change it.
  // Errors are collected and the first sample's error rethrown.
  const auto make = [&](const std::vector<std::int64_t>& positions, Tensor& input, Tensor& labels_out,
                        Tensor& targets_out) {
    const std::int64_t n = static_cast<std::int64_t>(positions.size());
    input = Tensor(DType::F32, {n, t.channels, t.height, t.width});
    labels_out = Tensor(DType::I64, {n});
    targets_out = Tensor(DType::F32, {n, K});
    float* in = input.f32();
    std::int64_t* labels = labels_out.data<std::int64_t>();
    std::vector<std::exception_ptr> errors(n);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (std::int64_t j = 0; j < n; ++j) {
      try {
        const std::int64_t position = first + positions[j];
        const std::int64_t sample = order ? (*order)[position] : position;
        Rng rng(mix_seed({kSample, im.seed, static_cast<std::uint64_t>(epoch), static_cast<std::uint64_t>(position)}));
        transform_sample(im.data, sample, t, rng, in + j * sample_floats);
        labels[j] = im.data.label(sample);
      } catch (...) {
        errors[j] = std::current_exception();
      }
    }
    for (const std::exception_ptr& e : errors)
      if (e) std::rethrow_exception(e);
    float* targets = targets_out.f32();
    for (std::int64_t j = 0; j < n; ++j) {
      if (labels[j] < 0 || labels[j] >= K)
        runtime_error(im.data.name(), ": label ", labels[j], " outside the ", K, " classes");
      targets[j * K + labels[j]] = 1;
    }
  };

  Batch out;
  out.epoch = epoch;
  out.index = index;
  std::vector<std::int64_t> own(shard_size);
  for (std::int64_t j = 0; j < shard_size; ++j) own[j] = shard_begin + j;
  make(own, out.input, out.labels, out.targets);
  if (im.mixing.mixup_alpha > 0 || im.mixing.cutmix_alpha > 0) {
    // The mirrored samples: the shard's own rows reversed when the shard is its own mirror (the whole batch,
    // or the middle shard of an odd split), else made here (they are another shard's, at no extra draw).
    Tensor flip_input, flip_labels, flip_targets;
    if (2 * shard_begin + shard_size == B) {
      flip_input = Tensor(DType::F32, out.input.shape());
      flip_targets = Tensor(DType::F32, out.targets.shape());
      for (std::int64_t j = 0; j < shard_size; ++j) {
        const std::int64_t m = shard_size - 1 - j;
        std::copy(out.input.f32() + m * sample_floats, out.input.f32() + (m + 1) * sample_floats,
                  flip_input.f32() + j * sample_floats);
        std::copy(out.targets.f32() + m * K, out.targets.f32() + (m + 1) * K, flip_targets.f32() + j * K);
      }
    } else {
      std::vector<std::int64_t> mirrored(shard_size);
      for (std::int64_t j = 0; j < shard_size; ++j) mirrored[j] = B - 1 - own[j];
      make(mirrored, flip_input, flip_labels, flip_targets);
    }
    Rng rng(mix_seed({kBatch, im.seed, static_cast<std::uint64_t>(epoch), static_cast<std::uint64_t>(index)}));
    mix_batch(im.mixing, rng, out.input, out.targets, flip_input, flip_targets);
  }
  return out;
}

}  // namespace vrwkv::train
