// vrwkv grad: the gradient contract. Input and labels in; the label-smoothed
// cross-entropy and d loss / d parameter for every parameter out.
#include "commands.hpp"
#include "common.hpp"
#include "validators.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/backward.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/safetensors.hpp"

namespace vrwkv::cli {

void add_grad(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string input, output;
    double smoothing = 0.1;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "grad", "Loss and gradients of every parameter for one batch (eval mode: no drop path), as safetensors");
  opt->model.add_to(*cmd);
  cmd->add_option("--input,-i", opt->input, "safetensors file with 'input' F32 [B,C,H,W] and 'labels' I64 [B]")
      ->required();
  cmd->add_option("--output,-o", opt->output, "Output safetensors: 'loss' F32 [] and 'grad.<parameter name>'")
      ->required();
  cmd->add_option("--label-smoothing", opt->smoothing, "Label smoothing ε of the loss (mmcls mode 'original')")
      ->capture_default_str()
      ->check(validators::between(0, 1));
  cmd->footer(
      "The Bi-WKV semantics is the model's, as for run (.pth: official, S = 32); the gradient is the exact\n"
      "gradient of that forward (not the official CUDA kernel's approximate backward).");
  cmd->callback([opt] {
    const ModelOptions& mo = opt->model;
    if (mo.dtype != "fp32") input_error("grad: --dtype ", mo.dtype, " is not supported (gradients are fp32)");
    check_output_path(opt->output, "--output");
    check_not_an_input(opt->output, {opt->input, mo.path()}, "--output");
    const TensorMap in = read_safetensors(opt->input);
    const auto get = [&](const char* key, DType dtype, int ndim, const char* expected) {
      const auto it = in.find(key);
      if (it == in.end()) input_error(opt->input, ": no tensor '", key, "' (expected ", expected, ")");
      if (it->second.dtype() != dtype || it->second.ndim() != ndim)
        input_error(opt->input, ": tensor '", key, "' is ", dtype_name(it->second.dtype()), " ",
                    shape_str(it->second.shape()), ", expected ", expected);
      return it->second;
    };
    const Tensor input = get("input", DType::F32, 4, "F32 [B,C,H,W]");
    const Tensor labels = get("labels", DType::I64, 1, "I64 [B]");
    if (labels.dim(0) != input.dim(0))
      input_error(opt->input, ": 'labels' has ", labels.dim(0), " entries for a batch of ", input.dim(0));
    const Model model = mo.load();
    Gradients grads(model);
    Backprop backprop(model);
    BackwardOptions bo;
    bo.label_smoothing = opt->smoothing;
    const LossResult r = backprop.run(input, one_hot(labels, model.architecture().num_classes), grads, bo,
                                        opt->model.context());
    TensorMap out;
    out["loss"] = Tensor(DType::F32, {});
    out["loss"].f32()[0] = static_cast<float>(r.loss);
    out["logits"] = r.logits;
    for (const auto& [name, g] : grads.tensors) out["grad." + name] = g;
    write_safetensors(opt->output, out);
  });
}

}  // namespace vrwkv::cli
