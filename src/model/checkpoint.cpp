// Model::load: reads a .pth checkpoint (VRWKV.md 5) or a vrwkv .safetensors
// file and maps its keys onto the official parameter names.
#include <cstdio>
#include <cstring>
#include <set>

#include "io/file.hpp"
#include "io/pth.hpp"
#include "model/checkpoint.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/model.hpp"
#include "vrwkv/safetensors.hpp"

namespace vrwkv {

namespace {

// Official names are "backbone.*" and "head.*". Accept backbone-only state
// dicts saved without "backbone.".
TensorMap normalise_keys(TensorMap sd) {
  if (!sd.count("backbone.patch_embed.projection.weight") && sd.count("patch_embed.projection.weight")) {
    TensorMap out;
    for (auto& [k, t] : sd) out.emplace(k.starts_with("head.") ? k : "backbone." + k, t);
    sd = std::move(out);
  }
  return sd;
}

enum class Format { Pth, Safetensors };

// From the first bytes: a zip archive (or a legacy pickle) is a .pth; an
// 8-byte length followed by '{' is safetensors.
Format detect_format(const std::vector<std::uint8_t>& bytes, const std::string& path) {
  if (bytes.size() >= 4 && std::memcmp(bytes.data(), "PK\x03\x04", 4) == 0) return Format::Pth;
  // Before the pickle test: a header length's first byte may be 0x80.
  if (bytes.size() >= 9 && bytes[8] == '{') return Format::Safetensors;
  if (bytes.size() >= 2 && bytes[0] == 0x80) return Format::Pth;  // a legacy pickle: the reader explains
  input_error(path, ": not a model file (expected a PyTorch .pth checkpoint or a .safetensors file)");
}

}  // namespace

namespace model {

TensorMap read_checkpoint(const std::string& path, LoadReport& rep, Metadata* meta) {
  // The readers take the file themselves: only its first bytes are read here.
  TensorMap sd;
  if (detect_format(read_file_head(path, 16), path) == Format::Pth) {
    PthStateDict pth = read_pth(path);
    rep.format = "pth";
    rep.layout = pth.layout;
    rep.ignored = pth.ignored;
    sd = std::move(pth.tensors);
  } else {
    sd = read_safetensors(path, meta);
    rep.format = rep.layout = "safetensors";
  }
  // DataParallel's "module." prefix.
  bool all_module = !sd.empty();
  for (const auto& [k, t] : sd) all_module = all_module && k.starts_with("module.");
  if (all_module) {
    TensorMap out;
    for (auto& [k, t] : sd) out.emplace(k.substr(7), t);
    sd = std::move(out);
  }
  return sd;
}

}  // namespace model

Model Model::load(const std::string& path, const ConfigOverrides& overrides, LoadReport* report) {
  LoadReport rep;
  Metadata meta;
  const TensorMap sd = normalise_keys(model::read_checkpoint(path, rep, &meta));
  Config config;
  if (meta.count("vrwkv.config"))
    config = config_from_json(meta.at("vrwkv.config"), path);
  else
    config = infer_config(sd, path);
  apply_overrides(config, overrides, path);
  Model model = from_state_dict(sd, config, path);
  for (const auto& [k, t] : sd)
    if (!model.params_.count(k)) rep.ignored.push_back(k);
  if (report) *report = std::move(rep);
  return model;
}

}  // namespace vrwkv
