// vrwkv eval: top-1 / top-5 accuracy of a classifier on a labelled dataset;
// with --task seg, mmseg's aAcc / mIoU / mAcc and per-class IoU of a
// segmentor on an ADE20K-layout folder; with --task det, COCO's box and mask
// AP / AR of a detector on an annotation file and its images.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "dense_options.hpp"
#include "validators.hpp"
#include "vrwkv/coco.hpp"
#include "vrwkv/det_input.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/seg_data.hpp"
#include "vrwkv/seg_input.hpp"
#include "vrwkv/seg_metrics.hpp"
#include "vrwkv/train.hpp"

namespace vrwkv::cli {

namespace {

// mmseg's evaluation of a segmentor on DIR/images/validation, DIR/annotations/validation.
void eval_segmentor(const ModelOptions& mo, const DenseOptions& so, const std::string& data, std::int64_t limit,
                    bool json) {
  if (!data.starts_with("ade20k:"))
    input_error("--data: segmentation evaluates an ADE20K-layout folder, ade20k:DIR, got '", data, "'");
  std::vector<seg::SegSample> samples = seg::list_ade20k(data.substr(7));
  if (limit > 0 && limit < static_cast<std::int64_t>(samples.size())) samples.resize(limit);
  const Segmentor segmentor = load_segmentor(mo, so);
  const SegmentOptions base = so.inference(segmentor.config(), mo);
  const std::vector<std::string> names = segmentor_classes(segmentor.config());
  seg::SegMetrics metrics(static_cast<int>(segmentor.config().head.num_classes));
  const bool tty = !json && isatty(STDERR_FILENO);
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const seg::SegSample& s = samples[i];
    const SegImage img = load_seg_image(s.image);
    const seg::LabelMap label = seg::read_label_png(s.annotation);
    seg::check_annotation_size(s, label, img.ori_h, img.ori_w);
    SegmentOptions o = base;
    o.out_h = img.ori_h, o.out_w = img.ori_w;
    const Tensor pred = Segmentor::predict(segmentor.infer(img.input, o, mo.context()));
    std::vector<std::uint8_t> p(pred.numel());
    for (std::int64_t k = 0; k < pred.numel(); ++k) p[k] = static_cast<std::uint8_t>(pred.data<std::int64_t>()[k]);
    try {
      metrics.add(p.data(), label.values.data(), pred.numel(), /*reduce_zero_label=*/true);
    } catch (const Error& e) {
      input_error(s.annotation, ": ", e.what());
    }
    if (tty) {
      const int width = 30, filled = static_cast<int>(width * (i + 1) / samples.size());
      std::fprintf(stderr, "\r[%s%s] %zu/%zu images\033[K", std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(), i + 1, samples.size());
    }
  }
  if (tty) std::fprintf(stderr, "\r\033[K");
  const seg::SegMetrics::Result r = metrics.result();
  const auto pct = [](double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(100 * v); };
  if (json) {
    nlohmann::json per_class = nlohmann::json::array();
    for (std::size_t k = 0; k < names.size(); ++k)
      per_class.push_back({{"class", names[k]}, {"IoU", pct(r.IoU[k])}, {"Acc", pct(r.Acc[k])}});
    std::printf("%s\n", nlohmann::json{{"aAcc", pct(r.aAcc)}, {"mIoU", pct(r.mIoU)}, {"mAcc", pct(r.mAcc)},
                                       {"images", r.images}, {"classes", per_class}}
                            .dump()
                            .c_str());
    return;
  }
  std::printf("%-24s %8s %8s\n", "class", "IoU", "Acc");
  for (std::size_t k = 0; k < names.size(); ++k)
    std::printf("%-24s %8.2f %8.2f\n", names[k].substr(0, 24).c_str(), 100 * r.IoU[k], 100 * r.Acc[k]);
  std::printf("%s: aAcc %.2f %%, mIoU %.2f %%, mAcc %.2f %% over %lld images\n", data.c_str(), 100 * r.aAcc,
              100 * r.mIoU, 100 * r.mAcc, static_cast<long long>(r.images));
}

// COCO's box and mask AP of a detector on coco:ANNOTATIONS.json,IMAGES_DIR.
void eval_detector(const ModelOptions& mo, const DenseOptions& dense, const std::string& data, std::int64_t limit,
                   bool json) {
  const std::size_t comma = data.find(',');
  if (!data.starts_with("coco:") || comma == std::string::npos)
    input_error("--data: detection evaluates coco:ANNOTATIONS.json,IMAGES_DIR, got '", data, "'");
  const std::string ann = data.substr(5, comma - 5), dir = data.substr(comma + 1);
  coco::Dataset gt = coco::read_annotations(ann);
  if (limit > 0 && limit < static_cast<std::int64_t>(gt.images.size())) {
    gt.images.resize(limit);
    std::set<std::int64_t> kept;
    for (const coco::Image& im : gt.images) kept.insert(im.id);
    std::erase_if(gt.annotations, [&](const coco::Annotation& a) { return !kept.count(a.image_id); });
  }
  // Every image present before any work.
  for (const coco::Image& im : gt.images)
    if (!std::filesystem::is_regular_file(std::filesystem::path(dir) / im.file_name))
      input_error(ann, ": image ", im.id, " is ", (std::filesystem::path(dir) / im.file_name).string(),
                  ", which does not exist");
  const Detector det = load_detector(mo, dense);
  if (!det.config().has_backbone) input_error(mo.path(), ": this detector holds only the neck and heads");
  // The model's classes map to the file's categories in order (COCO's 80 in mmdet's order).
  if (static_cast<std::int64_t>(gt.category_ids.size()) != det.config().head.num_classes)
    input_error(ann, ": ", gt.category_ids.size(), " categories, but the detector has ", det.config().head.num_classes,
                " classes");
  DetectOptions o;
  o.bf16 = mo.dtype == "bf16";
  std::vector<coco::Result> results;
  const bool tty = !json && isatty(STDERR_FILENO);
  for (std::size_t i = 0; i < gt.images.size(); ++i) {
    const coco::Image& im = gt.images[i];
    const DetImage img = load_det_image((std::filesystem::path(dir) / im.file_name).string());
    if (img.meta.ori_h != im.height || img.meta.ori_w != im.width)
      input_error(ann, ": image ", im.id, " is listed as ", im.width, "x", im.height, " but ", im.file_name, " is ",
                  img.meta.ori_w, "x", img.meta.ori_h);
    const std::vector<coco::Result> r =
        coco::to_results(det.detect(img.input, img.meta, o, mo.context()), im.id, gt.category_ids);
    results.insert(results.end(), r.begin(), r.end());
    if (tty) {
      const int width = 30, filled = static_cast<int>(width * (i + 1) / gt.images.size());
      std::fprintf(stderr, "\r[%s%s] %zu/%zu images\033[K", std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(), i + 1, gt.images.size());
    }
  }
  if (tty) std::fprintf(stderr, "\r\033[K");
  const coco::Stats box = coco::evaluate(gt, results, coco::IouType::Box);
  const coco::Stats mask = coco::evaluate(gt, results, coco::IouType::Mask);
  if (json) {
    nlohmann::json j{{"images", gt.images.size()}, {"detections", results.size()}};
    for (int k = 0; k < 12; ++k) {
      j["bbox"][coco::kStatNames[k]] = box[k];
      j["segm"][coco::kStatNames[k]] = mask[k];
    }
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("%-6s", "");
  for (const char* n : coco::kStatNames) std::printf(" %6s", n);
  std::printf("\n");
  for (const auto& [label, st] : {std::pair{"bbox", box}, std::pair{"segm", mask}}) {
    std::printf("%-6s", label);
    for (const double v : st) std::printf(" %6.3f", v);
    std::printf("\n");
  }
  std::printf("%s: box AP %.1f, mask AP %.1f over %zu images\n", data.c_str(), 100 * box[0], 100 * mask[0],
              gt.images.size());
}

}  // namespace

void add_eval(CLI::App& app) {
  struct Options {
    ModelOptions model;
    DenseOptions seg;
    std::string data, task = "cls";
    bool json = false, strict = false;
    std::int64_t batch = 256, limit = 0;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("eval", "Top-1 / top-5 accuracy of a model on a labelled dataset");
  opt->model.add_to(*cmd, true);
  cmd->add_option("--data,-d", opt->data,
                  "Dataset: fashion-mnist:test, fashion-mnist:train, imagefolder:DIR; --task seg: ade20k:DIR; --task det: "
                  "coco:ANNOTATIONS.json,IMAGES_DIR")
      ->required();
  cmd->add_option("--task", opt->task, "cls (classification), seg (segmentation: aAcc, mIoU, mAcc as mmseg) or "
                  "det (detection: COCO box and mask AP)")
      ->check(CLI::IsMember({"cls", "seg", "det"}));
  opt->seg.add_to(*cmd);
  cmd->add_flag("--json", opt->json, "Print one JSON object {top1, top5, images, loss} (and skipped, when any)");
  cmd->add_option("--batch", opt->batch, "Images per forward pass")->check(validators::integer_between(1, 65536));
  cmd->add_option("--limit", opt->limit, "Evaluate the first N images only (0: all)")
      ->check(validators::non_negative_integer());
  cmd->add_flag("--strict", opt->strict,
                "Stop at the first image that cannot be read (default: report it, evaluate the others, exit 2)");
  cmd->callback([opt] {
    if (opt->task == "det") return eval_detector(opt->model, opt->seg, opt->data, opt->limit, opt->json);
    if (opt->task == "seg") return eval_segmentor(opt->model, opt->seg, opt->data, opt->limit, opt->json);
    const Model model = opt->model.load();
    const auto data = train::open_dataset(opt->data);
    const bool tty = !opt->json && isatty(STDERR_FILENO);
    // An unreadable image: one line, left out of the counts; the last such error is kept back and ends the
    // run (exit 2) after the results, so one bad image still gives one line.
    UnreadableImages unreadable;
    const auto on_image_error = [&](std::int64_t, const std::string& message) {
      if (opt->strict) input_error(message);
      if (tty) std::fprintf(stderr, "\r\033[K");
      unreadable.add(message);
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
    unreadable.finish();
  });
}

}  // namespace vrwkv::cli
