// vrwkv run: the parity contract. Input tensor or images in, features and
// logits out, as safetensors.
#include "commands.hpp"
#include "common.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/image.hpp"
#include "vrwkv/safetensors.hpp"

namespace vrwkv::cli {

void add_run(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string input, output;
    std::vector<std::string> images;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("run", "Run the model; write features (and logits) to a safetensors file");
  opt->model.add_to(*cmd);
  auto* in = cmd->add_option("--input,-i", opt->input, "safetensors file with key 'input', F32 [B,3,H,W], normalised");
  auto* imgs = cmd->add_option("images", opt->images, "JPEG or PNG images (instead of --input)");
  in->excludes(imgs);
  cmd->add_option("--output,-o", opt->output, "Output safetensors: features, features.J, logits, input")->required();
  cmd->callback([opt] {
    if (opt->input.empty() && opt->images.empty()) input_error("run: give --input X.safetensors or images");
    // The output is checked before any work: writable, and none of the inputs.
    check_output_path(opt->output, "--output");
    std::vector<std::string> inputs = opt->images;
    inputs.push_back(opt->model.path());
    inputs.push_back(opt->input);
    check_not_an_input(opt->output, inputs, "--output");
    const Model model = opt->model.load();
    TensorMap result;
    Tensor input;
    if (!opt->input.empty()) {
      const TensorMap in = read_safetensors(opt->input);
      const auto it = in.find("input");
      if (it == in.end()) input_error(opt->input, ": no tensor 'input' (expected F32 [B,3,H,W])");
      input = it->second;
      if (input.dtype() != DType::F32 || input.ndim() != 4)
        input_error(opt->input, ": tensor 'input' is ", dtype_name(input.dtype()), " ", shape_str(input.shape()),
                    ", expected F32 [B,3,H,W]");
    } else {
      input = load_images(opt->images, model.config());
      result["input"] = input;
    }
    const Outputs out = model.forward(input, opt->model.forward_options(), opt->model.context());
    const auto& idx = model.config().run.out_indices;
    result["features"] = out.features.back();
    if (idx.size() > 1)
      for (std::size_t i = 0; i < idx.size(); ++i) result["features." + std::to_string(idx[i])] = out.features[i];
    if (model.architecture().head != HeadKind::None) result["logits"] = out.logits;
    write_safetensors(opt->output, result);
  });
}

}  // namespace vrwkv::cli
