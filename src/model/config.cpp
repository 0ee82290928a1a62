#include "vrwkv/config.hpp"

#include <nlohmann/json.hpp>

#include "io/json_number.hpp"

#include "vrwkv/error.hpp"
#include "vrwkv/model.hpp"

namespace vrwkv {

std::string to_string(BlockKind b) {
  switch (b) {
    case BlockKind::Vrwkv: return "vrwkv";
    case BlockKind::Vrwkv6: return "vrwkv6";
  }
  return "?";
}

BlockKind block_from_string(const std::string& s) {
  if (s == "vrwkv") return BlockKind::Vrwkv;
  if (s == "vrwkv6") return BlockKind::Vrwkv6;
  input_error("unknown block kind '", s, "' (expected vrwkv or vrwkv6)");
}

std::string to_string(HeadKind h) {
  switch (h) {
    case HeadKind::None: return "none";
    case HeadKind::Linear: return "linear";
    case HeadKind::Mlp: return "mlp";
  }
  return "?";
}

std::string to_string(WkvSemantics s) { return s == WkvSemantics::Paper ? "paper" : "official"; }
std::string to_string(WkvDirection d) { return d == WkvDirection::Bi ? "bi" : "uni"; }
std::string to_string(WkvDecay d) { return d == WkvDecay::Vrwkv ? "vrwkv" : "rwkv4"; }
std::string to_string(TokenShift s) {
  switch (s) {
    case TokenShift::Q: return "q";
    case TokenShift::OneD: return "1d";
    case TokenShift::None: return "none";
  }
  return "?";
}
std::string to_string(Preprocess p) {
  switch (p) {
    case Preprocess::Mmcls: return "mmcls";
    case Preprocess::InternImage: return "internimage";
    case Preprocess::Resize: return "resize";
  }
  return "?";
}

HeadKind head_from_string(const std::string& s) {
  if (s == "none") return HeadKind::None;
  if (s == "linear") return HeadKind::Linear;
  if (s == "mlp") return HeadKind::Mlp;
  input_error("unknown head kind '", s, "' (expected none, linear or mlp)");
}

WkvSemantics wkv_from_string(const std::string& s) {
  if (s == "paper") return WkvSemantics::Paper;
  if (s == "official") return WkvSemantics::Official;
  input_error("unknown Bi-WKV semantics '", s, "' (expected paper or official)");
}

WkvDirection wkv_direction_from_string(const std::string& s) {
  if (s == "bi") return WkvDirection::Bi;
  if (s == "uni") return WkvDirection::Uni;
  input_error("unknown WKV direction '", s, "' (expected bi or uni)");
}

WkvDecay wkv_decay_from_string(const std::string& s) {
  if (s == "vrwkv") return WkvDecay::Vrwkv;
  if (s == "rwkv4") return WkvDecay::Rwkv4;
  input_error("unknown WKV decay '", s, "' (expected vrwkv or rwkv4)");
}

TokenShift shift_from_string(const std::string& s) {
  if (s == "q") return TokenShift::Q;
  if (s == "1d") return TokenShift::OneD;
  if (s == "none") return TokenShift::None;
  input_error("unknown token shift '", s, "' (expected q, 1d or none)");
}

Preprocess preprocess_from_string(const std::string& s) {
  if (s == "mmcls") return Preprocess::Mmcls;
  if (s == "internimage") return Preprocess::InternImage;
  if (s == "resize") return Preprocess::Resize;
  input_error("unknown preprocessing '", s, "' (expected mmcls, internimage or resize)");
}

// The JSON keeps one flat object (the files written before the configuration
// was split read the same); "block" is absent in those and means vrwkv, and
// the ablation options (shift, wkv_direction, wkv_decay) are absent in files
// older than them: Q-Shift unless shift_pixel is 0, Bi-WKV, VRWKV's operands.
std::string config_to_json(const Config& config) {
  const Architecture& c = config.arch;
  nlohmann::json j = {
      {"block", to_string(c.block)},
      {"embed_dims", c.embed_dims},   {"depth", c.depth},
      {"patch_size", c.patch_size},   {"in_channels", c.in_channels},
      {"hidden_dims", c.hidden_dims}, {"pos_grid", {c.pos_grid_h, c.pos_grid_w}},
      {"shift", to_string(c.shift)},  {"shift_pixel", c.shift_pixel},
      {"channel_gamma", c.channel_gamma},
      {"wkv_direction", to_string(c.wkv_direction)}, {"wkv_decay", to_string(c.wkv_decay)},
      {"key_norm", c.key_norm},       {"post_norm", c.post_norm},
      {"layer_scale", c.layer_scale}, {"final_norm", c.final_norm},
      {"head", to_string(c.head)},    {"num_classes", c.num_classes},
      {"head_hidden", c.head_hidden}, {"out_indices", config.run.out_indices},
      {"wkv", to_string(config.run.wkv)},      {"wkv_chunks", config.run.wkv_chunks},
      {"preprocess", to_string(config.preprocessing.kind)},
  };
  if (c.block == BlockKind::Vrwkv6)
    j["head_size"] = c.head_size, j["mix_rank"] = c.mix_rank, j["decay_rank"] = c.decay_rank;
  if (!config.labels.empty()) j["class_names"] = config.labels;
  if (config.preprocessing.kind == Preprocess::Resize)
    j["mean"] = config.preprocessing.mean, j["std"] = config.preprocessing.std;
  return j.dump();
}

Config config_from_json(const std::string& text, const std::string& source) {
  const auto integer = [&](const nlohmann::json& v, const char* key, double lo = -9.0e18, double hi = 9.0e18) {
    return io::json_integer(v, source + ": vrwkv.config " + key, lo, hi);
  };
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    Config config;
    Architecture& c = config.arch;
    if (j.contains("block")) c.block = block_from_string(j.at("block"));
    c.embed_dims = integer(j.at("embed_dims"), "embed_dims");
    c.depth = integer(j.at("depth"), "depth");
    c.patch_size = integer(j.at("patch_size"), "patch_size");
    c.in_channels = integer(j.at("in_channels"), "in_channels");
    c.hidden_dims = integer(j.at("hidden_dims"), "hidden_dims");
    c.pos_grid_h = integer(j.at("pos_grid").at(0), "pos_grid");
    c.pos_grid_w = integer(j.at("pos_grid").at(1), "pos_grid");
    c.shift_pixel = static_cast<int>(integer(j.at("shift_pixel"), "shift_pixel", 0, 1 << 30));
    const auto named = [&](const char* key, auto parse) {  // "PATH: vrwkv.config shift: unknown token shift ..."
      try {
        return parse(j.at(key).get<std::string>());
      } catch (const Error& e) {
        input_error(source, ": vrwkv.config ", key, ": ", e.what());
      }
    };
    c.shift = j.contains("shift") ? named("shift", shift_from_string)
              : c.shift_pixel == 0 ? TokenShift::None
                                   : TokenShift::Q;
    c.channel_gamma = j.at("channel_gamma");
    if (j.contains("wkv_direction")) c.wkv_direction = named("wkv_direction", wkv_direction_from_string);
    if (j.contains("wkv_decay")) c.wkv_decay = named("wkv_decay", wkv_decay_from_string);
    c.key_norm = j.at("key_norm");
    c.post_norm = j.at("post_norm");
    c.layer_scale = j.at("layer_scale");
    c.final_norm = j.at("final_norm");
    c.head = head_from_string(j.at("head"));
    c.num_classes = integer(j.at("num_classes"), "num_classes");
    c.head_hidden = integer(j.at("head_hidden"), "head_hidden");
    if (c.block == BlockKind::Vrwkv6) {
      c.head_size = integer(j.at("head_size"), "head_size");
      c.mix_rank = integer(j.at("mix_rank"), "mix_rank");
      c.decay_rank = integer(j.at("decay_rank"), "decay_rank");
    }
    for (const auto& i : j.at("out_indices")) config.run.out_indices.push_back(integer(i, "out_indices"));
    config.run.wkv = wkv_from_string(j.at("wkv"));
    config.run.wkv_chunks = static_cast<int>(integer(j.at("wkv_chunks"), "wkv_chunks", 0, 1 << 30));
    config.preprocessing.kind = preprocess_from_string(j.at("preprocess"));
    if (j.contains("class_names")) config.labels = j.at("class_names").get<std::vector<std::string>>();
    if (j.contains("mean")) config.preprocessing.mean = j.at("mean").get<std::array<float, 3>>();
    if (j.contains("std")) config.preprocessing.std = j.at("std").get<std::array<float, 3>>();
    for (float s : config.preprocessing.std)
      if (!(s > 0)) input_error(source, ": vrwkv.config has a non-positive std ", s);
    check_config(config, source + " (vrwkv.config)");
    return config;
  } catch (const nlohmann::json::exception& e) {
    input_error(source, ": invalid vrwkv.config metadata (", e.what(), ")");
  }
}

}  // namespace vrwkv
