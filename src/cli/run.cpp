// vrwkv run: the parity contract. Input tensor or images in, features and
// logits out, as safetensors.
#include <algorithm>
#include <cmath>
#include <tuple>

#include "commands.hpp"
#include "common.hpp"
#include "dense_options.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/image.hpp"
#include "vrwkv/safetensors.hpp"
#include "vrwkv/det_input.hpp"
#include "vrwkv/seg_input.hpp"

namespace vrwkv::cli {

namespace {

// The input tensor of --input: F32 [B,3,H,W], finite.
Tensor read_input(const std::string& path) {
  const TensorMap in = read_safetensors(path);
  const auto it = in.find("input");
  if (it == in.end()) input_error(path, ": no tensor 'input' (expected F32 [B,3,H,W])");
  const Tensor& given = it->second;
  if (given.dtype() != DType::F32 || given.ndim() != 4 || given.dim(0) < 1)
    input_error(path, ": tensor 'input' is ", dtype_name(given.dtype()), " ", shape_str(given.shape()),
                ", expected F32 [B,3,H,W]");
  for (std::int64_t i = 0; i < given.numel(); ++i)
    if (!std::isfinite(given.f32()[i]))
      input_error(path, ": tensor 'input' holds a non-finite value (", given.f32()[i], " at element ", i, ")");
  return given;
}

// A segmentor: per input (the tensor, or each image through the ADE20K
// pipeline) features.0..3, decode.logits, aux.logits (whole mode, one call),
// seg.logits and seg.pred at the output size; images also give `input`.
void run_segmentor(const ModelOptions& mo, const DenseOptions& so, const std::string& input_path,
                   const std::vector<std::string>& images, const std::string& output_size, const std::string& output) {
  const Segmentor seg = load_segmentor(mo, so);
  SegmentOptions o = so.inference(seg.config(), mo);
  if (!output_size.empty()) std::tie(o.out_h, o.out_w) = parse_resolution(output_size, "--output-size");
  std::vector<Tensor> inputs;
  if (!input_path.empty()) inputs.push_back(read_input(input_path));
  for (const std::string& image : images) inputs.push_back(load_seg_image(image).input);
  if (inputs.size() > 1)
    for (const Tensor& t : inputs)
      if (t.shape() != inputs[0].shape())
        input_error("run: the images preprocess to different sizes (", shape_str(t.shape()), " and ",
                    shape_str(inputs[0].shape()), "); run them one at a time");
  Tensor x = inputs[0];
  if (inputs.size() > 1) {
    Shape s = inputs[0].shape();
    s[0] = static_cast<std::int64_t>(inputs.size());
    x = Tensor(DType::F32, s);
    for (std::size_t i = 0; i < inputs.size(); ++i)
      std::copy_n(inputs[i].f32(), inputs[i].numel(), x.f32() + i * inputs[i].numel());
  }
  TensorMap out;
  if (o.mode == SegmentOptions::Mode::Whole) {
    const SegOutputs call = seg.forward(x, o, mo.context());
    for (int k = 0; k < 4; ++k) out["features." + std::to_string(k)] = call.features[k];
    out["decode.logits"] = call.decode_logits;
    if (seg.config().head.auxiliary) out["aux.logits"] = call.aux_logits;
  }
  out["seg.logits"] = seg.infer(x, o, mo.context());
  out["seg.pred"] = Segmentor::predict(out["seg.logits"]);
  if (!images.empty()) out["input"] = x;
  write_safetensors(output, out);
}

// The image metadata of a run input file (img_shape, ori_shape, pad_shape
// I64 [2] as h, w; scale_factor F32 [4]); without them the input is its own
// image: no resize, no padding.
ImageMeta read_meta(const TensorMap& in, const std::string& path, std::int64_t H, std::int64_t W) {
  ImageMeta m{H, W, H, W, H, W, {1, 1, 1, 1}};
  const bool any = in.count("img_shape") || in.count("ori_shape") || in.count("pad_shape") || in.count("scale_factor");
  if (!any) return m;
  const auto shape = [&](const char* name) -> std::array<std::int64_t, 2> {
    const auto it = in.find(name);
    if (it == in.end() || it->second.dtype() != DType::I64 || it->second.numel() < 2)
      input_error(path, ": tensor '", name, "' is missing or not I64 [2] (h, w); the image metadata needs img_shape, "
                  "ori_shape, pad_shape and scale_factor");
    return {it->second.data<std::int64_t>()[0], it->second.data<std::int64_t>()[1]};
  };
  std::tie(m.img_h, m.img_w) = std::pair{shape("img_shape")[0], shape("img_shape")[1]};
  std::tie(m.ori_h, m.ori_w) = std::pair{shape("ori_shape")[0], shape("ori_shape")[1]};
  std::tie(m.pad_h, m.pad_w) = std::pair{shape("pad_shape")[0], shape("pad_shape")[1]};
  const auto sf = in.find("scale_factor");
  if (sf == in.end() || sf->second.numel() != 4 || (sf->second.dtype() != DType::F32 && sf->second.dtype() != DType::F64))
    input_error(path, ": tensor 'scale_factor' is missing or not F32 [4] (w, h, w, h)");
  const Tensor f = sf->second.to_f32();
  for (int k = 0; k < 4; ++k) m.scale_factor[k] = f.f32()[k];
  if (m.pad_h != H || m.pad_w != W)
    input_error(path, ": pad_shape ", m.pad_h, "x", m.pad_w, " is not the input's ", H, "x", W);
  return m;
}

// A detector: features.0..3 (unless given), every intermediate of the heads
// under the goldens' names, and the detections det.bboxes, det.scores,
// det.labels, mask.binary. --from-features reads features.0..3 and the image
// metadata from the input file.
void run_detector(const ModelOptions& mo, const DenseOptions& dense, const std::string& input_path,
                  const std::vector<std::string>& images, bool from_features, const std::string& output) {
  const Detector det = load_detector(mo, dense);
  DetectOptions o;
  o.bf16 = mo.dtype == "bf16";
  if (images.size() > 1) input_error("run: a detector runs one image at a time; give one image");
  TensorMap trace;
  Detections d;
  if (from_features) {
    if (input_path.empty()) input_error("run --from-features: give --input X.safetensors with features.0..3");
    const TensorMap in = read_safetensors(input_path);
    std::vector<Tensor> features;
    for (int l = 0; l < 4; ++l) {
      const auto it = in.find("features." + std::to_string(l));
      if (it == in.end()) input_error(input_path, ": no tensor 'features.", l, "' (--from-features reads features.0..3)");
      if (it->second.ndim() != 4)
        input_error(input_path, ": tensor 'features.", l, "' has shape ", shape_str(it->second.shape()),
                    ", expected F32 [1,C,H,W]");
      features.push_back(it->second);
    }
    const ImageMeta meta = read_meta(in, input_path, features[0].dim(2) * 4, features[0].dim(3) * 4);
    d = det.detect_features(features, meta, o, mo.context(), &trace);
  } else if (!input_path.empty()) {
    const TensorMap in = read_safetensors(input_path);
    const Tensor x = read_input(input_path);
    const ImageMeta meta = read_meta(in, input_path, x.dim(2), x.dim(3));
    d = det.detect(x, meta, o, mo.context(), &trace);
  } else {
    const DetImage img = load_det_image(images[0]);
    d = det.detect(img.input, img.meta, o, mo.context(), &trace);
    trace["input"] = img.input;
  }
  TensorMap out;
  for (auto& [name, t] : trace)
    if (!name.starts_with("deform.")) out[name] = std::move(t);
  out["det.bboxes"] = d.bboxes;
  out["det.scores"] = d.scores;
  out["det.labels"] = d.labels;
  out["mask.binary"] = d.masks;
  write_safetensors(output, out);
}

}  // namespace

void add_run(CLI::App& app) {
  struct Options {
    ModelOptions model;
    DenseOptions seg;
    std::string input, output, output_size;
    std::vector<std::string> images;
    int batch = 8;
    bool from_features = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("run", "Run the model; write features (and logits) to a safetensors file");
  opt->model.add_to(*cmd);
  auto* in = cmd->add_option("--input,-i", opt->input, "safetensors file with key 'input', F32 [B,3,H,W], normalised");
  auto* imgs = cmd->add_option("images", opt->images, "JPEG or PNG images (instead of --input)");
  in->excludes(imgs);
  cmd->add_option("--output,-o", opt->output, "Output safetensors: features, features.J, logits, input ('-': stdout); segmentors: "
                  "features.0..3, decode.logits, aux.logits (whole mode), seg.logits, seg.pred; detectors: features.0..3, "
                  "fpn.L, rpn.cls.L, rpn.reg.L, proposals, roi_feats, bbox.*, det.bboxes/scores/labels, mask.*")
      ->required();
  cmd->add_option("--batch", opt->batch, "Images per forward pass (the output is written as they go)")
      ->check(CLI::Range(1, 4096));
  opt->seg.add_to(*cmd);
  cmd->add_option("--output-size", opt->output_size, "Segmentors: size HxW of seg.logits (default: the input's)");
  cmd->add_flag("--from-features", opt->from_features,
                "Detectors: run the neck and heads on --input's features.0..3 and image metadata (img_shape, "
                "ori_shape, pad_shape, scale_factor)");
  cmd->callback([opt] {
    if (opt->input.empty() && opt->images.empty()) input_error("run: give --input X.safetensors or images");
    // The output is checked before any work: writable, and none of the inputs.
    check_output_path(opt->output, "--output");
    std::vector<std::string> inputs = opt->images;
    inputs.push_back(opt->model.path());
    inputs.push_back(opt->input);
    check_not_an_input(opt->output, inputs, "--output");
    if (names_detector(opt->model))
      return run_detector(opt->model, opt->seg, opt->input, opt->images, opt->from_features, opt->output);
    if (opt->from_features) input_error("run --from-features is for detectors; ", opt->model.path(), " is not one");
    if (names_segmentor(opt->model))
      return run_segmentor(opt->model, opt->seg, opt->input, opt->images, opt->output_size, opt->output);
    const Model model = opt->model.load();
    const Architecture& a = model.architecture();
    Tensor given;  // --input
    std::int64_t n = static_cast<std::int64_t>(opt->images.size()), H = 0, W = 0;
    if (!opt->input.empty()) {
      given = read_input(opt->input);
      n = given.dim(0), H = given.dim(2), W = given.dim(3);
    } else {
      std::tie(H, W) = input_size(model.config());
    }
    // The output's tensors, known before the first image: written batch by batch.
    const std::int64_t C = a.embed_dims, h = (H + a.patch_size - 1) / a.patch_size,
                       w = (W + a.patch_size - 1) / a.patch_size;
    const auto& idx = model.config().run.out_indices;
    std::vector<SafetensorsWriter::Entry> entries = {{"features", DType::F32, {n, C, h, w}}};
    if (idx.size() > 1)
      for (std::int64_t j : idx) entries.push_back({"features." + std::to_string(j), DType::F32, {n, C, h, w}});
    if (a.head != HeadKind::None) entries.push_back({"logits", DType::F32, {n, a.num_classes}});
    if (given.numel() == 0) entries.push_back({"input", DType::F32, {n, a.in_channels, H, W}});
    SafetensorsWriter out(opt->output, entries);
    for (std::int64_t start = 0; start < n; start += opt->batch) {
      const std::int64_t count = std::min<std::int64_t>(opt->batch, n - start);
      Tensor x;
      if (given.numel()) {
        x = given.view(start * given.dim(1) * H * W, {count, given.dim(1), H, W});
      } else {
        x = load_images({opt->images.begin() + start, opt->images.begin() + start + count}, model.config());
        out.write_rows("input", start, x);
      }
      const Outputs o = model.forward(x, opt->model.forward_options(), opt->model.context());
      out.write_rows("features", start, o.features.back());
      if (idx.size() > 1)
        for (std::size_t i = 0; i < idx.size(); ++i) out.write_rows("features." + std::to_string(idx[i]), start, o.features[i]);
      if (a.head != HeadKind::None) out.write_rows("logits", start, o.logits);
    }
    out.commit();
  });
}

}  // namespace vrwkv::cli
