#include "vrwkv/train.hpp"

#include <omp.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <type_traits>
#include <zlib.h>

#include "image/image.hpp"
#include "image/input.hpp"
#include "image/preprocess.hpp"
#include "model/params.hpp"
#include "threads.hpp"
#include "train/augment.hpp"
#include "vrwkv/atomic_file.hpp"
#include "vrwkv/backward.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/presets.hpp"
#include "vrwkv/safetensors.hpp"

namespace vrwkv::train {

using nlohmann::json;

// ---------------------------------------------------------------------------
// Configuration file

namespace {

// A JSON value as a field's C++ type, refusing any other kind: integers for
// integer fields (1.5 epochs is an error, 2.0 is 2), finite numbers within the
// type's range for floating fields, lists of the exact length for fixed-size
// fields. false: the value is not of the field's kind.
bool convert(const json& v, bool& out) {
  if (!v.is_boolean()) return false;
  out = v.get<bool>();
  return true;
}
bool convert(const json& v, std::string& out) {
  if (!v.is_string()) return false;
  out = v.get<std::string>();
  return true;
}
template <class T>
  requires std::is_integral_v<T>
bool convert(const json& v, T& out) {
  using L = std::numeric_limits<T>;
  if (v.is_number_unsigned()) {
    const std::uint64_t u = v.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(L::max())) return false;
    out = static_cast<T>(u);
    return true;
  }
  if (v.is_number_integer()) {
    const std::int64_t i = v.get<std::int64_t>();
    if (i < 0 ? (!L::is_signed || i < static_cast<std::int64_t>(L::min()))
              : static_cast<std::uint64_t>(i) > static_cast<std::uint64_t>(L::max()))
      return false;
    out = static_cast<T>(i);
    return true;
  }
  if (v.is_number_float()) {  // 2.0 or 1e3: a whole number written as a float
    const double d = v.get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::abs(d) >= 9.0e18) return false;
    return convert(json(static_cast<std::int64_t>(d)), out);
  }
  return false;
}
template <class T>
  requires std::is_floating_point_v<T>
bool convert(const json& v, T& out) {
  if (!v.is_number()) return false;
  const double d = v.get<double>();
  if (!std::isfinite(d) || std::abs(d) > static_cast<double>(std::numeric_limits<T>::max())) return false;
  out = static_cast<T>(d);
  return true;
}
template <class T>
bool convert(const json& v, std::vector<T>& out) {
  if (!v.is_array()) return false;
  std::vector<T> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i)
    if (!convert(v[i], r[i])) return false;
  out = std::move(r);
  return true;
}
template <class T, std::size_t N>
bool convert(const json& v, std::array<T, N>& out) {
  if (!v.is_array() || v.size() != N) return false;
  std::array<T, N> r{};
  for (std::size_t i = 0; i < N; ++i)
    if (!convert(v[i], r[i])) return false;
  out = r;
  return true;
}

// What a field of type T holds, for messages.
template <class T>
std::string kind(bool plural = false) {
  if constexpr (std::is_same_v<T, bool>) return plural ? "booleans" : "true or false";
  else if constexpr (std::is_same_v<T, std::string>) return plural ? "strings" : "a string";
  else if constexpr (std::is_unsigned_v<T>) return plural ? "integers >= 0" : "an integer >= 0";
  else if constexpr (std::is_integral_v<T>) return plural ? "integers" : "an integer";
  else if constexpr (std::is_floating_point_v<T>) return plural ? "finite numbers" : "a finite number";
  else if constexpr (requires { typename T::value_type; std::tuple_size<T>::value; })
    return "a list of " + std::to_string(std::tuple_size<T>::value) + " " + kind<typename T::value_type>(true);
  else return "a list of " + kind<typename T::value_type>(true);
}

// A value as it appears in the file, cut short for a one-line message.
std::string shown(const json& v) {
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

// Parses JSON text, refusing a key given twice in one object (JSON parsers keep the last one silently).
json parse_strict(const std::string& text, const std::string& source) {
  struct Object {
    std::string prefix, last_key;
    std::set<std::string> keys;
  };
  std::vector<Object> objects;
  const json::parser_callback_t check = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      objects.push_back({objects.empty() ? "" : objects.back().prefix + objects.back().last_key + ".", "", {}});
    } else if (event == json::parse_event_t::object_end) {
      if (!objects.empty()) objects.pop_back();
    } else if (event == json::parse_event_t::key && !objects.empty()) {
      Object& o = objects.back();
      o.last_key = parsed.get<std::string>();
      if (!o.keys.insert(o.last_key).second) input_error(source, ": key '", o.prefix, o.last_key, "' is given twice");
    }
    return true;
  };
  try {
    return json::parse(text, check);
  } catch (const json::exception& e) {
    input_error(source, ": not valid JSON (", e.what(), ")");
  }
}

// Reads the keys of one JSON object, refusing any it does not know and any
// value of the wrong kind.
class Section {
 public:
  Section(const json& j, std::string path, const std::string& source) : j_(j), path_(std::move(path)), source_(source) {
    if (!j_.is_object()) input_error(source_, ": '", path_, "' must be an object");
  }
  template <class T>
  void get(const char* key, T& out) {
    seen_.insert(key);
    const auto it = j_.find(key);
    if (it == j_.end()) return;
    if (!convert(*it, out)) input_error(source_, ": '", path_, key, "' must be ", kind<T>(), ", got ", shown(*it));
  }
  bool has(const char* key) const { return j_.contains(key); }
  const json& at(const char* key) {
    seen_.insert(key);
    return j_.at(key);
  }
  void finish() const {
    for (const auto& [key, value] : j_.items())
      if (!seen_.count(key)) input_error(source_, ": unknown key '", path_, key, "'");
  }

 private:
  const json& j_;
  std::string path_;
  const std::string& source_;
  std::set<std::string> seen_;
};

void check_config(const TrainConfig& c, const std::string& source) {
  const auto require = [&](bool ok, const char* what) {
    if (!ok) input_error(source, ": ", what);
  };
  // Every floating value finite first: the comparisons below let NaN through one way or the other.
  const Transform& t = c.transform;
  for (const auto& [name, v] :
       {std::pair<const char*, double>{"optim.lr", c.adamw.lr}, {"optim.weight_decay", c.adamw.weight_decay},
        {"optim.betas", c.adamw.beta1}, {"optim.betas", c.adamw.beta2}, {"optim.eps", c.adamw.eps},
        {"optim.clip_grad", c.clip_grad}, {"optim.warmup_epochs", c.warmup_epochs},
        {"optim.warmup_ratio", c.warmup_ratio}, {"optim.min_lr_ratio", c.min_lr_ratio},
        {"optim.label_smoothing", c.label_smoothing}, {"optim.drop_path", c.drop_path},
        {"optim.ema_decay", c.ema_decay}, {"model.init_values", c.init_values},
        {"augment.crop_scale", t.crop_scale_min}, {"augment.crop_scale", t.crop_scale_max},
        {"augment.hflip", t.hflip}, {"augment.rand_augment_magnitude", t.rand_augment_magnitude},
        {"augment.random_erasing", t.random_erasing}, {"augment.mixup_alpha", c.mixing.mixup_alpha},
        {"augment.cutmix_alpha", c.mixing.cutmix_alpha}, {"augment.mix_prob", c.mixing.prob},
        {"augment.switch_prob", c.mixing.switch_prob}})
    if (!std::isfinite(v)) input_error(source, ": ", name, " must be a finite number, got ", v);
  for (int k = 0; k < 3; ++k)
    if (!std::isfinite(t.mean[k]) || !std::isfinite(t.std[k]))
      input_error(source, ": data.mean and data.std must be finite numbers");
  require(c.epochs >= 1, "epochs must be at least 1");
  require(c.batch_size >= 1, "batch_size must be at least 1");
  require(c.adamw.lr > 0, "optim.lr must be positive");
  require(c.adamw.weight_decay >= 0, "optim.weight_decay must be non-negative");
  require(c.adamw.beta1 >= 0 && c.adamw.beta1 < 1 && c.adamw.beta2 >= 0 && c.adamw.beta2 < 1,
          "optim.betas must be in [0, 1)");
  require(c.adamw.eps > 0, "optim.eps must be positive");
  require(c.clip_grad >= 0, "optim.clip_grad must be non-negative (0: no clipping)");
  require(c.warmup_epochs >= 0, "optim.warmup_epochs must be non-negative");
  require(c.min_lr_ratio >= 0 && c.warmup_ratio >= 0, "optim.min_lr_ratio and warmup_ratio must be non-negative");
  require(c.label_smoothing >= 0 && c.label_smoothing < 1, "optim.label_smoothing must be in [0, 1)");
  require(c.drop_path >= 0 && c.drop_path < 1, "optim.drop_path must be in [0, 1)");
  require(c.ema_decay >= 0 && c.ema_decay < 1, "optim.ema_decay must be in [0, 1)");
  require(c.eval_every >= 0 && c.checkpoint_every >= 0 && c.log_every >= 1,
          "eval_every and checkpoint_every must be non-negative, log_every positive");
  require(c.train_limit >= 0 && c.val_limit >= 0, "data limits must be non-negative");
  require(c.zero == 0 || c.zero == 1, "zero must be 0 (every rank holds the optimizer state) or 1 (ZeRO-1: sharded)");
  require(t.crop_scale_min > 0 && t.crop_scale_min <= t.crop_scale_max && t.crop_scale_max <= 1,
          "augment.crop_scale must satisfy 0 < min <= max <= 1");
  require(t.hflip >= 0 && t.hflip <= 1 && t.random_erasing >= 0 && t.random_erasing <= 1,
          "augment probabilities must be in [0, 1]");
  require(c.mixing.prob >= 0 && c.mixing.prob <= 1 && c.mixing.switch_prob >= 0 && c.mixing.switch_prob <= 1,
          "augment.mix_prob and switch_prob must be in [0, 1]");
  require(t.random_crop_padding >= 0 && t.rand_augment_ops >= 0, "augment counts must be non-negative");
  require(c.mixing.mixup_alpha >= 0 && c.mixing.cutmix_alpha >= 0, "augment mixup/cutmix alphas must be >= 0");
  check_architecture(c.model, cat(source, ": model"));
}

// The model section's sizes, checked before any arithmetic on them (a patch
// size of 0 must not reach a division, an embedding width of 2^31 not a
// multiplication or an allocation).
void read_model(Section& m, TrainConfig& c, const std::string& source) {
  Architecture& a = c.model;
  m.get("init", c.init);
  m.get("preset", c.preset);
  std::string block = to_string(a.block);
  m.get("block", block);
  try {
    a.block = block_from_string(block);
  } catch (const Error& e) {
    input_error(source, ": model.block: ", e.what());
  }
  m.get("head_size", a.head_size);  // VRWKV6: channels per attention head
  if (m.has("head_size") && m.has("preset"))
    input_error(source, ": model.head_size: a preset has its own (64), give the architecture instead");
  if (m.has("head_size") && a.block != BlockKind::Vrwkv6)
    input_error(source, ": model.head_size is a VRWKV6 setting (model.block \"vrwkv6\")");
  if (m.has("channel_gamma") && a.block == BlockKind::Vrwkv6)
    input_error(source, ": model.channel_gamma: a VRWKV6 block shifts a quarter of each head, there is no gamma");
  m.get("embed_dims", a.embed_dims);
  m.get("depth", a.depth);
  m.get("patch_size", a.patch_size);
  m.get("in_channels", a.in_channels);
  std::int64_t hidden_rate = 4;
  m.get("hidden_rate", hidden_rate);
  std::vector<std::int64_t> size;
  m.get("image_size", size);
  m.get("shift_pixel", a.shift_pixel);
  m.get("channel_gamma", a.channel_gamma);
  // The ablation's variants (ABLATION.md B.3): model.shift q | 1d | none (none is shift_pixel 0),
  // model.wkv_direction bi | uni, model.wkv_decay vrwkv | rwkv4.
  std::string shift = m.has("shift_pixel") && a.shift_pixel == 0 ? "none" : to_string(a.shift);
  std::string direction = to_string(a.wkv_direction), decay = to_string(a.wkv_decay);
  m.get("shift", shift);
  m.get("wkv_direction", direction);
  m.get("wkv_decay", decay);
  const auto named = [&](const char* key, auto parse) {
    try {
      return parse();
    } catch (const Error& e) {
      input_error(source, ": model.", key, ": ", e.what());
    }
  };
  a.shift = named("shift", [&] { return shift_from_string(shift); });
  a.wkv_direction = named("wkv_direction", [&] { return wkv_direction_from_string(direction); });
  a.wkv_decay = named("wkv_decay", [&] { return wkv_decay_from_string(decay); });
  if (a.shift == TokenShift::None && m.has("shift_pixel") && a.shift_pixel != 0)
    input_error(source, ": model.shift \"none\" contradicts model.shift_pixel ", a.shift_pixel);
  if (a.shift != TokenShift::None && a.shift_pixel == 0)
    input_error(source, ": model.shift \"", shift, "\" needs a shift distance, but model.shift_pixel is 0");
  if (a.shift == TokenShift::None) a.shift_pixel = 0;
  c.init_variant = !c.init.empty() && (m.has("shift") || m.has("wkv_direction") || m.has("wkv_decay"));
  m.get("key_norm", a.key_norm);
  m.get("post_norm", a.post_norm);
  m.get("final_norm", a.final_norm);
  if (m.has("init_values") && !m.at("init_values").is_null()) {
    a.layer_scale = true;
    m.get("init_values", c.init_values);
  }
  m.finish();
  if (c.init.empty() && c.preset.empty()) {
    std::string missing;
    for (const char* key : {"embed_dims", "depth", "patch_size"})
      if (!m.has(key)) missing += cat(missing.empty() ? "" : ", ", "model.", key);
    if (!missing.empty())
      input_error(source, ": ", missing, " missing (give the architecture, or model.preset: ",
                  "vrwkv_t/s/b/l or vrwkv6_t/s/b, or model.init: a checkpoint to fine-tune)");
  }
  const std::string where = cat(source, ": model");
  if (a.in_channels != 1 && a.in_channels != 3)
    input_error(source, ": model.in_channels must be 1 or 3, got ", a.in_channels);
  if (hidden_rate < 1 || hidden_rate > 64) input_error(source, ": model.hidden_rate must be in 1..64, got ", hidden_rate);
  if (!size.empty() && size.size() != 2)
    input_error(source, ": model.image_size must be [H, W], got ", size.size(), " values");
  // The sizes alone first (hidden_dims and the grid are derived below).
  Architecture sizes = a;
  sizes.hidden_dims = 1, sizes.pos_grid_h = sizes.pos_grid_w = 1;
  check_architecture(sizes, where);
  a.hidden_dims = hidden_rate * a.embed_dims;
  if (!size.empty()) {
    for (const std::int64_t s : size)
      if (s < a.patch_size || s > 16384 * a.patch_size || s % a.patch_size)
        input_error(source, ": model.image_size [", size[0], ", ", size[1], "] must be multiples of the patch size ",
                    a.patch_size, " (at least one patch, at most 16384)");
    a.pos_grid_h = size[0] / a.patch_size, a.pos_grid_w = size[1] / a.patch_size;
  }
  check_architecture(a, where);
  if (!c.init.empty() && !c.preset.empty()) input_error(source, ": model.init and model.preset exclude each other");
  Architecture sized = a;  // what initial_model builds
  if (!c.preset.empty()) {
    try {
      sized = preset_config(c.preset).arch;
    } catch (const Error& e) {
      input_error(source, ": model.preset: ", e.what());
    }
    sized.in_channels = a.in_channels, sized.pos_grid_h = a.pos_grid_h, sized.pos_grid_w = a.pos_grid_w;
    sized.shift = a.shift, sized.shift_pixel = a.shift_pixel;  // and the variant, as initial_model builds it
    sized.wkv_direction = a.wkv_direction, sized.wkv_decay = a.wkv_decay;
    check_architecture(sized, cat(source, ": model (preset ", c.preset, ")"));
  }
  // A model that cannot be trained in this machine's memory: its weights, gradients, two AdamW moments and
  // the EMA copy are 5 floats per parameter, before any activation.
  if (c.init.empty()) {
    double params = 0;
    for (const auto& [name, shape] : parameter_shapes(sized)) params += static_cast<double>(shape_numel(shape));
    const double need = params * 5 * sizeof(float);
    const double have = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
    if (have > 0 && need > have)
      input_error(source, ": the model has ", static_cast<long long>(params), " parameters, whose training state (",
                  std::round(need / (1 << 30) * 10) / 10, " GiB) exceeds this machine's memory (",
                  std::round(have / (1 << 30) * 10) / 10, " GiB); lower model.embed_dims or model.depth");
  }
}

}  // namespace

TrainConfig train_config_from_json(const std::string& text, const std::string& source) {
  const json j = parse_strict(text, source);
  TrainConfig c;
  Section top(j, "", source);
  if (top.has("model")) {
    Section m(top.at("model"), "model.", source);
    read_model(m, c, source);
  }
  if (top.has("data")) {
    Section d(top.at("data"), "data.", source);
    d.get("train", c.train_data);
    d.get("val", c.val_data);
    d.get("train_limit", c.train_limit);
    d.get("val_limit", c.val_limit);
    d.get("mean", c.transform.mean);
    d.get("std", c.transform.std);
    d.finish();
    for (float s : c.transform.std)
      if (!(s > 0)) input_error(source, ": data.std must be positive");
  }
  if (top.has("augment")) {
    Section a(top.at("augment"), "augment.", source);
    Transform& t = c.transform;
    a.get("random_resized_crop", t.random_resized_crop);
    std::vector<double> pair;
    a.get("crop_scale", pair);
    if (!pair.empty()) {
      if (pair.size() != 2) input_error(source, ": augment.crop_scale must be [min, max]");
      t.crop_scale_min = pair[0], t.crop_scale_max = pair[1];
    }
    a.get("random_crop_padding", t.random_crop_padding);
    a.get("hflip", t.hflip);
    a.get("rand_augment_ops", t.rand_augment_ops);
    a.get("rand_augment_magnitude", t.rand_augment_magnitude);
    a.get("random_erasing", t.random_erasing);
    a.get("mixup_alpha", c.mixing.mixup_alpha);
    a.get("cutmix_alpha", c.mixing.cutmix_alpha);
    a.get("mix_prob", c.mixing.prob);
    a.get("switch_prob", c.mixing.switch_prob);
    a.finish();
  }
  if (top.has("optim")) {
    Section o(top.at("optim"), "optim.", source);
    o.get("lr", c.adamw.lr);
    o.get("weight_decay", c.adamw.weight_decay);
    std::vector<double> betas;
    o.get("betas", betas);
    if (!betas.empty()) {
      if (betas.size() != 2) input_error(source, ": optim.betas must be [beta1, beta2]");
      c.adamw.beta1 = betas[0], c.adamw.beta2 = betas[1];
    }
    o.get("eps", c.adamw.eps);
    o.get("clip_grad", c.clip_grad);
    o.get("warmup_epochs", c.warmup_epochs);
    o.get("warmup_ratio", c.warmup_ratio);
    o.get("min_lr_ratio", c.min_lr_ratio);
    o.get("label_smoothing", c.label_smoothing);
    o.get("drop_path", c.drop_path);
    o.get("ema_decay", c.ema_decay);
    o.finish();
  }
  top.get("epochs", c.epochs);
  top.get("batch_size", c.batch_size);
  top.get("seed", c.seed);
  top.get("recompute", c.recompute);
  top.get("eval_every", c.eval_every);
  top.get("checkpoint_every", c.checkpoint_every);
  top.get("log_every", c.log_every);
  top.get("zero", c.zero);
  top.finish();
  if (!top.has("model"))
    input_error(source, ": no \"model\" section (give {\"preset\": NAME} with vrwkv_t/s/b/l or vrwkv6_t/s/b, ",
                "{\"init\": CHECKPOINT} to fine-tune, or the architecture: embed_dims, depth, patch_size, ...)");
  check_config(c, source);
  return c;
}

std::string train_config_to_json(const TrainConfig& c) {
  const Architecture& a = c.model;
  json model = {{"block", to_string(a.block)},
                {"embed_dims", a.embed_dims},
                {"depth", a.depth},
                {"patch_size", a.patch_size},
                {"in_channels", a.in_channels},
                {"hidden_rate", a.hidden_dims / std::max<std::int64_t>(a.embed_dims, 1)},
                {"image_size", {a.pos_grid_h * a.patch_size, a.pos_grid_w * a.patch_size}},
                {"shift_pixel", a.shift_pixel},
                {"key_norm", a.key_norm},
                {"post_norm", a.post_norm},
                {"final_norm", a.final_norm},
                {"init_values", a.layer_scale ? json(c.init_values) : json(nullptr)}};
  if (c.init.empty() || c.init_variant) {  // a fine-tuned model otherwise keeps its checkpoint's variant
    model["shift"] = to_string(a.shift);
    model["wkv_direction"] = to_string(a.wkv_direction), model["wkv_decay"] = to_string(a.wkv_decay);
  }
  if (a.block == BlockKind::Vrwkv6) model["head_size"] = a.head_size;
  else model["channel_gamma"] = a.channel_gamma;  // VRWKV6's shift has none
  if (!c.init.empty()) model["init"] = c.init;
  if (!c.preset.empty()) model["preset"] = c.preset;
  const Transform& t = c.transform;
  json j = {
      {"model", model},
      {"data",
       {{"train", c.train_data},
        {"val", c.val_data},
        {"train_limit", c.train_limit},
        {"val_limit", c.val_limit},
        {"mean", t.mean},
        {"std", t.std}}},
      {"augment",
       {{"random_resized_crop", t.random_resized_crop},
        {"crop_scale", {t.crop_scale_min, t.crop_scale_max}},
        {"random_crop_padding", t.random_crop_padding},
        {"hflip", t.hflip},
        {"rand_augment_ops", t.rand_augment_ops},
        {"rand_augment_magnitude", t.rand_augment_magnitude},
        {"random_erasing", t.random_erasing},
        {"mixup_alpha", c.mixing.mixup_alpha},
        {"cutmix_alpha", c.mixing.cutmix_alpha},
        {"mix_prob", c.mixing.prob},
        {"switch_prob", c.mixing.switch_prob}}},
      {"optim",
       {{"lr", c.adamw.lr},
        {"weight_decay", c.adamw.weight_decay},
        {"betas", {c.adamw.beta1, c.adamw.beta2}},
        {"eps", c.adamw.eps},
        {"clip_grad", c.clip_grad},
        {"warmup_epochs", c.warmup_epochs},
        {"warmup_ratio", c.warmup_ratio},
        {"min_lr_ratio", c.min_lr_ratio},
        {"label_smoothing", c.label_smoothing},
        {"drop_path", c.drop_path},
        {"ema_decay", c.ema_decay}}},
      {"epochs", c.epochs},
      {"batch_size", c.batch_size},
      {"seed", c.seed},
      {"recompute", c.recompute},
      {"eval_every", c.eval_every},
      {"checkpoint_every", c.checkpoint_every},
      {"log_every", c.log_every},
      {"zero", c.zero},
  };
  return j.dump(2);
}

// ---------------------------------------------------------------------------
// Model, evaluation

Model initial_model(const TrainConfig& tc, const Dataset& data) {
  check_config(tc, "training configuration");  // values set in code or by flags after the file was read
  const std::int64_t K = static_cast<std::int64_t>(data.class_names().size());
  const std::string source = tc.init.empty() ? "training configuration" : tc.init;
  Config config;
  Architecture& c = config.arch;
  TensorMap params;
  if (!tc.init.empty()) {
    // Fine-tuning: a VRWKV block trains in the paper semantics (VRWKV6 has only Bi-WKV6); a new head when the
    // class count differs.
    ConfigOverrides o;
    o.wkv = WkvSemantics::Paper;
    if (tc.init_variant) {
      o.shift = tc.model.shift, o.shift_pixel = tc.model.shift_pixel;
      o.wkv_direction = tc.model.wkv_direction, o.wkv_decay = tc.model.wkv_decay;
    }
    Model start = Model::load(tc.init);
    if (start.architecture().block == BlockKind::Vrwkv) start = Model::load(tc.init, o);
    config = start.config();
    for (const auto& [name, t] : start.parameters()) params.emplace(name, t.clone());
    if (c.head != HeadKind::Linear || c.num_classes != K) {
      for (const auto& row : model::head_rows()) params.erase(row.info.name);
      c.head = HeadKind::Linear, c.num_classes = K, c.head_hidden = 0;
      // The new head's rows: TruncNormal(0.02) like every mmcls Linear, biases 0.
      Rng rng(mix_seed({0x4845414455ull, tc.seed}));
      for (const model::Param& p : model::parameter_list(c)) {
        if (params.count(p.name)) continue;
        Tensor t(DType::F32, p.shape);
        if (p.info->init == model::Init::TruncNormal)
          for (std::int64_t i = 0; i < t.numel(); ++i) {
            double v;
            do v = rng.normal(); while (std::abs(v) > 2.0 / 0.02);
            t.f32()[i] = static_cast<float>(0.02 * v);
          }
        params[p.name] = t;
      }
    }
  } else {
    if (tc.preset.empty()) c = tc.model;
    else config = preset_config(tc.preset);
    if (!tc.preset.empty()) {  // a preset takes the input geometry of the configuration
      c.in_channels = tc.model.in_channels;
      c.pos_grid_h = tc.model.pos_grid_h, c.pos_grid_w = tc.model.pos_grid_w;
      c.shift = tc.model.shift, c.shift_pixel = tc.model.shift_pixel;  // and the ablation's variant
      c.wkv_direction = tc.model.wkv_direction, c.wkv_decay = tc.model.wkv_decay;
    }
    c.head = HeadKind::Linear, c.num_classes = K, c.head_hidden = 0;
    config.run.out_indices = {c.depth - 1};
    params = initial_parameters(c, tc.seed, tc.init_values);
  }
  config.run.wkv = WkvSemantics::Paper;
  config.preprocessing = {Preprocess::Resize, tc.transform.mean, tc.transform.std};
  config.labels = data.class_names();
  return Model::from_state_dict(params, config, source);
}

namespace {

// Image8 (grey or RGB) as the decoder's RGB Image, for the model's preprocessing.
Image to_image(const Image8& in) {
  Image out;
  out.width = in.width, out.height = in.height;
  out.rgb.resize(static_cast<std::size_t>(in.width) * in.height * 3);
  for (std::size_t i = 0; i < out.rgb.size() / 3; ++i)
    for (int ch = 0; ch < 3; ++ch) out.rgb[i * 3 + ch] = in.pixels[i * in.channels + (in.channels == 1 ? 0 : ch)];
  return out;
}

}  // namespace

namespace {

// Images [start, start + count) as input rows, decoded by the OpenMP workers;
// errors[b] holds image b's exception (an exception may not leave an OpenMP
// region), its row left as it was.
Tensor decode_batch(const Model& model, const Dataset& data, std::int64_t start, std::int64_t count,
                    std::vector<std::exception_ptr>& errors) {
  const InputFormat format = input_format(model.config());
  const auto [H, W] = preprocess_size(format);
  const std::int64_t channels = model.architecture().in_channels, plane = channels * H * W;
  Tensor input(DType::F32, {count, channels, H, W});
  errors.assign(count, nullptr);
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t b = 0; b < count; ++b) {
    try {
      const Tensor one = preprocess_image(to_image(data.image(start + b)), format);
      std::copy(one.f32(), one.f32() + plane, input.f32() + b * plane);
    } catch (...) {
      errors[b] = std::current_exception();
    }
  }
  return input;
}

}  // namespace

Tensor load_inputs(const Model& model, const Dataset& data, std::int64_t start, std::int64_t count,
                   const Context& ctx) {
  if (start < 0 || count < 0 || start + count > data.size())
    input_error(data.name(), ": images ", start, "..", start + count, " asked of ", data.size());
  const ThreadScope threads(ctx);
  std::vector<std::exception_ptr> errors;
  Tensor input = decode_batch(model, data, start, count, errors);
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
  return input;
}

EvalResult evaluate(const Model& model, const Dataset& data, std::int64_t batch_size, std::int64_t limit,
                    const std::function<void(std::int64_t, std::int64_t)>& progress, const ForwardOptions& options,
                    const Context& ctx, const std::function<void(std::int64_t, const std::string&)>& on_image_error) {
  const Architecture& c = model.architecture();
  if (c.head == HeadKind::None) input_error("the model has no classification head to evaluate");
  const ThreadScope threads(ctx);
  const InputFormat format = input_format(model.config());
  const std::int64_t n = limit > 0 ? std::min(limit, data.size()) : data.size(), K = c.num_classes;
  const auto [H, W] = preprocess_size(format);
  const std::int64_t plane = c.in_channels * H * W;
  EvalResult r;
  double loss = 0;
  std::int64_t top1 = 0, top5 = 0, skipped = 0;
  for (std::int64_t start = 0; start < n; start += batch_size) {
    const std::int64_t B = std::min(batch_size, n - start);
    std::vector<std::exception_ptr> errors;
    Tensor input = decode_batch(model, data, start, B, errors);
    // An image that cannot be read: an error, or (on_image_error) reported and left out of the counts.
    std::vector<char> bad(B, 0);
    for (std::int64_t b = 0; b < B; ++b) {
      if (!errors[b]) continue;
      if (!on_image_error) std::rethrow_exception(errors[b]);
      try {
        std::rethrow_exception(errors[b]);
      } catch (const Error& e) {
        if (e.kind() != Error::Kind::Input) throw;
        on_image_error(start + b, e.what());
      }
      bad[b] = 1, ++skipped;
      std::fill(input.f32() + b * plane, input.f32() + (b + 1) * plane, 0.0f);
    }
    const Outputs out = model.forward(input, options, ctx);
    for (std::int64_t b = 0; b < B; ++b) {
      if (bad[b]) continue;
      const std::int64_t label = data.label(start + b);
      if (label < 0 || label >= K)
        input_error(data.name(), ": label ", label, " of image ", start + b, " is outside the model's ", K,
                    " classes");
      const float* z = out.logits.f32() + b * K;
      const double zmax = *std::max_element(z, z + K);
      double se = 0;
      std::int64_t rank = 0;
      for (std::int64_t k = 0; k < K; ++k) {
        se += std::exp(z[k] - zmax);
        rank += z[k] > z[label] || (z[k] == z[label] && k < label);
      }
      loss += zmax + std::log(se) - z[label];
      top1 += rank == 0, top5 += rank < 5;
    }
    if (progress) progress(start + B, n);
  }
  const std::int64_t m = n - skipped;
  r.images = m, r.skipped = skipped;
  r.top1_hits = top1, r.top5_hits = top5, r.loss_sum = loss;
  r.top1 = m ? 100.0 * top1 / m : 0, r.top5 = m ? 100.0 * top5 / m : 0, r.loss = m ? loss / m : 0;
  return r;
}

// ---------------------------------------------------------------------------
// The loop

namespace {

// An exclusive lock on FOLDER/.lock (flock), held while the object lives;
// taken by another process, it fails at once.
class FolderLock {
 public:
  explicit FolderLock(const std::string& dir) : path_(dir + "/.lock") {
    fd_ = open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd_ < 0) input_error(dir, ": cannot create the lock file .lock (", std::strerror(errno), ")");
    if (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int e = errno;
      close(fd_);
      if (e == EWOULDBLOCK) input_error(dir, ": another vrwkv train is running in this folder");
      input_error(dir, ": cannot lock the folder (", std::strerror(e), ")");
    }
  }
  ~FolderLock() { close(fd_); }
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};

std::string format_duration(double seconds) {
  const long s = static_cast<long>(std::max(0.0, seconds) + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, s / 60 % 60);
  else std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  return buf;
}

struct State {
  std::int64_t step = 0;
  Tensor ema;  // F32 [P] when EMA is on
};

Metadata model_metadata(const Config& c) { return {{"vrwkv.config", config_to_json(c)}}; }

// CRC-32 (zlib) over every tensor in name order: its name, then its bytes.
constexpr const char* kChecksumKey = "vrwkv.checksum";
std::string checksum_text(uLong crc) {
  char text[16];
  std::snprintf(text, sizeof text, "crc32:%08lx", static_cast<unsigned long>(crc));
  return text;
}
std::string tensor_checksum(const TensorMap& tensors) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (const auto& [name, t] : tensors) {
    crc = crc32_z(crc, reinterpret_cast<const Bytef*>(name.data()), name.size());
    crc = crc32_z(crc, reinterpret_cast<const Bytef*>(t.raw()), t.nbytes());
  }
  return checksum_text(crc);
}

// A checkpoint's metadata: the model's configuration, the training configuration, the state and the checksum.
Metadata checkpoint_metadata(const Model& model, const State& st, const TrainConfig& tc, int threads, int ranks,
                             const std::string& checksum) {
  Metadata meta = model_metadata(model.config());
  meta["vrwkv.train"] = train_config_to_json(tc);
  meta["vrwkv.state"] = json{{"step", st.step}, {"threads", threads}, {"ranks", ranks}}.dump();
  meta[kChecksumKey] = checksum;
  return meta;
}

// m and v: the whole AdamW moments (gathered from the ranks under ZeRO-1), so that a checkpoint does not
// depend on how many ranks wrote it.
void save_checkpoint(const std::string& path, const Model& model, const Tensor& m, const Tensor& v, const State& st,
                     const TrainConfig& tc, int threads, int ranks) {
  TensorMap t = model.parameters();
  t["optimizer.exp_avg"] = m;
  t["optimizer.exp_avg_sq"] = v;
  if (st.ema.numel()) t["ema"] = st.ema;
  write_safetensors(path, t, checkpoint_metadata(model, st, tc, threads, ranks, tensor_checksum(t)));
}

// save_checkpoint's file when the AdamW moments are sharded over the ranks (ZeRO-1): rank 0 writes the same
// bytes, but receives the moments one rank's slice at a time, so that it never holds them whole. The checksum
// comes first in the file: each rank's CRC-32 of its slices, combined in order (crc32_combine), gives it
// without the data. Every rank calls this; rank 0 alone writes.
void save_sharded_checkpoint(const std::string& path, const Model& model, AdamW& opt, const State& st,
                             const TrainConfig& tc, int threads, Communicator& comm,
                             const std::vector<std::int64_t>& slices) {
  const int ranks = comm.size();
  const bool lead = comm.rank() == 0;
  const std::int64_t P = slices.back();
  const char* moments[2] = {"optimizer.exp_avg", "optimizer.exp_avg_sq"};
  const float* mine[2] = {opt.m().f32(), opt.v().f32()};
  const std::int64_t own = opt.end() - opt.begin();
  const double crcs[2] = {static_cast<double>(crc32_z(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(mine[0]),
                                                      own * sizeof(float))),
                          static_cast<double>(crc32_z(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(mine[1]),
                                                      own * sizeof(float)))};
  std::vector<double> all(2 * static_cast<std::size_t>(ranks));
  comm.allgather(crcs, 2, all.data());

  std::exception_ptr failure;
  std::optional<SafetensorsWriter> writer;
  TensorMap local = model.parameters();  // the tensors rank 0 has whole
  if (st.ema.numel()) local["ema"] = st.ema;
  if (lead) try {
      // The names in file order (as a TensorMap orders them), the checksum over them as tensor_checksum takes it.
      std::map<std::string, Shape> shapes;
      for (const auto& [name, t] : local) shapes[name] = t.shape();
      for (const char* m : moments) shapes[m] = {P};
      uLong crc = crc32(0L, Z_NULL, 0);
      std::vector<SafetensorsWriter::Entry> entries;
      for (const auto& [name, shape] : shapes) {
        entries.push_back({name, DType::F32, shape});
        crc = crc32_z(crc, reinterpret_cast<const Bytef*>(name.data()), name.size());
        const int moment = name == moments[0] ? 0 : name == moments[1] ? 1 : -1;
        if (moment < 0) {
          const Tensor& t = local.at(name);
          crc = crc32_z(crc, reinterpret_cast<const Bytef*>(t.raw()), t.nbytes());
        } else {
          for (int r = 0; r < ranks; ++r)
            crc = crc32_combine(crc, static_cast<uLong>(all[2 * r + moment]),
                                static_cast<z_off_t>((slices[r + 1] - slices[r]) * sizeof(float)));
        }
      }
      writer.emplace(path, entries, checkpoint_metadata(model, st, tc, threads, ranks, checksum_text(crc)));
      for (const auto& [name, t] : local) writer->write_rows(name, 0, t);
    } catch (...) {
      failure = std::current_exception();
    }
  // The slices, one at a time (rank 0 goes on receiving after a failure, so that no sender waits for ever).
  std::int64_t largest = 0;
  for (int r = 0; r < ranks; ++r) largest = std::max(largest, slices[r + 1] - slices[r]);
  Tensor buffer(DType::F32, {lead ? largest : 0});
  for (int k = 0; k < 2; ++k)
    for (int r = 0; r < ranks; ++r) {
      const std::int64_t n = slices[r + 1] - slices[r];
      comm.send_to_lead(r, mine[k], buffer.f32(), n);
      if (lead && !failure) try {
          writer->write_rows(moments[k], slices[r], buffer.view(0, {n}));
        } catch (...) {
          failure = std::current_exception();
        }
    }
  if (lead && !failure) try {
      writer->commit();
    } catch (...) {
      failure = std::current_exception();
    }
  writer.reset();
  comm.agree(failure);
}

// A checkpoint's tensors against the checksum save_checkpoint recorded. A
// checkpoint written before checksums existed is accepted with a note.
void verify_checkpoint(const TensorMap& tensors, const Metadata& meta, const std::string& path) {
  const auto it = meta.find(kChecksumKey);
  if (it == meta.end()) {
    std::fprintf(stderr, "vrwkv: note: %s has no %s (written by an older vrwkv); its tensors are not verified\n",
                 path.c_str(), kChecksumKey);
    return;
  }
  const std::string found = tensor_checksum(tensors);
  if (it->second != found)
    input_error(path, ": checksum mismatch (", kChecksumKey, " says ", it->second, ", the tensors give ", found,
                "): the checkpoint is damaged");
}

// Appends one record to metrics.jsonl and checks that it reached the file (a
// full disk fails here, not at the next checkpoint).
// Then hands it to the run's on_metrics.
void append_metrics(std::ofstream& metrics, const json& record, const std::string& path, const TrainRun& run) {
  const std::string line = record.dump();
  metrics << line << "\n" << std::flush;
  if (!metrics) runtime_error(path, ": cannot append to the metrics file (", std::strerror(errno), ")");
  if (run.on_metrics) run.on_metrics(line);
}

// Keeps the metrics records up to `step` (a resumed run rewrites what came after).
void truncate_metrics(const std::string& path, std::int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept, line;
  while (std::getline(in, line)) {
    try {
      if (json::parse(line).at("step").get<std::int64_t>() <= step) kept += line + "\n";
    } catch (const json::exception&) {
      break;  // a line cut by the kill: drop it and everything after
    }
  }
  AtomicFile f(path);
  f.write(kept.data(), kept.size());
  f.commit();
}

}  // namespace

namespace {

// Images [first, first + count) of a dataset (a training limit, a rank's share of the validation set).
class View final : public Dataset {
 public:
  View(const Dataset& base, std::int64_t first, std::int64_t count) : base_(base), first_(first), n_(count) {
    class_names_ = base.class_names(), name_ = base.name();
  }
  std::int64_t size() const override { return n_; }
  std::int64_t label(std::int64_t i) const override { return base_.label(first_ + i); }
  Image8 image(std::int64_t i) const override { return base_.image(first_ + i); }

 private:
  const Dataset& base_;
  std::int64_t first_, n_;
};

// The evaluation of a data-parallel run: each rank takes an equal share of the images, the counts are summed
// in rank order.
EvalResult evaluate_sharded(const Model& model, const Dataset& data, std::int64_t limit, Communicator& comm,
                            const Context& ctx) {
  const std::int64_t n = limit > 0 ? std::min(limit, data.size()) : data.size();
  const std::vector<std::int64_t> share = even_slices(n, comm.size());
  const std::int64_t first = share[comm.rank()], count = share[comm.rank() + 1] - first;
  EvalResult mine;
  std::exception_ptr failure;
  try {
    if (count > 0) mine = evaluate(model, View(data, first, count), 256, 0, {}, {}, ctx);
  } catch (...) {
    failure = std::current_exception();
  }
  comm.agree(failure);
  const double sums[5] = {static_cast<double>(mine.top1_hits), static_cast<double>(mine.top5_hits), mine.loss_sum,
                          static_cast<double>(mine.images), static_cast<double>(mine.skipped)};
  std::vector<double> all(5 * static_cast<std::size_t>(comm.size()));
  comm.allgather(sums, 5, all.data());
  double top1 = 0, top5 = 0, loss = 0, images = 0, skipped = 0;
  for (int r = 0; r < comm.size(); ++r) {
    const double* a = &all[5 * static_cast<std::size_t>(r)];
    top1 += a[0], top5 += a[1], loss += a[2], images += a[3], skipped += a[4];
  }
  EvalResult r;
  r.top1_hits = static_cast<std::int64_t>(top1), r.top5_hits = static_cast<std::int64_t>(top5), r.loss_sum = loss;
  r.images = static_cast<std::int64_t>(images), r.skipped = static_cast<std::int64_t>(skipped);
  if (r.images) r.top1 = 100.0 * top1 / images, r.top5 = 100.0 * top5 / images, r.loss = loss / images;
  return r;
}

}  // namespace

EvalResult train(const TrainConfig& given, const TrainRun& run) {
  namespace fs = std::filesystem;
  const std::string ckpt_path = run.out_dir + "/checkpoint.safetensors";
  const std::string metrics_path = run.out_dir + "/metrics.jsonl";
  const ThreadScope scope(run.ctx);
  LocalCommunicator alone;
  Communicator& comm = run.comm ? *run.comm : alone;
  const int ranks = comm.size(), rank = comm.rank();
  const bool lead = rank == 0;  // writes every file and every line
  // fn on rank 0 alone; then every rank learns whether it failed (and ends with it if so).
  const auto on_lead = [&](auto&& fn) {
    std::exception_ptr failure;
    if (lead) try {
        fn();
      } catch (...) {
        failure = std::current_exception();
      }
    comm.agree(failure);
  };
  // fn on every rank; then every rank learns whether any failed.
  const auto on_all = [&](auto&& fn) {
    std::exception_ptr failure;
    try {
      fn();
    } catch (...) {
      failure = std::current_exception();
    }
    comm.agree(failure);
  };

  // The folder (rank 0's): created, locked for as long as this run lasts, and not holding another run.
  std::optional<FolderLock> lock;
  TrainConfig tc = given;
  TensorMap resumed;
  std::int64_t resumed_step = 0;
  const int threads = run.ctx.resolved_threads();
  std::string config_text;  // rank 0's configuration (the checkpoint's when resuming), for every rank
  // Each rank takes batch_size / ranks samples of every batch.
  const auto check_split = [&](const TrainConfig& c, const std::string& source) {
    if (c.batch_size % ranks != 0)
      input_error(source, ": batch_size ", c.batch_size, " (the global batch) does not divide over ", ranks,
                  " ranks; give a multiple of ", ranks, " or another number of ranks");
  };
  on_lead([&] {
    if (!run.resume) check_split(tc, "the training configuration");
    std::error_code ec;
    fs::create_directories(run.out_dir, ec);
    if (ec || !fs::is_directory(run.out_dir))
      input_error(run.out_dir, ": cannot create the output directory (", ec.message(), ")");
    lock.emplace(run.out_dir);
    // A fresh run does not replace an earlier one unless asked to.
    if (!run.resume && !run.force)
      for (const char* f : {"checkpoint.safetensors", "metrics.jsonl", "model.safetensors"})
        if (fs::exists(run.out_dir + "/" + f))
          input_error(run.out_dir, ": holds a training run (", f,
                      "); give --resume to continue it or --force to start again and replace it");
    // Temporary files of a run killed while writing (AtomicFile names them .NAME.tmp.PID.XXXXXX); the lock
    // says no other run is writing them.
    for (const auto& entry : fs::directory_iterator(run.out_dir, ec)) {
      const std::string name = entry.path().filename().string();
      for (const char* f : {".checkpoint.safetensors.tmp.", ".model.safetensors.tmp.", ".metrics.jsonl.tmp."})
        if (name.starts_with(f)) fs::remove(entry.path(), ec);
    }
    if (run.resume) {
      Metadata meta;
      resumed = read_safetensors(ckpt_path, &meta);
      if (!meta.count("vrwkv.train") || !meta.count("vrwkv.state"))
        input_error(ckpt_path, ": not a training checkpoint (no vrwkv.train / vrwkv.state metadata)");
      verify_checkpoint(resumed, meta, ckpt_path);
      tc = train_config_from_json(meta.at("vrwkv.train"), ckpt_path + " (vrwkv.train)");
      check_split(tc, ckpt_path);
      try {
        const json st = json::parse(meta.at("vrwkv.state"));
        resumed_step = st.at("step").get<std::int64_t>();
        const int saved_threads = st.at("threads").get<int>();
        const int saved_ranks = st.value("ranks", 1);
        if (saved_ranks != ranks)
          std::fprintf(stderr,
                       "vrwkv: note: the checkpoint was written by %d rank%s, this run has %d: the batch is split "
                       "differently, so results will differ in the last bits from an uninterrupted run\n",
                       saved_ranks, saved_ranks == 1 ? "" : "s", ranks);
        else if (saved_threads != threads)
          std::fprintf(stderr,
                       "vrwkv: note: the checkpoint was written with %d threads%s, this run uses %d: results will "
                       "differ in the last bits from an uninterrupted run\n",
                       saved_threads, ranks > 1 ? " per rank" : "", threads);
      } catch (const json::exception& e) {
        input_error(ckpt_path, ": damaged vrwkv.state metadata (", e.what(), ")");
      }
    }
    config_text = train_config_to_json(tc);
  });
  if (ranks > 1) {  // every rank (rank 0 too) trains rank 0's configuration as its text gives it, from its step
    std::int64_t header[2] = {static_cast<std::int64_t>(config_text.size()), resumed_step};
    comm.broadcast(header, sizeof header);
    config_text.resize(static_cast<std::size_t>(header[0]));
    comm.broadcast(config_text.data(), header[0]);
    resumed_step = header[1];
    on_all([&] { tc = train_config_from_json(config_text, "the training configuration of rank 0"); });
  }

  // Data, model, optimizer. Every rank builds the same initial model from the seed.
  std::unique_ptr<Dataset> train_set, val_set;
  std::optional<Model> built;
  std::optional<View> train_view;
  std::vector<std::int64_t> slices;  // ZeRO-1: rank r's AdamW slice of the parameters
  std::optional<AdamW> optimizer;
  std::optional<Loader> loader_storage;
  on_all([&] {
    train_set = open_dataset(tc.train_data);
    if (!tc.val_data.empty()) val_set = open_dataset(tc.val_data);
    built.emplace(initial_model(tc, *train_set));
    train_view.emplace(*train_set, 0, tc.train_limit > 0 ? std::min(tc.train_limit, train_set->size()) : train_set->size());
    Transform transform = tc.transform;
    const auto [H, W] = preprocess_size(input_format(built->config()));
    transform.height = H, transform.width = W, transform.channels = static_cast<int>(built->architecture().in_channels);
    loader_storage.emplace(*train_view, transform, tc.mixing, tc.batch_size, tc.seed, true, true, threads);
    if (loader_storage->batches_per_epoch() < 1)
      input_error(tc.train_data, ": ", train_view->size(), " images are fewer than one batch of ", tc.batch_size);
    const std::int64_t P = built->parameter_count();
    slices = tc.zero ? even_slices(P, ranks) : std::vector<std::int64_t>{0, P};
    const int part = tc.zero ? rank : 0;
    optimizer.emplace(built->architecture(), tc.adamw, slices[part], slices[part + 1]);
  });
  Model& model = *built;
  const Dataset& train_data = *train_view;
  const Loader& loader = *loader_storage;
  AdamW& opt = *optimizer;
  const Architecture& mc = model.architecture();
  const std::int64_t P = model.parameter_count();
  const std::int64_t per_epoch = loader.batches_per_epoch();
  const std::int64_t total = per_epoch * tc.epochs;
  const std::int64_t shard = tc.batch_size / ranks;  // this rank's samples of every batch

  Schedule schedule;
  schedule.base_lr = tc.adamw.lr, schedule.min_lr_ratio = tc.min_lr_ratio, schedule.warmup_ratio = tc.warmup_ratio;
  schedule.warmup_iters = static_cast<std::int64_t>(std::llround(tc.warmup_epochs * per_epoch));
  schedule.total_iters = total;
  State st;
  Tensor params = model.parameter_storage();
  if (tc.ema_decay > 0) st.ema = params.clone();
  std::ofstream metrics;
  on_lead([&] {
    if (run.resume) {
      const auto find = [&](const std::string& key, std::int64_t n) -> const Tensor& {
        const auto it = resumed.find(key);
        if (it == resumed.end() || it->second.dtype() != DType::F32 || it->second.numel() != n)
          input_error(ckpt_path, ": missing or mis-shaped '", key, "'");
        return it->second;
      };
      const auto take = [&](const std::string& key, float* into, std::int64_t n) {
        const Tensor& t = find(key, n);
        std::copy(t.f32(), t.f32() + n, into);
      };
      for (const auto& [name, t] : model.parameters()) take(name, Tensor(t).f32(), t.numel());
      for (const char* key : {"optimizer.exp_avg", "optimizer.exp_avg_sq"}) find(key, P);  // spread below
      if (st.ema.numel()) take("ema", st.ema.f32(), P);
      truncate_metrics(metrics_path, resumed_step);
    } else {
      AtomicFile f(metrics_path);  // a fresh run starts a fresh metrics file
      f.commit();
    }
    metrics.open(metrics_path, std::ios::app);
    if (!metrics) input_error(metrics_path, ": cannot write the metrics file");
  });
  if (run.resume) {
    // Rank 0's weights and EMA to every rank; each rank's slice of the moments.
    if (ranks > 1) {
      comm.broadcast(params.f32(), P * static_cast<std::int64_t>(sizeof(float)));
      if (st.ema.numel()) comm.broadcast(st.ema.f32(), P * static_cast<std::int64_t>(sizeof(float)));
    }
    const float* m_full = lead ? resumed.at("optimizer.exp_avg").f32() : nullptr;
    const float* v_full = lead ? resumed.at("optimizer.exp_avg_sq").f32() : nullptr;
    if (tc.zero) {
      comm.scatterv(m_full, opt.m().f32(), slices);
      comm.scatterv(v_full, opt.v().f32(), slices);
    } else {
      if (lead) std::copy(m_full, m_full + P, opt.m().f32()), std::copy(v_full, v_full + P, opt.v().f32());
      comm.broadcast(opt.m().f32(), P * static_cast<std::int64_t>(sizeof(float)));
      comm.broadcast(opt.v().f32(), P * static_cast<std::int64_t>(sizeof(float)));
    }
    resumed.clear();
    opt.set_steps(resumed_step);
    st.step = resumed_step;
  }

  std::vector<double> drop_path(mc.depth);
  for (std::int64_t i = 0; i < mc.depth; ++i)
    drop_path[i] = mc.depth > 1 ? tc.drop_path * static_cast<double>(i) / (mc.depth - 1) : 0.0;

  Gradients grads(model);
  Backprop backprop(model);
  const bool tty = lead && run.progress_bar && isatty(STDERR_FILENO);
  if (lead) {
    const std::string where =
        ranks > 1 ? cat(" on ", ranks, " ranks (", shard, " images each per step", tc.zero ? ", ZeRO-1" : "", ")") : "";
    std::fprintf(stderr, "vrwkv train: %s, %lld parameters, %lld images, %lld steps (%lld epochs of %lld)%s%s\n",
                 tc.train_data.c_str(), static_cast<long long>(P), static_cast<long long>(train_data.size()),
                 static_cast<long long>(total), static_cast<long long>(tc.epochs), static_cast<long long>(per_epoch),
                 where.c_str(), run.resume ? (" resuming at step " + std::to_string(st.step)).c_str() : "");
  }

  const auto eval_model = [&]() -> EvalResult {
    if (!st.ema.numel()) {
      model.parameters_updated();  // the optimizer wrote the weights in place
      return evaluate_sharded(model, *val_set, tc.val_limit, comm, run.ctx);
    }
    Model ema_model = Model::from_state_dict(model.parameters(), model.config());
    Tensor s = ema_model.parameter_storage();
    std::copy(st.ema.f32(), st.ema.f32() + P, s.f32());
    return evaluate_sharded(ema_model, *val_set, tc.val_limit, comm, run.ctx);
  };
  // Every checkpoint holds the whole moments: this rank's own, or (ZeRO-1) collected slice by slice on rank 0.
  const auto write_checkpoint = [&] {
    if (tc.zero && ranks > 1) save_sharded_checkpoint(ckpt_path, model, opt, st, tc, threads, comm, slices);
    else on_lead([&] { save_checkpoint(ckpt_path, model, opt.m(), opt.v(), st, tc, threads, ranks); });
  };

  using clock = std::chrono::steady_clock;
  auto t_start = clock::now(), t_window = t_start;
  std::int64_t window_images = 0, start_step = st.step;
  double window_loss = 0, wait_seconds = 0, comm_seconds = 0;  // per window: waiting for the slowest rank, communicating
  std::int64_t window_steps = 0;
  EvalResult last_eval;
  const float inv_ranks = 1.0f / static_cast<float>(ranks);
  while (st.step < total) {
    const std::int64_t epoch = st.step / per_epoch, index = st.step % per_epoch;
    LossResult r;
    std::exception_ptr failure;
    try {  // this rank's shard: samples rank·shard .. of the global batch
      const Batch batch = loader.batch(epoch, index, rank * shard, shard);
      grads.zero();
      BackwardOptions bo;
      bo.label_smoothing = tc.label_smoothing;
      bo.drop_path = drop_path;
      bo.seed = mix_seed({0x44524f50ull, tc.seed, static_cast<std::uint64_t>(st.step)});
      bo.sample_offset = rank * shard;
      bo.recompute = tc.recompute;
      r = backprop.run(batch.input, batch.targets, grads, bo, run.ctx);
    } catch (...) {
      failure = std::current_exception();
    }
    // Where the ranks meet: the time here is the wait for the slowest rank.
    const auto t_done = clock::now();
    comm.agree(failure);
    // The gradient of the global batch's mean loss: the ranks' shard means, averaged; the loss likewise.
    double loss = r.loss;
    const auto t_comm = clock::now();
    wait_seconds += std::chrono::duration<double>(t_comm - t_done).count();
    if (ranks > 1) {
      comm.allreduce_sum(grads.storage.f32(), P);
      float* g = grads.storage.f32();
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < P; ++i) g[i] *= inv_ranks;
      std::vector<double> all(static_cast<std::size_t>(ranks));
      comm.allgather(&r.loss, 1, all.data());
      loss = 0;
      for (const double l : all) loss += l;
      loss /= ranks;
    }
    comm_seconds += std::chrono::duration<double>(clock::now() - t_comm).count();
    on_lead([&] {
      if (!std::isfinite(loss)) runtime_error("training diverged at step ", st.step, " (loss ", loss, "); lower optim.lr");
    });
    const double norm = clip_grad_norm(grads.storage.f32(), P, tc.clip_grad);
    const double lr = schedule.lr(st.step);
    opt.step(params.f32(), grads.storage.f32(), lr);
    if (tc.zero && ranks > 1) {  // each rank updated its slice: the whole weights to every rank
      const auto t_gather = clock::now();
      comm.allgatherv(params.f32(), slices);
      comm_seconds += std::chrono::duration<double>(clock::now() - t_gather).count();
    }
    if (st.ema.numel()) ema_update(st.ema.f32(), params.f32(), P, tc.ema_decay);
    ++st.step;
    window_images += tc.batch_size, window_loss += loss, ++window_steps;

    const bool epoch_end = st.step % per_epoch == 0;
    const bool stop = run.stop_after > 0 && st.step >= run.stop_after;
    const bool log = st.step % tc.log_every == 0 || epoch_end || st.step == total;
    on_lead([&] {
      const auto now = clock::now();
      const double dt = std::chrono::duration<double>(now - t_window).count();
      const double elapsed = std::chrono::duration<double>(now - t_start).count();
      const double ips = dt > 0 ? window_images / dt : 0;
      const double eta = elapsed / std::max<std::int64_t>(st.step - start_step, 1) * (total - st.step);
      char line[256];
      std::snprintf(line, sizeof line,
                    "epoch %lld/%lld step %lld/%lld loss %.4f lr %.3e grad_norm %.3f %.0f img/s eta %s",
                    static_cast<long long>(epoch + 1), static_cast<long long>(tc.epochs),
                    static_cast<long long>(st.step), static_cast<long long>(total), window_loss / window_steps, lr,
                    norm, ips, format_duration(eta).c_str());
      if (tty) {  // the bar, redrawn every step
        const int width = 24, filled = static_cast<int>(width * st.step / total);
        std::fprintf(stderr, "\r[%s%s] %s\033[K", std::string(filled, '#').c_str(),
                     std::string(width - filled, '.').c_str(), line);
      }
      if (log) {
        json record{{"step", st.step},
                    {"epoch", static_cast<double>(st.step) / per_epoch},
                    {"loss", window_loss / window_steps},
                    {"lr", lr},
                    {"grad_norm", norm},
                    {"images_per_second", ips}};
        if (ranks > 1) {
          record["wait_seconds_per_step"] = wait_seconds / window_steps;
          record["comm_seconds_per_step"] = comm_seconds / window_steps;
        }
        append_metrics(metrics, record, metrics_path, run);
        if (!tty) std::fprintf(stderr, "%s\n", line);
      }
    });
    if (log) t_window = clock::now(), window_images = 0, window_loss = 0, window_steps = 0, wait_seconds = comm_seconds = 0;
    if (epoch_end && val_set && tc.eval_every > 0 && ((st.step / per_epoch) % tc.eval_every == 0 || st.step == total)) {
      last_eval = eval_model();
      on_lead([&] {
        append_metrics(metrics,
                       json{{"step", st.step},
                            {"epoch", static_cast<double>(st.step) / per_epoch},
                            {"val_top1", last_eval.top1},
                            {"val_top5", last_eval.top5},
                            {"val_loss", last_eval.loss}},
                       metrics_path, run);
        std::fprintf(stderr, "%sepoch %lld: %s top-1 %.2f %% top-5 %.2f %% loss %.4f (%lld images)\n",
                     tty ? "\n" : "", static_cast<long long>(st.step / per_epoch), tc.val_data.c_str(),
                     last_eval.top1, last_eval.top5, last_eval.loss, static_cast<long long>(last_eval.images));
      });
      t_window = clock::now();  // the evaluation's time is not training throughput
    }
    // A signal (run.stop) ends the run after this step, with a checkpoint; a stop asked of any rank stops all
    // of them at the same step.
    int signalled = run.stop ? run.stop->load() : 0;
    if (ranks > 1) {
      const double mine = signalled;
      std::vector<double> all(static_cast<std::size_t>(ranks));
      comm.allgather(&mine, 1, all.data());
      for (const double a : all)
        if (a != 0 && !signalled) signalled = static_cast<int>(a);
    }
    if ((tc.checkpoint_every > 0 && st.step % tc.checkpoint_every == 0) || epoch_end || stop || signalled ||
        st.step == total) {
      if (ranks > 1) {
        // The ranks' weights must be the same bits (they are, when every rank gets the same sums): compared at
        // every checkpoint, so that a divergence cannot go unnoticed into one.
        const double mine = static_cast<double>(crc32_z(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(params.raw()), params.nbytes()));
        std::vector<double> all(static_cast<std::size_t>(ranks));
        comm.allgather(&mine, 1, all.data());
        on_lead([&] {
          for (int k = 1; k < ranks; ++k)
            if (all[k] != all[0])
              runtime_error("rank ", k, "'s weights differ from rank 0's after step ", st.step,
                            ": the ranks did not receive the same gradient sums");
        });
      }
      write_checkpoint();
    }
    if (signalled) {
      if (lead) {
        const std::string by = signalled > 0 ? "by signal " + std::to_string(signalled) : "on request";
        std::fprintf(stderr,
                     "%svrwkv train: stopped %s after step %lld; checkpoint written to %s (continue with --resume)\n",
                     tty ? "\n" : "", by.c_str(), static_cast<long long>(st.step), ckpt_path.c_str());
      }
      return last_eval;
    }
    if (stop) break;
  }
  if (tty) std::fprintf(stderr, "\n");
  if (st.step == total) {
    on_lead([&] {
      // The final weights alone (the EMA weights when EMA is on), with the configuration and class names.
      TensorMap weights = model.parameters();
      if (st.ema.numel()) {
        std::int64_t offset = 0;
        for (const auto& [name, shape] : parameter_shapes(mc)) {
          weights[name] = st.ema.view(offset, shape);
          offset += shape_numel(shape);
        }
      }
      write_safetensors(run.out_dir + "/model.safetensors", weights, model_metadata(model.config()));
      std::fprintf(stderr, "vrwkv train: done in %s; model written to %s/model.safetensors\n",
                   format_duration(std::chrono::duration<double>(clock::now() - t_start).count()).c_str(),
                   run.out_dir.c_str());
    });
  }
  return last_eval;
}

}  // namespace vrwkv::train
