// vrwkv classify: top-K classes of each image, one line per image.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "commands.hpp"
#include "common.hpp"
#include "validators.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/image.hpp"
#include "vrwkv/labels.hpp"

namespace vrwkv::cli {

void add_classify(CLI::App& app) {
  struct Options {
    ModelOptions model;
    int topk = 5;
    int batch = 8;
    bool strict = false;
    std::vector<std::string> images;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("classify", "Classify images: top-K classes and probabilities per image");
  opt->model.add_to(*cmd, true);
  cmd->add_option("--topk,-k", opt->topk, "Classes to show per image")->check(validators::integer_between(1, 1000000));
  cmd->add_option("--batch", opt->batch, "Images per forward pass")->check(validators::integer_between(1, 4096));
  cmd->add_flag("--strict", opt->strict,
                "Stop at the first image that cannot be read (default: report it, classify the others, exit 2)");
  cmd->add_option("images", opt->images, "JPEG or PNG images")->required();
  cmd->callback([opt] {
    const Model model = opt->model.load();
    const Architecture& cfg = model.architecture();
    if (cfg.head == HeadKind::None) input_error(opt->model.path(), ": the model has no classification head");
    const std::vector<std::string> names = class_names(model.config());
    const int k = static_cast<int>(std::min<std::int64_t>(opt->topk, cfg.num_classes));
    // An image that cannot be read is reported on one line and the others are classified (exit 2 at the end).
    UnreadableImages unreadable;
    for (std::size_t start = 0; start < opt->images.size(); start += opt->batch) {
      const std::size_t end = std::min(opt->images.size(), start + opt->batch);
      std::vector<std::string> paths;
      std::vector<Tensor> inputs;
      for (std::size_t i = start; i < end; ++i) {
        try {
          inputs.push_back(load_images({opt->images[i]}, model.config()));
          paths.push_back(opt->images[i]);
        } catch (const Error& e) {
          if (opt->strict || e.kind() != Error::Kind::Input) throw;
          unreadable.add(e.what());
        }
      }
      if (paths.empty()) continue;
      Shape shape = inputs[0].shape();
      shape[0] = static_cast<std::int64_t>(inputs.size());
      Tensor batch(DType::F32, shape);
      for (std::size_t i = 0; i < inputs.size(); ++i)
        std::copy(inputs[i].f32(), inputs[i].f32() + inputs[i].numel(), batch.f32() + i * inputs[i].numel());
      const Outputs out = model.forward(batch, opt->model.forward_options(), opt->model.context());
      for (std::size_t i = 0; i < paths.size(); ++i) {
        const float* logits = out.logits.f32() + i * cfg.num_classes;
        const double top = *std::max_element(logits, logits + cfg.num_classes);
        double sum = 0;
        for (std::int64_t c = 0; c < cfg.num_classes; ++c) sum += std::exp(logits[c] - top);
        std::vector<std::int64_t> order(cfg.num_classes);
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
                          [&](std::int64_t a, std::int64_t b) { return logits[a] > logits[b]; });
        std::printf("%s:", paths[i].c_str());
        for (int j = 0; j < k; ++j)
          std::printf("%s %s %.4f", j ? "," : "", names[order[j]].c_str(), std::exp(logits[order[j]] - top) / sum);
        std::printf("\n");
      }
      std::fflush(stdout);
    }
    unreadable.finish(opt->images.size());
  });
}

}  // namespace vrwkv::cli
