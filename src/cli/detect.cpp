// vrwkv detect: object detection and instance segmentation of photos. Per
// image NAME.EXT, in the output folder: NAME.png (the photo with the masks,
// boxes, class names and scores drawn), and one line per detection above
// --score-thr; --json writes every detection (the official score_thr 0.05)
// in COCO's results format.
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "commands.hpp"
#include "common.hpp"
#include "dense_options.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/coco.hpp"
#include "vrwkv/det_input.hpp"
#include "vrwkv/det_overlay.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/segmentor.hpp"

namespace vrwkv::cli {

namespace {

// COCO file names are the image id with zeros in front (000000397133.jpg);
// other names get their place in the command line, from 1.
std::int64_t image_id_of(const std::string& path, std::size_t index) {
  const std::string stem = std::filesystem::path(path).stem().string();
  if (!stem.empty() && stem.size() <= 15 && std::all_of(stem.begin(), stem.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::stoll(stem);
  return static_cast<std::int64_t>(index) + 1;
}

}  // namespace

void add_detect(CLI::App& app) {
  struct Options {
    ModelOptions model;
    DenseOptions dense;
    std::vector<std::string> images;
    std::string out = ".", json;
    double score_thr = 0.3;
    bool no_masks = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("detect", "Object detection and instance masks: NAME.png with boxes and masks per image");
  opt->model.add_to(*cmd);
  opt->dense.add_adapter_to(*cmd);
  cmd->add_option("images", opt->images, "JPEG or PNG photos, any size")->required();
  cmd->add_option("--output,-o", opt->out, "Output folder (created if missing; default: the current one)");
  cmd->add_option("--score-thr", opt->score_thr, "Draw and list detections scoring at least this (default 0.3)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--json", opt->json, "Write every detection (score > 0.05) as COCO results JSON to this file");
  cmd->add_flag("--no-masks", opt->no_masks, "Boxes only: skip the mask head");
  cmd->callback([opt] {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::exists(opt->out, ec)) fs::create_directories(opt->out, ec);
    if (ec || !fs::is_directory(opt->out)) input_error("--output: '", opt->out, "' is not a folder that can be made");
    std::vector<std::string> outputs;
    for (const std::string& image : opt->images) {
      const std::string a = (fs::path(opt->out) / (fs::path(image).stem().string() + ".png")).string();
      if (std::find(outputs.begin(), outputs.end(), a) != outputs.end())
        input_error("two images would write ", a, " (", image, " and another of the same name)");
      check_output_path(a, "--output", false);
      check_not_an_input(a, opt->images, "--output");
      outputs.push_back(a);
    }
    if (!opt->json.empty()) {
      check_output_path(opt->json, "--json");
      check_not_an_input(opt->json, opt->images, "--json");
    }
    const Detector det = load_detector(opt->model, opt->dense);
    if (!det.config().has_backbone)
      input_error(opt->model.path(), ": this detector holds only the neck and heads; detect needs the backbone too");
    const std::vector<std::string> names = detector_classes(det.config());
    std::vector<std::array<std::uint8_t, 3>> palette;
    for (std::size_t k = 0; k < names.size(); ++k) palette.push_back(ade20k_palette()[(k * 7 + 3) % ade20k_palette().size()]);
    const std::vector<std::int64_t> ids =
        det.config().head.num_classes == 80 ? coco_category_ids() : std::vector<std::int64_t>{};
    DetectOptions o;
    o.bf16 = opt->model.dtype == "bf16";
    o.masks = !opt->no_masks;
    std::vector<coco::Result> results;
    UnreadableImages unreadable;
    for (std::size_t i = 0; i < opt->images.size(); ++i) {
      DetImage img;
      try {
        img = load_det_image(opt->images[i]);
      } catch (const Error& e) {
        if (e.kind() != Error::Kind::Input) throw;
        unreadable.add(e.what());
        continue;
      }
      const Detections d = det.detect(img.input, img.meta, o, opt->model.context());
      std::vector<plot::DetBox> shown;
      const std::int64_t H = img.meta.ori_h, W = img.meta.ori_w;
      std::printf("%s: %lldx%lld, %lld detections\n", opt->images[i].c_str(), static_cast<long long>(W),
                  static_cast<long long>(H), static_cast<long long>(d.size()));
      for (std::int64_t k = 0; k < d.size(); ++k) {
        const float* b = d.bboxes.f32() + k * 4;
        const float s = d.scores.f32()[k];
        if (s < opt->score_thr) continue;
        const int label = static_cast<int>(d.labels.data<std::int64_t>()[k]);
        shown.push_back({b[0], b[1], b[2], b[3], s, label, o.masks ? d.masks.data<std::uint8_t>() + k * H * W : nullptr});
        std::printf("  %-16s %.3f  box %.1f %.1f %.1f %.1f\n", names[label].c_str(), s, b[0], b[1], b[2], b[3]);
      }
      plot::detection_overlay(img.original.data(), H, W, shown, palette, names, outputs[i]);
      std::fflush(stdout);
      if (!opt->json.empty()) {
        const std::vector<coco::Result> r = coco::to_results(d, image_id_of(opt->images[i], i), ids);
        results.insert(results.end(), r.begin(), r.end());
      }
    }
    if (!opt->json.empty()) {
      AtomicFile f(opt->json);
      const std::string text = coco::results_json(results);
      f.write(text.data(), text.size());
      f.commit();
    }
    unreadable.finish();
  });
}

}  // namespace vrwkv::cli
