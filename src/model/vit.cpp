#include "vrwkv/vit.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <random>
#include <vector>

#include "ops/fast_math.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "ops/packed_linear.hpp"
#include "ops/patch_embed.hpp"
#include "ops/pos_embed.hpp"
#include <dnnl.h>
#include "threads.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv {

namespace {
constexpr float kVitLnEps = 1e-6f;  // timm's ViT LayerNorm
constexpr std::int64_t kQueryBlock = 64;

std::vector<std::pair<std::string, Shape>> vit_shapes(const VitConfig& c) {
  const std::int64_t C = c.embed_dims, M = c.mlp_dims;
  std::vector<std::pair<std::string, Shape>> p = {
      {"cls_token", {C}}, {"pos_embed", {(c.pos_grid * c.pos_grid + 1) * C}},
      {"patch_embed.weight", {C, 3, c.patch_size, c.patch_size}}, {"patch_embed.bias", {C}}};
  for (std::int64_t i = 0; i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    for (const auto& [n, s] : std::vector<std::pair<std::string, Shape>>{
             {"norm1.weight", {C}}, {"norm1.bias", {C}}, {"qkv.weight", {3 * C, C}}, {"qkv.bias", {3 * C}},
             {"proj.weight", {C, C}}, {"proj.bias", {C}}, {"norm2.weight", {C}}, {"norm2.bias", {C}},
             {"fc1.weight", {M, C}}, {"fc1.bias", {M}}, {"fc2.weight", {C, M}}, {"fc2.bias", {C}}})
      p.push_back({b + n, s});
  }
  p.push_back({"norm.weight", {C}});
  p.push_back({"norm.bias", {C}});
  p.push_back({"head.weight", {c.num_classes, C}});
  p.push_back({"head.bias", {c.num_classes}});
  return p;
}
}  // namespace

// The linears of each block, packed once, with their biases.
struct Vit::Packed {
  struct Block {
    ops::PackedLinear qkv, proj, fc1, fc2;
  };
  std::mutex mutex;
  std::vector<std::unique_ptr<Block>> blocks;
};

Vit Vit::preset(const std::string& name, std::uint64_t seed) {
  VitConfig c;
  if (name == "vit_s") c.embed_dims = 384, c.heads = 6, c.mlp_dims = 1536;
  else if (name != "vit_t") input_error("unknown ViT preset '", name, "' (expected vit_t or vit_s)");
  Vit v;
  v.config_ = c;
  v.packed_ = std::make_shared<Packed>();
  const auto shapes = vit_shapes(c);
  std::int64_t total = 0;
  for (const auto& [n, s] : shapes) total += shape_numel(s);
  v.storage_ = Tensor(DType::F32, {total});
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::int64_t offset = 0;
  for (const auto& [n, s] : shapes) {
    Tensor t = v.storage_.view(offset, s);
    offset += t.numel();
    const bool ln_weight = n.ends_with("norm1.weight") || n.ends_with("norm2.weight") || n == "norm.weight";
    for (std::int64_t j = 0; j < t.numel(); ++j)
      t.f32()[j] = ln_weight ? 1.0f : (n.ends_with("bias") ? 0.0f : normal(rng));
    v.params_.emplace(n, t);
  }
  return v;
}

double Vit::flops(std::int64_t height, std::int64_t width) const {
  const VitConfig& c = config_;
  const double C = c.embed_dims, p = c.patch_size;
  const double T = double(((height + c.patch_size - 1) / c.patch_size) * ((width + c.patch_size - 1) / c.patch_size)) + 1;
  const double macs = (T - 1) * C * 3 * p * p + c.depth * (T * (4 * C * C + 2 * C * c.mlp_dims) + 2 * T * T * C) +
                      C * c.num_classes;
  return 2 * macs;
}

Tensor Vit::forward(const Tensor& input, const Context& ctx) const {
  const VitConfig& c = config_;
  const ThreadScope threads(ctx);
  if (input.dtype() != DType::F32 || input.ndim() != 4 || input.dim(1) != 3)
    input_error("input has shape ", shape_str(input.shape()), ", expected F32 [B,3,H,W]");
  const std::int64_t B = input.dim(0), H = input.dim(2), W = input.dim(3), C = c.embed_dims, M = c.mlp_dims;
  const ops::Grid grid = ops::patch_grid(H, W, c.patch_size);
  const std::int64_t T = grid.tokens() + 1, N = B * T, heads = c.heads, d = C / heads;
  const auto P = [&](const std::string& n) { return params_.at(n).f32(); };

  // Tokens: [cls, patches...] + position embedding (patch part resized bicubically).
  std::vector<float> x(N * C), h(N * C), qkv(N * 3 * C), att(N * C), mlp(N * M);
  {
    std::vector<float> patches(B * grid.tokens() * C), scratch(B * grid.tokens() * 3 * c.patch_size * c.patch_size);
    ops::patch_embed(input.f32(), P("patch_embed.weight"), P("patch_embed.bias"), patches.data(), B, 3, H, W, C,
                     c.patch_size, scratch.data());
    std::vector<float> pos(grid.tokens() * C);
    ops::resize_pos_embed(P("pos_embed") + C, {c.pos_grid, c.pos_grid}, pos.data(), grid, C);
    for (std::int64_t b = 0; b < B; ++b) {
      for (std::int64_t ch = 0; ch < C; ++ch) x[b * T * C + ch] = P("cls_token")[ch] + P("pos_embed")[ch];
      for (std::int64_t t = 1; t < T; ++t)
        for (std::int64_t ch = 0; ch < C; ++ch)
          x[(b * T + t) * C + ch] = patches[(b * grid.tokens() + t - 1) * C + ch] + pos[(t - 1) * C + ch];
    }
  }
  std::lock_guard<std::mutex> lock(packed_->mutex);
  auto& blocks = packed_->blocks;
  for (std::int64_t i = static_cast<std::int64_t>(blocks.size()); i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    const auto W = [&](const char* name) { return P(b + name + ".weight"); };
    const auto bias = [&](const char* name) { return P(b + name + ".bias"); };
    blocks.push_back(std::unique_ptr<Packed::Block>(new Packed::Block{
        {W("qkv"), 3 * C, C, DType::F32, nullptr, bias("qkv")},
        {W("proj"), C, C, DType::F32, nullptr, bias("proj")},
        {W("fc1"), M, C, DType::F32, nullptr, bias("fc1")},
        {W("fc2"), C, M, DType::F32, nullptr, bias("fc2")}}));
  }
  const auto f32 = [](std::vector<float>& v) { return ops::Activations{v.data(), DType::F32}; };
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const std::int64_t qblocks = (T + kQueryBlock - 1) / kQueryBlock;
  for (std::int64_t i = 0; i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    Packed::Block& linears = *blocks[i];
    ops::layernorm(x.data(), P(b + "norm1.weight"), P(b + "norm1.bias"), h.data(), N, C, kVitLnEps);
    linears.qkv(f32(h), f32(qkv), N);
    // Softmax attention, one (image, head, block of queries) per job.
#pragma omp parallel
    {
      std::vector<float> s(kQueryBlock * T);
#pragma omp for schedule(dynamic)
      for (std::int64_t job = 0; job < B * heads * qblocks; ++job) {
        const std::int64_t bi = job / (heads * qblocks), hd = (job / qblocks) % heads, q0 = (job % qblocks) * kQueryBlock;
        const std::int64_t rows = std::min(kQueryBlock, T - q0);
        const float* base = qkv.data() + bi * T * 3 * C + hd * d;
        dnnl_sgemm('N', 'T', rows, T, d, scale, base + q0 * 3 * C, 3 * C, base + C, 3 * C, 0.0f, s.data(), T);
        for (std::int64_t r = 0; r < rows; ++r) {
          float* row = s.data() + r * T;
          const float mx = *std::max_element(row, row + T);
          float sum = 0;
#pragma omp simd reduction(+ : sum)
          for (std::int64_t t = 0; t < T; ++t) sum += (row[t] = ops::exp_fast(row[t] - mx));
          const float inv = 1.0f / sum;
          for (std::int64_t t = 0; t < T; ++t) row[t] *= inv;
        }
        dnnl_sgemm('N', 'N', rows, d, T, 1.0f, s.data(), T, base + 2 * C, 3 * C, 0.0f,
                   att.data() + (bi * T + q0) * C + hd * d, C);
      }
    }
    // x += proj(att); x += fc2(GELU(fc1(LN(x)))), GELU exact (erf) as timm's; the epilogues add and activate.
    linears.proj(f32(att), f32(x), N, {ops::Activation::None, nullptr, true});
    ops::layernorm(x.data(), P(b + "norm2.weight"), P(b + "norm2.bias"), h.data(), N, C, kVitLnEps);
    linears.fc1(f32(h), f32(mlp), N, {ops::Activation::Gelu, nullptr, false});
    linears.fc2(f32(mlp), f32(x), N, {ops::Activation::None, nullptr, true});
  }
  std::vector<float> cls(B * C);
  for (std::int64_t bi = 0; bi < B; ++bi)
    ops::layernorm(x.data() + bi * T * C, P("norm.weight"), P("norm.bias"), cls.data() + bi * C, 1, C, kVitLnEps);
  Tensor logits(DType::F32, {B, c.num_classes});
  ops::linear(cls.data(), P("head.weight"), P("head.bias"), logits.f32(), B, c.num_classes, C);
  return logits;
}

}  // namespace vrwkv
