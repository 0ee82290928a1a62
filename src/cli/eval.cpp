// vrwkv eval: top-1 / top-5 accuracy of a model on a labelled dataset.
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "vrwkv/train.hpp"

namespace vrwkv::cli {

void add_eval(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string data;
    bool json = false;
    std::int64_t batch = 256, limit = 0;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("eval", "Top-1 / top-5 accuracy of a model on a labelled dataset");
  opt->model.add_to(*cmd, true);
  cmd->add_option("--data,-d", opt->data, "Dataset: fashion-mnist:test, fashion-mnist:train, imagefolder:DIR")
      ->required();
  cmd->add_flag("--json", opt->json, "Print one JSON object {top1, top5, images, loss}");
  cmd->add_option("--batch", opt->batch, "Images per forward pass")->check(CLI::Range(1, 65536));
  cmd->add_option("--limit", opt->limit, "Evaluate the first N images only (0: all)")->check(CLI::NonNegativeNumber);
  cmd->callback([opt] {
    const Model model = opt->model.load();
    const auto data = train::open_dataset(opt->data);
    const bool tty = !opt->json && isatty(STDERR_FILENO);
    const train::EvalResult r = train::evaluate(model, *data, opt->batch, opt->limit, [&](std::int64_t done, std::int64_t total) {
      if (tty) std::fprintf(stderr, "\r%lld/%lld images\033[K", static_cast<long long>(done), static_cast<long long>(total));
    }, opt->model.forward_options(), opt->model.context());
    if (tty) std::fprintf(stderr, "\r\033[K");
    if (opt->json) {
      std::printf("%s\n", nlohmann::json{{"top1", r.top1}, {"top5", r.top5}, {"images", r.images}, {"loss", r.loss}}
                              .dump()
                              .c_str());
    } else {
      std::printf("%s: top-1 %.2f %%, top-5 %.2f %%, loss %.4f over %lld images\n", opt->data.c_str(), r.top1, r.top5,
                  r.loss, static_cast<long long>(r.images));
    }
  });
}

}  // namespace vrwkv::cli
