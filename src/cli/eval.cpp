// vrwkv eval: top-1 / top-5 accuracy of a model on a labelled dataset.
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "validators.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/train.hpp"

namespace vrwkv::cli {

void add_eval(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string data;
    bool json = false, strict = false;
    std::int64_t batch = 256, limit = 0;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("eval", "Top-1 / top-5 accuracy of a model on a labelled dataset");
  opt->model.add_to(*cmd, true);
  cmd->add_option("--data,-d", opt->data, "Dataset: fashion-mnist:test, fashion-mnist:train, imagefolder:DIR")
      ->required();
  cmd->add_flag("--json", opt->json, "Print one JSON object {top1, top5, images, loss} (and skipped, when any)");
  cmd->add_option("--batch", opt->batch, "Images per forward pass")->check(validators::integer_between(1, 65536));
  cmd->add_option("--limit", opt->limit, "Evaluate the first N images only (0: all)")
      ->check(validators::non_negative_integer());
  cmd->add_flag("--strict", opt->strict,
                "Stop at the first image that cannot be read (default: report it, evaluate the others, exit 2)");
  cmd->callback([opt] {
    const Model model = opt->model.load();
    const auto data = train::open_dataset(opt->data);
    const bool tty = !opt->json && isatty(STDERR_FILENO);
    // An unreadable image: one line, left out of the counts; the last such error is kept back and ends the
    // run (exit 2) after the results, so one bad image still gives one line.
    std::string pending;
    const auto on_image_error = [&](std::int64_t, const std::string& message) {
      if (opt->strict) input_error(message);
      if (tty) std::fprintf(stderr, "\r\033[K");
      if (!pending.empty()) std::fprintf(stderr, "vrwkv: %s\n", pending.c_str());
      pending = message;
    };
    const train::EvalResult r = train::evaluate(
        model, *data, opt->batch, opt->limit,
        [&](std::int64_t done, std::int64_t total) {
          if (tty)
            std::fprintf(stderr, "\r%lld/%lld images\033[K", static_cast<long long>(done), static_cast<long long>(total));
        },
        opt->model.forward_options(), opt->model.context(), on_image_error);
    if (tty) std::fprintf(stderr, "\r\033[K");
    if (opt->json) {
      nlohmann::json j{{"top1", r.top1}, {"top5", r.top5}, {"images", r.images}, {"loss", r.loss}};
      if (r.skipped) j["skipped"] = r.skipped;
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%s: top-1 %.2f %%, top-5 %.2f %%, loss %.4f over %lld images", opt->data.c_str(), r.top1, r.top5,
                  r.loss, static_cast<long long>(r.images));
      if (r.skipped) std::printf(" (%lld unreadable images left out)", static_cast<long long>(r.skipped));
      std::printf("\n");
    }
    std::fflush(stdout);
    if (!pending.empty()) {
      if (r.skipped > 1) input_error(pending, " (", r.skipped, " images could not be read)");
      input_error(pending);
    }
  });
}

}  // namespace vrwkv::cli
