// consumer MODEL IMAGE [K]: the top K classes (default 5) of one image, printed
// as `vrwkv classify` prints them ("IMAGE: name p, name p, ..."), through the
// installed library alone: the model's own preprocessing (vrwkv/image.hpp), its
// forward, and its class names (ImageNet's for a 1000-class head).
// Errors: one line on stderr; exit 2 for bad input, 1 otherwise.
#include <vrwkv/error.hpp>
#include <vrwkv/image.hpp>
#include <vrwkv/labels.hpp>
#include <vrwkv/model.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <numeric>
#include <string>
#include <vector>

namespace {

void classify(const std::string& model_path, const std::string& image, long topk) {
  const vrwkv::Model model = vrwkv::Model::load(model_path);
  const vrwkv::Architecture& arch = model.architecture();
  if (arch.head == vrwkv::HeadKind::None) vrwkv::input_error(model_path, ": the model has no classification head");
  const std::vector<std::string> names = vrwkv::class_names(model.config());
  const vrwkv::Outputs out = model.forward(vrwkv::load_images({image}, model.config()));

  // Softmax over the logits, in double, relative to the largest.
  const std::int64_t n = arch.num_classes;
  const float* logits = out.logits.f32();
  const double top = *std::max_element(logits, logits + n);
  double sum = 0;
  for (std::int64_t c = 0; c < n; ++c) sum += std::exp(logits[c] - top);
  const int k = static_cast<int>(std::min<std::int64_t>(topk, n));
  std::vector<std::int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](std::int64_t a, std::int64_t b) { return logits[a] > logits[b]; });
  std::printf("%s:", image.c_str());
  for (int j = 0; j < k; ++j)
    std::printf("%s %s %.4f", j ? "," : "", names[order[j]].c_str(), std::exp(logits[order[j]] - top) / sum);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: consumer MODEL IMAGE [K]\n");
    return 2;
  }
  long k = 5;
  if (argc == 4) {
    char* end = nullptr;
    k = std::strtol(argv[3], &end, 10);
    if (*argv[3] == '\0' || *end != '\0' || k < 1) {
      std::fprintf(stderr, "consumer: K: expected a positive integer, got '%s'\n", argv[3]);
      return 2;
    }
  }
  try {
    classify(argv[1], argv[2], k);
  } catch (const vrwkv::Error& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return e.kind() == vrwkv::Error::Kind::Input ? 2 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
  return 0;
}
