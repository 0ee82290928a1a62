// vrwkv segment: semantic segmentation of photos. Per image NAME.EXT, in the
// output folder: NAME.png (class indices, 8-bit; 255 = none) and
// NAME_overlay.png (the photo blended with the class colours, with a legend),
// both at the photo's size, and one summary line (the largest classes).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "commands.hpp"
#include "common.hpp"
#include "dense_options.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/seg_data.hpp"
#include "vrwkv/seg_input.hpp"
#include "vrwkv/seg_overlay.hpp"

namespace vrwkv::cli {

void add_segment(CLI::App& app) {
  struct Options {
    ModelOptions model;
    DenseOptions seg;
    std::vector<std::string> images;
    std::string out = ".";
    int top = 3;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "segment", "Semantic segmentation: NAME.png (class indices) and NAME_overlay.png per image");
  opt->model.add_to(*cmd);
  opt->seg.add_to(*cmd);
  cmd->add_option("images", opt->images, "JPEG or PNG photos, any size")->required();
  cmd->add_option("--output,-o", opt->out, "Output folder (created if missing; default: the current one)");
  cmd->add_option("--top", opt->top, "Classes named in each summary line")->check(CLI::Range(1, 255));
  cmd->callback([opt] {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::exists(opt->out, ec)) fs::create_directories(opt->out, ec);
    if (ec || !fs::is_directory(opt->out)) input_error("--output: '", opt->out, "' is not a folder that can be made");
    // Every output path checked before any work; two photos with one name would overwrite each other.
    std::vector<std::pair<std::string, std::string>> outputs;
    for (const std::string& image : opt->images) {
      const std::string stem = fs::path(image).stem().string();
      const std::string a = (fs::path(opt->out) / (stem + ".png")).string(),
                        b = (fs::path(opt->out) / (stem + "_overlay.png")).string();
      for (const auto& [x, y] : outputs)
        if (x == a) input_error("two images would write ", a, " (", image, " and another of the same name)");
      check_output_path(a, "--output", false);
      check_not_an_input(a, opt->images, "--output");
      check_not_an_input(b, opt->images, "--output");
      outputs.push_back({a, b});
    }
    const Segmentor seg = load_segmentor(opt->model, opt->seg);
    const SegmentOptions base = opt->seg.inference(seg.config(), opt->model);
    const std::vector<std::string> names = segmentor_classes(seg.config());
    std::vector<std::array<std::uint8_t, 3>> palette;
    for (std::size_t k = 0; k < names.size(); ++k) palette.push_back(ade20k_palette()[k % ade20k_palette().size()]);
    // An image that cannot be read: one line, the others are segmented, and the exit code is 2.
    UnreadableImages unreadable;
    for (std::size_t i = 0; i < opt->images.size(); ++i) {
      SegImage img;
      try {
        img = load_seg_image(opt->images[i]);
      } catch (const Error& e) {
        if (e.kind() != Error::Kind::Input) throw;
        unreadable.add(e.what());
        continue;
      }
      SegmentOptions o = base;
      o.out_h = img.ori_h, o.out_w = img.ori_w;
      const Tensor pred = Segmentor::predict(seg.infer(img.input, o, opt->model.context()));
      seg::LabelMap map{img.ori_h, img.ori_w, std::vector<std::uint8_t>(pred.numel())};
      for (std::int64_t p = 0; p < pred.numel(); ++p)
        map.values[p] = static_cast<std::uint8_t>(pred.data<std::int64_t>()[p]);
      seg::write_label_png(outputs[i].first, map);
      plot::segmentation_overlay(img.original.data(), map.values.data(), img.ori_h, img.ori_w, palette, names,
                                 outputs[i].second);
      std::printf("%s: %lldx%lld", opt->images[i].c_str(), static_cast<long long>(img.ori_w),
                  static_cast<long long>(img.ori_h));
      for (const auto& [k, count] : plot::largest_classes(map.values.data(), pred.numel(), opt->top))
        std::printf(", %s %.1f %%", names[k].c_str(), 100.0 * count / pred.numel());
      std::printf("\n");
      std::fflush(stdout);
    }
    unreadable.finish();
  });
}

}  // namespace vrwkv::cli
