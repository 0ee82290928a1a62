// Tests of the training data pipeline (src/train/data.*, src/train/augment.*):
// Fashion-MNIST IDX files (synthetic ones written here, damaged ones, and the
// real dataset when installed), ImageFolder trees, the loader's determinism,
// the transform's pieces and batch mixing.
#include <gtest/gtest.h>
#include <png.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "train/augment.hpp"
#include "common.hpp"
#include "vrwkv/data.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::train {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

// ------------------------------------------------------------ helpers ----

// A fresh temporary directory, removed with its contents at the end of the test.
struct TempDir : vrwkv::test::TempDir {
  TempDir() : vrwkv::test::TempDir("vrwkv_test_data") {}
};

// Sets an environment variable for the scope, then restores it.
struct EnvGuard {
  std::string name;
  std::optional<std::string> old;
  EnvGuard(const std::string& n, const std::string& value) : name(n) {
    if (const char* v = std::getenv(n.c_str())) old = v;
    setenv(n.c_str(), value.c_str(), 1);
  }
  ~EnvGuard() {
    if (old)
      setenv(name.c_str(), old->c_str(), 1);
    else
      unsetenv(name.c_str());
  }
};

void write_gz(const fs::path& path, const Bytes& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  if (!bytes.empty()) {
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), int(bytes.size()));
  }
  gzclose(f);
}

Bytes read_file(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), {});
}

void write_file(const fs::path& path, const Bytes& bytes) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void put_be32(Bytes& b, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::uint8_t>(v >> s));
}

Bytes idx_labels(std::uint32_t magic, std::uint32_t count, const Bytes& labels) {
  Bytes b;
  put_be32(b, magic);
  put_be32(b, count);
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

Bytes idx_images(std::uint32_t magic, std::uint32_t count, std::uint32_t rows, std::uint32_t cols, const Bytes& pixels) {
  Bytes b;
  put_be32(b, magic);
  put_be32(b, count);
  put_be32(b, rows);
  put_be32(b, cols);
  b.insert(b.end(), pixels.begin(), pixels.end());
  return b;
}

// Pixel p of synthetic image i.
std::uint8_t synthetic_pixel(int i, int p) { return static_cast<std::uint8_t>((i * 37 + p * 7) % 256); }

// A consistent synthetic Fashion-MNIST split of n images (label i % 10) in dir.
void write_fashion_split(const fs::path& dir, const std::string& prefix, int n) {
  Bytes labels, pixels;
  for (int i = 0; i < n; ++i) {
    labels.push_back(static_cast<std::uint8_t>(i % 10));
    for (int p = 0; p < 784; ++p) pixels.push_back(synthetic_pixel(i, p));
  }
  write_gz(dir / (prefix + "-labels-idx1-ubyte.gz"), idx_labels(2049, n, labels));
  write_gz(dir / (prefix + "-images-idx3-ubyte.gz"), idx_images(2051, n, 28, 28, pixels));
}

// Asserts that `f` throws Error(Input) whose one-line message contains every string of `texts`.
void expect_input_error(const std::function<void()>& f, const std::vector<std::string>& texts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning " << texts.front();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), Error::Kind::Input) << e.what();
    const std::string message = e.what();
    for (const std::string& t : texts) EXPECT_NE(message.find(t), std::string::npos) << message << " (expected \"" << t << "\")";
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

void write_png(const fs::path& path, const Image8& img) {
  png_image im{};
  im.version = PNG_IMAGE_VERSION;
  im.width = img.width;
  im.height = img.height;
  im.format = img.channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  ASSERT_NE(png_image_write_to_file(&im, path.c_str(), 0, img.pixels.data(), 0, nullptr), 0) << im.message;
}

Image8 constant_image(int h, int w, int c, std::uint8_t v) { return Image8{h, w, c, Bytes(std::size_t(h) * w * c, v)}; }

Image8 random_image(int h, int w, int c, std::uint32_t seed) {
  Rng rng(seed);
  Image8 img{h, w, c, Bytes(std::size_t(h) * w * c)};
  for (auto& p : img.pixels) p = static_cast<std::uint8_t>(rng.integer(0, 255));
  return img;
}

// Images held in memory, for the loader and transform tests.
class MemoryDataset final : public Dataset {
 public:
  MemoryDataset(std::vector<Image8> images, std::vector<std::int64_t> labels, int classes)
      : images_(std::move(images)), labels_(std::move(labels)) {
    for (int k = 0; k < classes; ++k) class_names_.push_back("class" + std::to_string(k));
    name_ = "memory";
  }
  std::int64_t size() const override { return static_cast<std::int64_t>(images_.size()); }
  std::int64_t label(std::int64_t i) const override { return labels_.at(i); }
  Image8 image(std::int64_t i) const override { return images_.at(i); }

 private:
  std::vector<Image8> images_;
  std::vector<std::int64_t> labels_;
};

// n images of mixed sizes and channel counts, label i % classes.
MemoryDataset mixed_dataset(int n, int classes) {
  std::vector<Image8> images;
  std::vector<std::int64_t> labels;
  for (int i = 0; i < n; ++i) {
    images.push_back(random_image(20 + 3 * (i % 5), 17 + 5 * (i % 4), i % 3 == 0 ? 1 : 3, 100 + i));
    labels.push_back(i % classes);
  }
  return MemoryDataset(std::move(images), std::move(labels), classes);
}

Transform plain_transform(int h, int w, int channels) {
  Transform t;
  t.height = h;
  t.width = w;
  t.channels = channels;
  return t;
}

Transform full_augmentation(int h, int w) {
  Transform t = plain_transform(h, w, 3);
  t.random_resized_crop = true;
  t.hflip = 0.5;
  t.rand_augment_ops = 2;
  t.random_erasing = 0.25;
  return t;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// ------------------------------------------------------ Fashion-MNIST ----

TEST(DataFashionMnist, ReadsSyntheticIdxFiles) {
  TempDir dir;
  write_fashion_split(dir.path, "train", 23);
  write_fashion_split(dir.path, "t10k", 4);
  EnvGuard env("VRWKV_FASHION_MNIST_DIR", dir.path.string());

  const auto train = open_dataset("fashion-mnist:train");
  EXPECT_EQ(train->name(), "fashion-mnist:train");
  ASSERT_EQ(train->size(), 23);
  EXPECT_EQ(train->class_names(), fashion_mnist_classes());
  ASSERT_EQ(fashion_mnist_classes().size(), 10u);
  EXPECT_EQ(fashion_mnist_classes()[0], "T-shirt/top");
  EXPECT_EQ(fashion_mnist_classes()[9], "Ankle boot");
  for (int i = 0; i < 23; ++i) {
    EXPECT_EQ(train->label(i), i % 10);
    const Image8 img = train->image(i);
    ASSERT_EQ(img.height, 28);
    ASSERT_EQ(img.width, 28);
    ASSERT_EQ(img.channels, 1);
    for (int p = 0; p < 784; ++p) ASSERT_EQ(img.pixels[p], synthetic_pixel(i, p)) << "image " << i << " pixel " << p;
  }
  const auto test = open_dataset("fashion-mnist:test");
  EXPECT_EQ(test->name(), "fashion-mnist:test");
  EXPECT_EQ(test->size(), 4);
  EXPECT_EQ(test->image(3).pixels[5], synthetic_pixel(3, 5));
}

TEST(DataFashionMnist, DamagedFilesAreInputErrorsNamingTheFile) {
  const std::string labels_name = "train-labels-idx1-ubyte.gz", images_name = "train-images-idx3-ubyte.gz";
  Bytes labels(5, 3), pixels(5 * 784, 200);
  struct Case {
    std::string what;
    Bytes labels_file, images_file;
    std::string bad_file, text;
  };
  Bytes eleven = labels;
  eleven[2] = 10;
  const std::vector<Case> cases = {
      {"label magic", idx_labels(2051, 5, labels), idx_images(2051, 5, 28, 28, pixels), labels_name, "2049"},
      {"image magic", idx_labels(2049, 5, labels), idx_images(2049, 5, 28, 28, pixels), images_name, "2051"},
      {"truncated images", idx_labels(2049, 5, labels), idx_images(2051, 5, 28, 28, Bytes(4 * 784 + 100, 1)),
       images_name, "expected"},
      {"trailing bytes", idx_labels(2049, 5, labels), idx_images(2051, 5, 28, 28, Bytes(5 * 784 + 1, 1)),
       images_name, "expected"},
      {"truncated labels", idx_labels(2049, 5, Bytes(4, 1)), idx_images(2051, 5, 28, 28, pixels), labels_name,
       "expected"},
      {"short header", Bytes{0, 0, 8}, idx_images(2051, 5, 28, 28, pixels), labels_name, "header"},
      {"count mismatch", idx_labels(2049, 4, Bytes(4, 1)), idx_images(2051, 5, 28, 28, pixels), labels_name,
       "same count"},
      {"image size", idx_labels(2049, 5, labels), idx_images(2051, 5, 27, 28, Bytes(5 * 27 * 28, 1)), images_name,
       "28x28"},
      {"label range", idx_labels(2049, 5, eleven), idx_images(2051, 5, 28, 28, pixels), labels_name, "0..9"},
      {"huge count", idx_labels(2049, 5, labels), idx_images(2051, 0xffffffffu, 28, 28, pixels), images_name,
       "expected"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    TempDir dir;
    write_gz(dir.path / labels_name, c.labels_file);
    write_gz(dir.path / images_name, c.images_file);
    EnvGuard env("VRWKV_FASHION_MNIST_DIR", dir.path.string());
    expect_input_error([] { open_dataset("fashion-mnist:train"); }, {c.bad_file, c.text});
  }
}

TEST(DataFashionMnist, DamagedGzipAndMissingFiles) {
  TempDir dir;
  write_fashion_split(dir.path, "train", 50);
  EnvGuard env("VRWKV_FASHION_MNIST_DIR", dir.path.string());
  const fs::path images = dir.path / "train-images-idx3-ubyte.gz";
  const Bytes good = read_file(images);

  // The compressed stream cut short: zlib reports an unexpected end of file.
  write_file(images, Bytes(good.begin(), good.begin() + good.size() / 2));
  expect_input_error([] { open_dataset("fashion-mnist:train"); }, {images.string()});
  // A damaged byte in the compressed data (data error, CRC error or a bad header).
  Bytes flipped = good;
  flipped[flipped.size() / 2] ^= 0x5a;
  flipped[flipped.size() - 6] ^= 0x5a;  // inside the CRC-32 trailer
  write_file(images, flipped);
  expect_input_error([] { open_dataset("fashion-mnist:train"); }, {images.string()});
  // Missing files.
  fs::remove(images);
  expect_input_error([] { open_dataset("fashion-mnist:train"); }, {images.string(), "VRWKV_FASHION_MNIST_DIR"});
  expect_input_error([] { open_dataset("fashion-mnist:test"); }, {"t10k-labels-idx1-ubyte.gz"});
}

TEST(DataFashionMnist, RealDatasetWhenInstalled) {
  const char* env = std::getenv("VRWKV_FASHION_MNIST_DIR");
  const fs::path dir = env != nullptr && *env != '\0' ? fs::path(env) : fs::path("/usr/share/datasets/fashion-mnist");
  if (!fs::exists(dir / "train-images-idx3-ubyte.gz") || !fs::exists(dir / "t10k-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "Fashion-MNIST is not installed in " << dir;
  const auto train = open_dataset("fashion-mnist:train");
  const auto test = open_dataset("fashion-mnist:test");
  ASSERT_EQ(train->size(), 60000);
  ASSERT_EQ(test->size(), 10000);
  EXPECT_EQ(train->label(0), 9);
  EXPECT_EQ(train->class_names()[train->label(0)], "Ankle boot");
  EXPECT_EQ(test->label(0), 9);
  std::vector<int> counts(10);
  for (std::int64_t i = 0; i < train->size(); ++i) ++counts[train->label(i)];
  for (int k = 0; k < 10; ++k) EXPECT_EQ(counts[k], 6000) << "class " << k;
  const Image8 img = train->image(0);
  EXPECT_EQ(img.height, 28);
  EXPECT_EQ(img.width, 28);
  EXPECT_EQ(img.channels, 1);
  EXPECT_GT(*std::max_element(img.pixels.begin(), img.pixels.end()), 200);

  // A real batch: grey 28×28, plain transform.
  Transform t = plain_transform(28, 28, 1);
  t.mean = {72.94f, 0, 0};
  t.std = {90.02f, 1, 1};
  const Loader loader(*test, t, Mixing{}, 64, 1, true, false, 2);
  EXPECT_EQ(loader.batches_per_epoch(), 157);
  const Batch b = loader.batch(0, 156);
  EXPECT_EQ(b.input.shape(), (Shape{16, 1, 28, 28}));
}

// --------------------------------------------------------- ImageFolder ----

TEST(DataImageFolder, SortedClassesAndFiles) {
  TempDir dir;
  const fs::path root = dir.path / "images";
  fs::create_directories(root / "beta" / "nested");
  fs::create_directories(root / "alpha");
  fs::create_directories(root / "gamma");
  // Each PNG is constant, its value telling which file it is.
  write_png(root / "beta" / "b.png", constant_image(5, 7, 3, 20));
  write_png(root / "beta" / "A.PNG", constant_image(6, 4, 3, 10));  // upper case sorts first
  write_png(root / "beta" / "nested" / "c.png", constant_image(3, 3, 1, 30));
  write_png(root / "alpha" / "z.png", constant_image(4, 4, 3, 40));
  fs::copy_file(fs::path(VRWKV_SOURCE_DIR) / "data" / "samples" / "rocket.jpg", root / "gamma" / "rocket.JPEG");
  write_file(root / "beta" / "notes.txt", Bytes{'h', 'i'});
  write_file(root / "readme.txt", Bytes{'h', 'i'});

  for (const std::string& spec : {"imagefolder:" + root.string(), root.string()}) {
    SCOPED_TRACE(spec);
    const auto data = open_dataset(spec);
    EXPECT_EQ(data->name(), "imagefolder:" + root.string());
    EXPECT_EQ(data->class_names(), (std::vector<std::string>{"alpha", "beta", "gamma"}));
    ASSERT_EQ(data->size(), 5);
    const std::vector<std::int64_t> labels = {0, 1, 1, 1, 2};
    const std::vector<int> values = {40, 10, 20, 30, -1};
    for (int i = 0; i < 5; ++i) {
      EXPECT_EQ(data->label(i), labels[i]) << i;
      const Image8 img = data->image(i);
      EXPECT_EQ(img.channels, 3);
      EXPECT_EQ(img.pixels.size(), std::size_t(img.height) * img.width * 3);
      if (values[i] >= 0) {
        EXPECT_EQ(int{img.pixels[0]}, values[i]) << i;
      }
    }
    EXPECT_EQ(data->image(1).height, 6);
    EXPECT_EQ(data->image(1).width, 4);
  }
}

TEST(DataImageFolder, BadTreesAndSpecs) {
  TempDir dir;
  const fs::path empty = dir.path / "empty";
  fs::create_directories(empty);
  expect_input_error([&] { open_dataset("imagefolder:" + empty.string()); }, {empty.string(), "no class directories"});

  const fs::path no_images = dir.path / "no_images";
  fs::create_directories(no_images / "cat");
  fs::create_directories(no_images / "dog");
  write_png(no_images / "dog" / "d.png", constant_image(2, 2, 3, 1));
  write_file(no_images / "cat" / "x.txt", Bytes{1});
  expect_input_error([&] { open_dataset(no_images.string()); }, {no_images.string(), "cat", ".png"});

  expect_input_error([] { open_dataset("fashion-mnist:val"); }, {"fashion-mnist:val", "fashion-mnist:train",
                                                                 "fashion-mnist:test", "imagefolder:DIR"});
  expect_input_error([] { open_dataset("imagefolder:"); }, {"imagefolder:"});
  const std::string missing = (dir.path / "missing").string();
  expect_input_error([&] { open_dataset("imagefolder:" + missing); }, {missing, "not a directory"});
  expect_input_error([&] { open_dataset(missing); }, {missing, "imagefolder:DIR"});

  // A damaged image is reported when it is read, by the dataset and through the loader.
  const fs::path bad = dir.path / "bad";
  fs::create_directories(bad / "one");
  write_file(bad / "one" / "broken.png", Bytes{0x89, 'P', 'N', 'G', 1, 2, 3});
  const auto data = open_dataset(bad.string());
  expect_input_error([&] { data->image(0); }, {"broken.png"});
  const Loader loader(*data, plain_transform(8, 8, 3), Mixing{}, 1, 0, false, false, 2);
  expect_input_error([&] { loader.batch(0, 0); }, {"broken.png"});
}

// -------------------------------------------------------------- Loader ----

TEST(DataLoader, BatchesPerEpochAndTheLastPartialBatch) {
  const MemoryDataset data = mixed_dataset(10, 3);
  const Loader keep(data, plain_transform(8, 6, 3), Mixing{}, 4, 7, false, false, 1);
  const Loader drop(data, plain_transform(8, 6, 3), Mixing{}, 4, 7, false, true, 1);
  EXPECT_EQ(keep.batches_per_epoch(), 3);
  EXPECT_EQ(drop.batches_per_epoch(), 2);
  const Batch last = keep.batch(2, 2);
  EXPECT_EQ(last.epoch, 2);
  EXPECT_EQ(last.index, 2);
  EXPECT_EQ(last.input.shape(), (Shape{2, 3, 8, 6}));
  EXPECT_EQ(last.labels.shape(), (Shape{2}));
  EXPECT_EQ(last.targets.shape(), (Shape{2, 3}));
  EXPECT_EQ(last.labels.data<std::int64_t>()[0], 8 % 3);  // unshuffled: positions 8, 9
  EXPECT_EQ(last.labels.data<std::int64_t>()[1], 9 % 3);
  EXPECT_EQ(drop.batch(0, 1).input.dim(0), 4);
  expect_input_error([&] { drop.batch(0, 2); }, {"batch 2"});
  expect_input_error([&] { keep.batch(-1, 0); }, {"epoch -1"});
  expect_input_error([&] { Loader(data, plain_transform(8, 6, 2), Mixing{}, 4, 7, false, false); }, {"channels 2"});
  expect_input_error([&] { Loader(data, plain_transform(8, 6, 3), Mixing{}, 0, 7, false, false); }, {"batch size 0"});
  expect_input_error([&] { Loader(data, plain_transform(8, 6, 3), Mixing{}, 11, 7, false, true); }, {"no full batch"});
}

TEST(DataLoader, ShuffleIsAPermutationThatChangesWithTheEpoch) {
  // Label = index, so the labels show the order.
  std::vector<Image8> images(23, constant_image(4, 4, 1, 0));
  std::vector<std::int64_t> labels(23);
  for (int i = 0; i < 23; ++i) labels[i] = i;
  const MemoryDataset data(images, labels, 23);
  auto epoch_order = [&](const Loader& l, std::int64_t epoch) {
    std::vector<std::int64_t> order;
    for (std::int64_t b = 0; b < l.batches_per_epoch(); ++b) {
      const Batch batch = l.batch(epoch, b);
      for (std::int64_t j = 0; j < batch.labels.dim(0); ++j) order.push_back(batch.labels.data<std::int64_t>()[j]);
    }
    return order;
  };
  const Loader shuffled(data, plain_transform(4, 4, 1), Mixing{}, 5, 42, true, false, 2);
  const std::vector<std::int64_t> e0 = epoch_order(shuffled, 0), e1 = epoch_order(shuffled, 1);
  EXPECT_EQ(std::set<std::int64_t>(e0.begin(), e0.end()).size(), 23u);
  EXPECT_EQ(std::set<std::int64_t>(e1.begin(), e1.end()).size(), 23u);
  EXPECT_NE(e0, e1);
  EXPECT_EQ(epoch_order(shuffled, 0), e0);  // after another epoch was cached
  const Loader other_seed(data, plain_transform(4, 4, 1), Mixing{}, 5, 43, true, false, 2);
  EXPECT_NE(epoch_order(other_seed, 0), e0);
  const Loader in_order(data, plain_transform(4, 4, 1), Mixing{}, 5, 42, false, false, 2);
  std::vector<std::int64_t> identity(23);
  for (int i = 0; i < 23; ++i) identity[i] = i;
  EXPECT_EQ(epoch_order(in_order, 3), identity);
}

TEST(DataLoader, DeterministicWhateverTheThreadCount) {
  const MemoryDataset data = mixed_dataset(13, 4);
  const Mixing mixing{0.8, 1.0, 1.0, 0.5};
  const Loader one(data, full_augmentation(24, 20), mixing, 6, 2024, true, false, 1);
  const Loader two(data, full_augmentation(24, 20), mixing, 6, 2024, true, false, 2);
  const Loader three(data, full_augmentation(24, 20), mixing, 6, 2024, true, false, 3);
  for (std::int64_t epoch : {0, 5})
    for (std::int64_t index = 0; index < one.batches_per_epoch(); ++index) {
      SCOPED_TRACE(testing::Message() << "epoch " << epoch << " batch " << index);
      const Batch a = one.batch(epoch, index), again = one.batch(epoch, index);
      const Batch b = two.batch(epoch, index), c = three.batch(epoch, index);
      for (const Batch* x : {&again, &b, &c}) {
        EXPECT_TRUE(same_bits(a.input, x->input));
        EXPECT_TRUE(same_bits(a.labels, x->labels));
        EXPECT_TRUE(same_bits(a.targets, x->targets));
      }
      for (std::int64_t i = 0; i < a.input.numel(); ++i) ASSERT_TRUE(std::isfinite(a.input.f32()[i]));
    }
  // Another epoch or seed gives other augmentations.
  const Loader reseeded(data, full_augmentation(24, 20), mixing, 6, 2025, true, false, 2);
  EXPECT_FALSE(same_bits(one.batch(0, 0).input, one.batch(1, 0).input));
  EXPECT_FALSE(same_bits(one.batch(0, 0).input, reseeded.batch(0, 0).input));
}

// A rank's shard of a batch (data-parallel training) is exactly those rows of the whole batch: the same
// augmentations, and mixing with the sample at the mirrored position of the whole batch.
TEST(DataLoader, AShardIsThoseRowsOfTheWholeBatch) {
  const MemoryDataset data = mixed_dataset(13, 4);
  const Mixing mixing{0.8, 1.0, 1.0, 0.5};  // mixed every batch, Mixup or CutMix
  const Loader loader(data, full_augmentation(24, 20), mixing, 6, 2024, true, true, 2);
  const std::int64_t row = 3 * 24 * 20, K = 4;
  for (std::int64_t index = 0; index < loader.batches_per_epoch(); ++index) {
    const Batch whole = loader.batch(1, index);
    for (const auto [begin, size] : {std::pair<std::int64_t, std::int64_t>{0, 2}, {2, 2}, {4, 2}, {0, 3}, {3, 3},
                                     {1, 4}, {5, 1}, {0, 6}}) {
      SCOPED_TRACE(testing::Message() << "batch " << index << " shard " << begin << "+" << size);
      const Batch part = loader.batch(1, index, begin, size);
      ASSERT_EQ(part.input.dim(0), size);
      EXPECT_EQ(0, std::memcmp(part.input.f32(), whole.input.f32() + begin * row, size * row * sizeof(float)));
      EXPECT_EQ(0, std::memcmp(part.targets.f32(), whole.targets.f32() + begin * K, size * K * sizeof(float)));
      EXPECT_EQ(0, std::memcmp(part.labels.data<std::int64_t>(), whole.labels.data<std::int64_t>() + begin,
                               size * sizeof(std::int64_t)));
    }
  }
  expect_input_error([&] { loader.batch(0, 0, 4, 3); }, {"samples 4..6 of batch 0", "within 0..5"});
  expect_input_error([&] { loader.batch(0, 0, 0, 0); }, {"samples 0..-1"});
}

// ----------------------------------------------------------- Transform ----

TEST(DataTransform, SameSizeResizeGivesExactNormalisedValues) {
  const Image8 rgb = random_image(9, 11, 3, 5);
  const MemoryDataset data({rgb}, {0}, 2);
  Transform t = plain_transform(9, 11, 3);
  const Loader loader(data, t, Mixing{}, 1, 0, false, false, 1);
  const Batch b = loader.batch(0, 0);
  ASSERT_EQ(b.input.shape(), (Shape{1, 3, 9, 11}));
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 9; ++y)
      for (int x = 0; x < 11; ++x) {
        const float want = (static_cast<float>(rgb.pixels[(y * 11 + x) * 3 + c]) - t.mean[c]) / t.std[c];
        ASSERT_EQ(b.input.f32()[(c * 9 + y) * 11 + x], want) << c << " " << y << " " << x;
      }
  EXPECT_EQ(b.targets.f32()[0], 1.0f);
  EXPECT_EQ(b.targets.f32()[1], 0.0f);
}

TEST(DataTransform, GreyAndRgbConversion) {
  // RGB → grey: Pillow's convert("L").
  EXPECT_EQ(luma(255, 0, 0), 76);
  EXPECT_EQ(luma(0, 255, 0), 150);
  EXPECT_EQ(luma(0, 0, 255), 29);
  EXPECT_EQ(luma(255, 255, 255), 255);
  EXPECT_EQ(luma(0, 0, 0), 0);
  for (int v = 0; v < 256; ++v) ASSERT_EQ(luma(v, v, v), v);
  EXPECT_EQ(luma(10, 200, 30), (10 * 299 + 200 * 587 + 30 * 114 + 500) / 1000);

  const Image8 rgb{1, 3, 3, {255, 0, 0, 0, 255, 0, 12, 34, 56}};
  const MemoryDataset colour({rgb}, {0}, 1);
  Transform grey_t = plain_transform(1, 3, 1);
  grey_t.mean = {0, 0, 0};
  grey_t.std = {1, 1, 1};
  const Batch grey = Loader(colour, grey_t, Mixing{}, 1, 0, false, false, 1).batch(0, 0);
  ASSERT_EQ(grey.input.shape(), (Shape{1, 1, 1, 3}));
  EXPECT_EQ(grey.input.f32()[0], 76);
  EXPECT_EQ(grey.input.f32()[1], 150);
  EXPECT_EQ(grey.input.f32()[2], luma(12, 34, 56));

  // Grey → RGB: replicated, then normalised per channel.
  const Image8 g = random_image(5, 6, 1, 9);
  const MemoryDataset mono({g}, {0}, 1);
  Transform rgb_t = plain_transform(5, 6, 3);
  const Batch out = Loader(mono, rgb_t, Mixing{}, 1, 0, false, false, 1).batch(0, 0);
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 30; ++i)
      ASSERT_EQ(out.input.f32()[c * 30 + i], (static_cast<float>(g.pixels[i]) - rgb_t.mean[c]) / rgb_t.std[c]);
}

TEST(DataTransform, HorizontalFlipMirrors) {
  const MemoryDataset data = mixed_dataset(4, 2);
  Transform t = plain_transform(10, 7, 3);
  const Batch plain = Loader(data, t, Mixing{}, 4, 3, false, false, 2).batch(0, 0);
  t.hflip = 1.0;
  const Batch flipped = Loader(data, t, Mixing{}, 4, 3, false, false, 2).batch(0, 0);
  for (int b = 0; b < 4; ++b)
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < 10; ++y)
        for (int x = 0; x < 7; ++x)
          ASSERT_EQ(flipped.input.f32()[((b * 3 + c) * 10 + y) * 7 + x], plain.input.f32()[((b * 3 + c) * 10 + y) * 7 + 6 - x]);
}

TEST(DataTransform, ResizeAndRandomResizedCrop) {
  // A constant image stays constant at any size; a same-size resize is a copy.
  const Image8 flat = constant_image(31, 17, 3, 77);
  for (auto [h, w] : {std::pair{8, 8}, {64, 40}, {31, 5}}) {
    const Image8 r = resize_bicubic(flat, {0, 0, 31, 17}, h, w);
    ASSERT_EQ(r.pixels.size(), std::size_t(h) * w * 3);
    for (std::uint8_t p : r.pixels) ASSERT_EQ(p, 77);
  }
  const Image8 noise = random_image(12, 9, 1, 3);
  EXPECT_EQ(resize_bicubic(noise, {0, 0, 12, 9}, 12, 9).pixels, noise.pixels);
  // A window of the same size as the output is that crop, exactly.
  const Image8 crop = resize_bicubic(noise, {2, 3, 5, 4}, 5, 4);
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 4; ++x) ASSERT_EQ(crop.pixels[y * 4 + x], noise.pixels[(y + 2) * 9 + x + 3]);
  // Downscaling a 2×2 checkerboard of blocks by 2 averages within blocks.
  Image8 blocks = constant_image(4, 4, 1, 0);
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 4; ++x) blocks.pixels[y * 4 + x] = (y < 2) == (x < 2) ? 200 : 40;
  const Image8 half = resize_bicubic(blocks, {0, 0, 4, 4}, 2, 2);
  EXPECT_GT(half.pixels[0], 150);
  EXPECT_LT(half.pixels[1], 90);

  // RandomResizedCrop.get_params: windows inside the image with area and ratio in range.
  Rng rng(11);
  for (int i = 0; i < 2000; ++i) {
    const CropBox b = random_resized_crop_params(60, 90, 0.08, 1.0, 3.0 / 4, 4.0 / 3, rng);
    ASSERT_GE(b.top, 0);
    ASSERT_GE(b.left, 0);
    ASSERT_GT(b.height, 0);
    ASSERT_GT(b.width, 0);
    ASSERT_LE(b.top + b.height, 60);
    ASSERT_LE(b.left + b.width, 90);
    const double area = double(b.height) * b.width / (60.0 * 90);
    ASSERT_GT(area, 0.05);
    const double ratio = double(b.width) / b.height;
    ASSERT_GT(ratio, 0.6);
    ASSERT_LT(ratio, 1.6);
  }
  // Every attempt fails on a 1×100 strip: the central crop clamped to the largest ratio.
  const CropBox strip = random_resized_crop_params(1, 100, 0.08, 1.0, 3.0 / 4, 4.0 / 3, rng);
  EXPECT_EQ(strip.height, 1);
  EXPECT_EQ(strip.width, 1);  // round(1·4/3)
  EXPECT_EQ(strip.left, 49);
  const CropBox tall = random_resized_crop_params(100, 1, 0.9, 1.0, 3.0 / 4, 4.0 / 3, rng);
  EXPECT_EQ(tall.width, 1);
  EXPECT_EQ(tall.height, 1);  // round(1 / (3/4)) = 1
  EXPECT_EQ(tall.top, 49);

  // Through the loader: the output size whatever the input size.
  const MemoryDataset data = mixed_dataset(7, 3);
  Transform t = plain_transform(13, 21, 1);
  t.random_resized_crop = true;
  t.random_crop_padding = 2;
  const Batch batch = Loader(data, t, Mixing{}, 7, 1, false, false, 2).batch(0, 0);
  EXPECT_EQ(batch.input.shape(), (Shape{7, 1, 13, 21}));
}

TEST(DataTransform, PaddedRandomCropShiftsWithZeros) {
  const Image8 img = constant_image(6, 6, 1, 255);
  Rng rng(1);
  bool saw_padding = false;
  for (int i = 0; i < 50; ++i) {
    const Image8 out = pad_random_crop(img, 2, rng);
    ASSERT_EQ(out.pixels.size(), img.pixels.size());
    int zeros = 0;
    for (std::uint8_t p : out.pixels) {
      ASSERT_TRUE(p == 0 || p == 255);
      zeros += p == 0;
    }
    ASSERT_LE(zeros, 36 - 16);  // at least the 4×4 centre stays
    saw_padding |= zeros > 0;
  }
  EXPECT_TRUE(saw_padding);
}

// ---------------------------------------------------------- RandAugment ----

TEST(DataAugment, PointOpsFollowPillow) {
  const std::array<std::uint8_t, 3> fill{1, 2, 3};
  const Image8 ramp{1, 6, 1, {10, 50, 100, 128, 200, 250}};
  auto run = [&](AugmentOp op, double arg) {
    Image8 img = ramp;
    apply_augment_op(img, op, arg, fill);
    return img.pixels;
  };
  EXPECT_EQ(run(AugmentOp::Invert, 0), (Bytes{245, 205, 155, 127, 55, 5}));
  EXPECT_EQ(run(AugmentOp::SolarizeIncreasing, 128), (Bytes{10, 50, 100, 127, 55, 5}));
  EXPECT_EQ(run(AugmentOp::SolarizeIncreasing, 256), ramp.pixels);
  EXPECT_EQ(run(AugmentOp::SolarizeAdd, 110), (Bytes{120, 160, 210, 128, 200, 250}));
  EXPECT_EQ(run(AugmentOp::PosterizeIncreasing, 2), (Bytes{0, 0, 64, 128, 192, 192}));
  EXPECT_EQ(run(AugmentOp::PosterizeIncreasing, 0), (Bytes{0, 0, 0, 0, 0, 0}));
  // autocontrast: (v − 10)·255/240, truncated.
  EXPECT_EQ(run(AugmentOp::AutoContrast, 0), (Bytes{0, 42, 95, 125, 201, 255}));
  // equalize: step = (6 − 1) // 256 = 0 → unchanged; a larger image is spread.
  EXPECT_EQ(run(AugmentOp::Equalize, 0), ramp.pixels);
  Image8 big{16, 32, 1, Bytes(512)};
  for (int i = 0; i < 512; ++i) big.pixels[i] = static_cast<std::uint8_t>(100 + i % 4);
  apply_augment_op(big, AugmentOp::Equalize, 0, fill);
  // step = (512 − 128) // 256 = 1, so lut[v] = (number of pixels below v), clipped to 255 as Image.point does.
  EXPECT_EQ(big.pixels[0], 0);
  EXPECT_EQ(big.pixels[1], 128);
  EXPECT_EQ(big.pixels[2], 255);  // 256
  EXPECT_EQ(big.pixels[3], 255);  // 384
  // Enhancements: factor 1 keeps the image; brightness 0.5 halves (truncated).
  EXPECT_EQ(run(AugmentOp::BrightnessIncreasing, 1.0), ramp.pixels);
  EXPECT_EQ(run(AugmentOp::ContrastIncreasing, 1.0), ramp.pixels);
  EXPECT_EQ(run(AugmentOp::SharpnessIncreasing, 1.0), ramp.pixels);
  EXPECT_EQ(run(AugmentOp::BrightnessIncreasing, 0.5), (Bytes{5, 25, 50, 64, 100, 125}));
  EXPECT_EQ(run(AugmentOp::ColorIncreasing, 0.1), ramp.pixels);  // grey images have no colour
  Image8 colour{1, 1, 3, {200, 100, 0}};
  apply_augment_op(colour, AugmentOp::ColorIncreasing, 0.0, fill);
  EXPECT_EQ(colour.pixels, (Bytes{luma(200, 100, 0), luma(200, 100, 0), luma(200, 100, 0)}));
}

TEST(DataAugment, GeometricOpsMoveContentAndFill) {
  const std::array<std::uint8_t, 3> fill{9, 8, 7};
  Image8 img = random_image(8, 10, 3, 4);
  const Image8 original = img;
  apply_augment_op(img, AugmentOp::Rotate, 0, fill);
  EXPECT_EQ(img.pixels, original.pixels);
  apply_augment_op(img, AugmentOp::ShearX, 0, fill);
  EXPECT_EQ(img.pixels, original.pixels);
  // Translate by 0.2·10 = 2 pixels: output x reads input x + 2; the last 2 columns are fill.
  apply_augment_op(img, AugmentOp::TranslateXRel, 0.2, fill);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 10; ++x)
      for (int c = 0; c < 3; ++c) {
        const std::uint8_t want = x + 2 < 10 ? original.pixels[(y * 10 + x + 2) * 3 + c] : fill[c];
        ASSERT_EQ(img.pixels[(y * 10 + x) * 3 + c], want) << y << " " << x << " " << c;
      }
  // Rotating a square by 180° about its centre turns it upside down.
  Image8 sq = random_image(6, 6, 1, 8);
  const Image8 sq0 = sq;
  apply_augment_op(sq, AugmentOp::Rotate, 180, fill);
  for (int y = 0; y < 6; ++y)
    for (int x = 0; x < 6; ++x) ASSERT_EQ(sq.pixels[y * 6 + x], sq0.pixels[(5 - y) * 6 + 5 - x]) << y << " " << x;
  // 90° counter-clockwise: output (x, y) reads input (W − 1 − y, x).
  sq = sq0;
  apply_augment_op(sq, AugmentOp::Rotate, 90, fill);
  for (int y = 0; y < 6; ++y)
    for (int x = 0; x < 6; ++x) ASSERT_EQ(sq.pixels[y * 6 + x], sq0.pixels[x * 6 + 5 - y]) << y << " " << x;
}

TEST(DataAugment, RandAugmentAndErasingAreSeeded) {
  const Image8 img = random_image(16, 16, 3, 21);
  const std::array<std::uint8_t, 3> fill{124, 116, 104};
  Image8 a = img, b = img;
  Rng ra(5), rb(5);
  rand_augment(a, 2, 9, 0.5, fill, ra);
  rand_augment(b, 2, 9, 0.5, fill, rb);
  EXPECT_EQ(a.pixels, b.pixels);
  int changed = 0;
  for (std::uint64_t s = 0; s < 20; ++s) {
    Image8 c = img;
    Rng r(s);
    rand_augment(c, 2, 9, 0.5, fill, r);
    changed += c.pixels != img.pixels;
  }
  EXPECT_GT(changed, 5);  // 1 − 0.5² = 3/4 of the images see at least one op

  std::vector<float> x(3 * 20 * 30, 5.0f);
  Rng never(1), always(1);
  random_erasing(x.data(), 3, 20, 30, 0.0, never);
  EXPECT_EQ(std::count(x.begin(), x.end(), 5.0f), long(x.size()));
  int erased_total = 0;
  for (int i = 0; i < 20; ++i) {
    std::fill(x.begin(), x.end(), 5.0f);
    random_erasing(x.data(), 3, 20, 30, 1.0, always);
    const long erased = long(x.size()) - std::count(x.begin(), x.end(), 5.0f);
    EXPECT_GE(erased, 3 * 600 * 0.01);  // area in [0.02, 1/3] (rounded sides)
    EXPECT_LE(erased, 3 * 600 * 0.40);
    erased_total += erased > 0;
  }
  EXPECT_EQ(erased_total, 20);
}

TEST(DataAugment, DistributionsHaveTheirMoments) {
  Rng rng(99);
  const int n = 200000;
  double s = 0, s2 = 0, b = 0, g = 0;
  std::int64_t lo = 0, hi = 0;
  for (int i = 0; i < n; ++i) {
    const double z = rng.normal();
    s += z, s2 += z * z;
    b += rng.beta(0.8, 0.8);
    g += rng.gamma(2.5);
    const std::int64_t k = rng.integer(3, 5);
    ASSERT_TRUE(k >= 3 && k <= 5);
    lo += k == 3, hi += k == 5;
    const double u = rng.uniform();
    ASSERT_TRUE(u >= 0 && u < 1);
  }
  EXPECT_NEAR(s / n, 0, 0.01);
  EXPECT_NEAR(s2 / n, 1, 0.01);
  EXPECT_NEAR(b / n, 0.5, 0.005);
  EXPECT_NEAR(g / n, 2.5, 0.02);
  EXPECT_NEAR(double(lo) / n, 1.0 / 3, 0.01);
  EXPECT_NEAR(double(hi) / n, 1.0 / 3, 0.01);
  double small = 0;
  for (int i = 0; i < 100000; ++i) small += rng.gamma(0.3);
  EXPECT_NEAR(small / 100000, 0.3, 0.01);
}

// -------------------------------------------------------------- Mixing ----

// Constant images with distinct values and labels, so every pixel tells its source.
MemoryDataset distinct_constant_dataset(int n) {
  std::vector<Image8> images;
  std::vector<std::int64_t> labels;
  for (int i = 0; i < n; ++i) {
    images.push_back(constant_image(16, 16, 3, static_cast<std::uint8_t>(20 + 30 * i)));
    labels.push_back(i);
  }
  return MemoryDataset(std::move(images), std::move(labels), n);
}

TEST(DataMixing, MixupBlendsInputsAndTargetsWithOneLambda) {
  const MemoryDataset data = distinct_constant_dataset(8);
  const Transform t = plain_transform(16, 16, 3);
  const Loader plain(data, t, Mixing{}, 4, 17, true, false, 2);
  const Loader mixed(data, t, Mixing{0.8, 0.0, 1.0, 0.5}, 4, 17, true, false, 2);
  for (std::int64_t index = 0; index < 2; ++index) {
    const Batch x = plain.batch(1, index), m = mixed.batch(1, index);
    EXPECT_TRUE(same_bits(x.labels, m.labels));
    const std::int64_t* label = m.labels.data<std::int64_t>();
    const float* target = m.targets.f32();
    const double lam = target[0 * 8 + label[0]];
    EXPECT_GT(lam, 0);
    EXPECT_LT(lam, 1);
    const std::int64_t n = 3 * 16 * 16;
    for (int b = 0; b < 4; ++b) {
      double sum = 0;
      for (int k = 0; k < 8; ++k) sum += target[b * 8 + k];
      EXPECT_NEAR(sum, 1.0, 1e-6);
      EXPECT_NEAR(target[b * 8 + label[b]], lam, 1e-6);
      EXPECT_NEAR(target[b * 8 + label[3 - b]], 1 - lam, 1e-6);
      for (std::int64_t i = 0; i < n; ++i)
        ASSERT_NEAR(m.input.f32()[b * n + i], lam * x.input.f32()[b * n + i] + (1 - lam) * x.input.f32()[(3 - b) * n + i], 1e-5);
    }
  }
}

TEST(DataMixing, CutMixLambdaIsTheBoxArea) {
  const MemoryDataset data = distinct_constant_dataset(5);
  const Transform t = plain_transform(16, 16, 3);
  const Loader plain(data, t, Mixing{}, 5, 3, false, false, 1);
  const Loader mixed(data, t, Mixing{0.0, 1.0, 1.0, 0.5}, 5, 3, false, false, 1);
  int boxes = 0;
  for (std::int64_t epoch = 0; epoch < 10; ++epoch) {
    const Batch x = plain.batch(epoch, 0), m = mixed.batch(epoch, 0);
    const std::int64_t n = 3 * 16 * 16;
    const float* target = m.targets.f32();
    std::int64_t first_count = -1;
    for (int b = 0; b < 5; ++b) {
      const int partner = 4 - b;
      std::int64_t from_partner = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        const float v = m.input.f32()[b * n + i];
        if (partner != b && v == x.input.f32()[partner * n + i]) ++from_partner;
        else ASSERT_EQ(v, x.input.f32()[b * n + i]);
      }
      double sum = 0;
      for (int k = 0; k < 5; ++k) sum += target[b * 5 + k];
      EXPECT_NEAR(sum, 1.0, 1e-6);
      if (partner == b) {  // the middle sample of an odd batch mixes with itself
        EXPECT_NEAR(target[b * 5 + b], 1.0, 1e-6);
        continue;
      }
      if (first_count < 0) first_count = from_partner;
      EXPECT_EQ(from_partner, first_count);  // one box for the whole batch
      const double area = double(from_partner) / n;
      EXPECT_NEAR(target[b * 5 + b], 1 - area, 1e-6);
      EXPECT_NEAR(target[b * 5 + partner], area, 1e-6);
    }
    boxes += first_count > 0;
  }
  EXPECT_GE(boxes, 5);
}

TEST(DataMixing, ProbabilityZeroLeavesOneHotTargets) {
  const MemoryDataset data = distinct_constant_dataset(4);
  const Loader loader(data, plain_transform(8, 8, 3), Mixing{0.8, 1.0, 0.0, 0.5}, 4, 3, false, false, 1);
  const Batch b = loader.batch(0, 0);
  for (int i = 0; i < 4; ++i)
    for (int k = 0; k < 4; ++k) EXPECT_EQ(b.targets.f32()[i * 4 + k], i == k ? 1.0f : 0.0f);
}

}  // namespace
}  // namespace vrwkv::train
