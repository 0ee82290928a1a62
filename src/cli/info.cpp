// vrwkv info: the configuration, parameter count and FLOPs of a model.
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "commands.hpp"
#include "common.hpp"
#include "listing.hpp"
#include "dense_options.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/presets.hpp"

namespace vrwkv::cli {

namespace {

// The VRWKV part and the adapter of a dense model.
void print_adapter(const Config& backbone, const AdapterConfig& ad) {
  const Architecture& a = backbone.arch;
  std::printf("embed_dims    %lld\ndepth         %lld\nhidden_dims   %lld\n", (long long)a.embed_dims,
              (long long)a.depth, (long long)a.hidden_dims);
  std::printf("key_norm      %s\npost_norm     %s\nlayer_scale   %s\n", a.key_norm ? "true" : "false",
              a.post_norm ? "true" : "false", a.layer_scale ? "true" : "false");
  std::printf("wkv           %s", to_string(backbone.run.wkv).c_str());
  if (backbone.run.wkv == WkvSemantics::Official) std::printf(" (S = %d)", backbone.run.wkv_chunks);
  std::printf("\ninteractions ");
  for (const auto& [b, e] : ad.interactions) std::printf(" %lld-%lld", (long long)b, (long long)e);
  std::printf("\nconv_inplane  %lld\ndeform        %lld heads, %lld points, value %lld\ncffn_hidden   %lld\n",
              (long long)ad.conv_inplane, (long long)ad.deform_heads, (long long)ad.deform_points,
              (long long)ad.value_dims, (long long)ad.cffn_hidden);
}

// A segmentor: the backbone, the adapter, the heads, the inference defaults.
void info_segmentor(const ModelOptions& mo, const DenseOptions& so, const std::string& res) {
  LoadReport report;
  const Segmentor seg = load_segmentor(mo, so, &report);
  const SegmentorConfig& c = seg.config();
  long long h = 512, w = 512;
  if (!res.empty()) std::tie(h, w) = parse_resolution(res, "--res");
  std::printf("file          %s (%s)\n", mo.model.c_str(), report.layout.empty() ? "preset" : report.layout.c_str());
  std::printf("task          segmentation: VRWKV-Adapter + UPerHead%s\n", c.head.auxiliary ? " + FCNHead (auxiliary)" : "");
  print_adapter(c.backbone, c.adapter);
  std::printf("classes       %lld (UPerHead %lld channels", (long long)c.head.num_classes, (long long)c.head.channels);
  if (c.head.auxiliary) std::printf(", FCNHead %lld", (long long)c.head.aux_channels);
  std::printf(")\ntest          %s", c.test.mode == SegmentOptions::Mode::Whole ? "whole" : "slide");
  if (c.test.mode == SegmentOptions::Mode::Slide)
    std::printf(" (crop %lldx%lld, stride %lldx%lld)", (long long)c.test.crop_h, (long long)c.test.crop_w,
                (long long)c.test.stride_h, (long long)c.test.stride_w);
  std::printf("\nparameters    %lld (%.1fM; backbone blocks and embeddings %.1fM)\n", (long long)seg.parameter_count(),
              seg.parameter_count() / 1e6, seg.backbone().parameter_count() / 1e6);
  std::printf("FLOPs         %.1f G at %lldx%lld, one whole-image call (2 x multiply-adds of convolutions and linears)\n",
              seg.flops(h, w) / 1e9, h, w);
  if (!report.ignored.empty())
    std::printf("ignored       %zu entries not part of the model: %s\n", report.ignored.size(),
                list_some(report.ignored).c_str());
}

// A detector: the backbone and adapter (when present), the neck and heads, FLOPs at 1333×800.
void info_detector(const ModelOptions& mo, const DenseOptions& dense, const std::string& res) {
  LoadReport report;
  const Detector det = load_detector(mo, dense, &report);
  const DetectorConfig& c = det.config();
  long long h = 800, w = 1344;  // 1333×800 padded to multiples of 32
  if (!res.empty()) std::tie(h, w) = parse_resolution(res, "--res");
  std::printf("file          %s (%s)\n", mo.model.c_str(), report.layout.empty() ? "preset" : report.layout.c_str());
  std::printf("task          detection: %sFPN + RPN + Mask R-CNN heads\n",
              c.has_backbone ? "VRWKV-Adapter + " : "(neck and heads only) ");
  if (c.has_backbone) {
    print_adapter(c.backbone, c.adapter);
  }
  const DetHeadConfig& hd = c.head;
  std::printf("neck          FPN %lld -> %lld, 5 levels (strides 4-64)\n", (long long)hd.in_channels,
              (long long)hd.fpn_channels);
  std::printf("heads         RPN %lld (3 anchors), box head fc %lld, mask head %lld\n", (long long)hd.rpn_channels,
              (long long)hd.fc_channels, (long long)hd.mask_channels);
  std::printf("classes       %lld\n", (long long)hd.num_classes);
  std::printf("test          RPN top %lld per level, NMS %.2f, %lld proposals; score > %.2f, NMS %.2f, %lld "
              "detections; masks >= %.2f\n",
              (long long)c.test.rpn_nms_pre, c.test.rpn_iou, (long long)c.test.rpn_max_per_img, c.test.score_thr,
              c.test.iou, (long long)c.test.max_per_img, c.test.mask_thr);
  std::printf("parameters    %lld (%.1fM", (long long)det.parameter_count(), det.parameter_count() / 1e6);
  if (c.has_backbone) std::printf("; backbone blocks and embeddings %.1fM", det.backbone().parameter_count() / 1e6);
  std::printf(")\nFLOPs         %.1f G at %lldx%lld with 1000 proposals and 100 detections (2 x multiply-adds of "
              "convolutions and linears)\n",
              det.flops(h, w) / 1e9, h, w);
  if (!report.ignored.empty())
    std::printf("ignored       %zu entries not part of the model: %s\n", report.ignored.size(),
                list_some(report.ignored).c_str());
}

}  // namespace

void add_info(CLI::App& app) {
  struct Options {
    ModelOptions model;
    DenseOptions seg;
    std::string res;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("info", "Show a model's configuration, parameter count and FLOPs");
  opt->model.add_to(*cmd, /*model_optional=*/true);
  // Shared model options that info does not use are refused, not ignored: the model is the first argument
  // and nothing runs.
  for (const char* unused : {"--model", "--dtype", "--threads"}) cmd->remove_option(cmd->get_option(unused));
  cmd->add_option("file", opt->model.model, "Model file (.pth or .safetensors), or a preset (classifier, segmentor or detector)")->required();
  cmd->add_option("--res", opt->res, "Input resolution for FLOPs: N or HxW (default: the training grid; 512 for segmentors, 800x1344 for detectors)");
  opt->seg.add_to(*cmd);
  cmd->callback([opt] {
    // A classification preset (vrwkv_t … vrwkv6_b) when no such file exists: its official initialisation.
    const auto presets = preset_names();
    const bool preset = access(opt->model.model.c_str(), F_OK) != 0 &&
                        std::find(presets.begin(), presets.end(), opt->model.model) != presets.end();
    if (!preset && names_detector(opt->model)) return info_detector(opt->model, opt->seg, opt->res);
    if (!preset && names_segmentor(opt->model)) return info_segmentor(opt->model, opt->seg, opt->res);
    LoadReport report;
    Model model;
    if (preset) {
      Config config = preset_config(opt->model.model);
      apply_overrides(config, opt->model.overrides(), opt->model.model);
      model = Model::from_state_dict(initial_parameters(config.arch, 0), config, opt->model.model);
      report.layout = "preset, official initialisation";
    } else {
      model = opt->model.load(&report);
    }
    const Architecture& c = model.architecture();
    const RunOptions& run = model.config().run;
    long long h = c.pos_grid_h * c.patch_size, w = c.pos_grid_w * c.patch_size;
    if (!opt->res.empty()) std::tie(h, w) = parse_resolution(opt->res, "--res");
    std::printf("file          %s (%s)\n", opt->model.model.c_str(), report.layout.c_str());
    std::printf("block         %s\n", to_string(c.block).c_str());
    std::printf("embed_dims    %lld\ndepth         %lld\npatch_size    %lld\nhidden_dims   %lld\n",
                (long long)c.embed_dims, (long long)c.depth, (long long)c.patch_size, (long long)c.hidden_dims);
    std::printf("pos_grid      %lldx%lld\n", (long long)c.pos_grid_h, (long long)c.pos_grid_w);
    if (c.block == BlockKind::Vrwkv6)
      std::printf("heads         %lld of %lld channels (LoRA ranks: mix %lld, decay %lld)\nshift_pixel   %d\n",
                  (long long)(c.embed_dims / c.head_size), (long long)c.head_size, (long long)c.mix_rank,
                  (long long)c.decay_rank, c.shift_pixel);
    else
      std::printf("shift         %s\nshift_pixel   %d\nchannel_gamma %g\n", to_string(c.shift).c_str(), c.shift_pixel,
                  c.channel_gamma);
    std::printf("key_norm      %s\npost_norm     %s\nlayer_scale   %s\nfinal_norm    %s\n", c.key_norm ? "true" : "false",
                c.post_norm ? "true" : "false", c.layer_scale ? "true" : "false", c.final_norm ? "true" : "false");
    std::printf("head          %s", to_string(c.head).c_str());
    if (c.head != HeadKind::None) std::printf(" (%lld classes)", (long long)c.num_classes);
    std::printf("\nout_indices  ");
    for (auto i : run.out_indices) std::printf(" %lld", (long long)i);
    if (c.block == BlockKind::Vrwkv6) {
      std::printf("\nwkv           Bi-WKV6 (per-head state, data-dependent decay)");
    } else {
      if (c.wkv_direction == WkvDirection::Uni) {
        std::printf("\nwkv           uni-directional (causal), w = %s", c.wkv_decay == WkvDecay::Rwkv4
                                                                           ? "exp(spatial_decay), u = spatial_first"
                                                                           : "spatial_decay/T, u = spatial_first/T");
      } else {
        std::printf("\nwkv           %s", to_string(run.wkv).c_str());
        if (run.wkv == WkvSemantics::Official) std::printf(" (S = %d)", run.wkv_chunks);
      }
    }
    std::printf("\npreprocess    %s\n", to_string(model.config().preprocessing.kind).c_str());
    std::printf("parameters    %lld (%.1fM)\n", (long long)model.parameter_count(), model.parameter_count() / 1e6);
    std::printf("FLOPs         %.3f G at %lldx%lld (multiply-adds + 29·T·C per block, as the paper counts%s)\n",
                model.flops(h, w) / 1e9, h, w,
                c.block == BlockKind::Vrwkv6 ? "; + 4·N·T·C for the Bi-WKV6 scans" : "");
    if (!report.ignored.empty())
      std::printf("ignored       %zu entries not part of the model: %s\n", report.ignored.size(),
                  list_some(report.ignored).c_str());
  });
}

}  // namespace vrwkv::cli
