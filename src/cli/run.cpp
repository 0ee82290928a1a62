// vrwkv run: the parity contract. Input tensor or images in, features and
// logits out, as safetensors.
#include <algorithm>
#include <cmath>
#include <tuple>

#include "commands.hpp"
#include "common.hpp"
#include "seg_options.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/image.hpp"
#include "vrwkv/safetensors.hpp"
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
void run_segmentor(const ModelOptions& mo, const SegOptions& so, const std::string& input_path,
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

}  // namespace

void add_run(CLI::App& app) {
  struct Options {
    ModelOptions model;
    SegOptions seg;
    std::string input, output, output_size;
    std::vector<std::string> images;
    int batch = 8;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("run", "Run the model; write features (and logits) to a safetensors file");
  opt->model.add_to(*cmd);
  auto* in = cmd->add_option("--input,-i", opt->input, "safetensors file with key 'input', F32 [B,3,H,W], normalised");
  auto* imgs = cmd->add_option("images", opt->images, "JPEG or PNG images (instead of --input)");
  in->excludes(imgs);
  cmd->add_option("--output,-o", opt->output, "Output safetensors: features, features.J, logits, input ('-': stdout); segmentors: "
                  "features.0..3, decode.logits, aux.logits (whole mode), seg.logits, seg.pred")
      ->required();
  cmd->add_option("--batch", opt->batch, "Images per forward pass (the output is written as they go)")
      ->check(CLI::Range(1, 4096));
  opt->seg.add_to(*cmd);
  cmd->add_option("--output-size", opt->output_size, "Segmentors: size HxW of seg.logits (default: the input's)");
  cmd->callback([opt] {
    if (opt->input.empty() && opt->images.empty()) input_error("run: give --input X.safetensors or images");
    // The output is checked before any work: writable, and none of the inputs.
    check_output_path(opt->output, "--output");
    std::vector<std::string> inputs = opt->images;
    inputs.push_back(opt->model.path());
    inputs.push_back(opt->input);
    check_not_an_input(opt->output, inputs, "--output");
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
