#include "cli/common.hpp"

#include <unistd.h>

#include <sstream>

#include "vrwkv/error.hpp"

namespace vrwkv::cli {

namespace {
std::optional<bool> parse_bool(const std::string& text, const std::string& option) {
  if (text.empty()) return std::nullopt;
  if (text == "true" || text == "1" || text == "on") return true;
  if (text == "false" || text == "0" || text == "off") return false;
  input_error(option, ": expected true or false, got '", text, "'");
}
}  // namespace

void ModelOptions::add_to(CLI::App& app, bool model_optional) {
  auto* m = app.add_option("--model,-m", model,
                           model_optional ? std::string("Model file: an official .pth checkpoint or a vrwkv .safetensors "
                                                        "(default: ") + kDefaultModel + ")"
                                          : std::string("Model file: an official .pth checkpoint or a vrwkv .safetensors"));
  if (!model_optional) m->required();
  app.add_option("--threads,-t", threads, "Worker threads (default: all cores)")->check(CLI::Range(1, 1024));
  app.add_option("--wkv", wkv, "Bi-WKV semantics: paper | official (default: the model's; .pth: official)");
  app.add_option("--wkv-chunks", wkv_chunks, "Chunk count S of the official semantics (default 32)")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--preprocess", preprocess, "Image transform: mmcls | internimage | resize (default by model)");
  app.add_option("--out-indices", out_indices, "Blocks whose output is a feature map, e.g. 0,5,11 (default: last)");
  app.add_option("--post-norm", post_norm, "Override post_norm: true | false (default: layer scale present)");
  app.add_option("--final-norm", final_norm, "Override final_norm: true | false (default: backbone.ln1 present)");
  app.add_option("--key-norm", key_norm, "Override key_norm: true | false (default: key_norm tensors present)");
  app.add_option("--layer-scale", layer_scale, "Override layer scale: true | false (default: gamma1 present)");
  app.add_option("--shift-pixel", shift_pixel, "Q-Shift distance (default: 1 if spatial_mix tensors exist, else 0)");
  app.add_option("--channel-gamma", channel_gamma, "Q-Shift channel fraction per direction (default 0.25)");
  app.add_option("--pos-grid", pos_grid, "Training grid of pos_embed, HxW (default: square root of its length)");
  app.add_option("--dtype", dtype, "fp32 | bf16 (block linears in bfloat16, float32 accumulation)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--head", head, "Head: none | linear | mlp (default: inferred; none drops the head)");
}

ConfigOverrides ModelOptions::overrides() const {
  ConfigOverrides o;
  // Errors name the option: "--wkv: unknown Bi-WKV semantics ...".
  const auto named = [](const char* option, auto parse) {
    try {
      return parse();
    } catch (const Error& e) {
      input_error(option, ": ", e.what());
    }
  };
  if (!wkv.empty()) o.wkv = named("--wkv", [&] { return wkv_from_string(wkv); });
  if (wkv_chunks) o.wkv_chunks = wkv_chunks;
  if (!preprocess.empty()) o.preprocess = named("--preprocess", [&] { return preprocess_from_string(preprocess); });
  if (!head.empty()) o.head = named("--head", [&] { return head_from_string(head); });
  if (!out_indices.empty()) o.out_indices = parse_index_list(out_indices, "--out-indices");
  o.post_norm = parse_bool(post_norm, "--post-norm");
  o.final_norm = parse_bool(final_norm, "--final-norm");
  o.key_norm = parse_bool(key_norm, "--key-norm");
  o.layer_scale = parse_bool(layer_scale, "--layer-scale");
  if (shift_pixel >= 0) o.shift_pixel = shift_pixel;
  if (channel_gamma != 0) o.channel_gamma = channel_gamma;
  if (!pos_grid.empty()) {
    long long h = 0, w = 0;
    char x = 0, extra = 0;
    if (std::sscanf(pos_grid.c_str(), "%lld%c%lld%c", &h, &x, &w, &extra) != 3 || (x != 'x' && x != 'X') || h < 1 ||
        w < 1)
      input_error("--pos-grid: expected HxW such as 14x14, got '", pos_grid, "'");
    o.pos_grid_h = h, o.pos_grid_w = w;
  }
  return o;
}

ForwardOptions ModelOptions::forward_options() const {
  ForwardOptions o;
  o.bf16 = dtype == "bf16";
  return o;
}

Model ModelOptions::load(LoadReport* report) const {
  if (model.empty()) {
    if (access(kDefaultModel, R_OK) != 0)
      input_error("no --model given, and the default model ", kDefaultModel, " is not there");
    return Model::load(kDefaultModel, overrides(), report);
  }
  return Model::load(model, overrides(), report);
}

std::pair<std::int64_t, std::int64_t> parse_resolution(const std::string& text, const std::string& option) {
  long long h = 0, w = 0;
  char x = 0, extra = 0;
  const int n = std::sscanf(text.c_str(), "%lld%c%lld%c", &h, &x, &w, &extra);
  if (n == 1) w = h;
  else if (n != 3 || (x != 'x' && x != 'X')) input_error(option, ": expected N or HxW, got '", text, "'");
  if (h < 1 || w < 1 || h > 16384 || w > 16384) input_error(option, ": expected sizes in 1..16384, got '", text, "'");
  return {h, w};
}

std::vector<std::int64_t> parse_index_list(const std::string& text, const std::string& option) {
  std::vector<std::int64_t> out;
  std::istringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size()) input_error(option, ": expected integers separated by commas, got '", text, "'");
    out.push_back(v);
  }
  if (out.empty()) input_error(option, ": expected at least one index");
  return out;
}

}  // namespace vrwkv::cli

