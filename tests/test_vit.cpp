// The ViT baseline's blocked attention against a plain float64 ViT written
// here from the definition (timm's VisionTransformer, pre-norm, exact GELU).
#include <cmath>

#include "common.hpp"
#include "vrwkv/vit.hpp"

namespace vrwkv {
namespace {

using Mat = std::vector<double>;  // row-major

Mat linear(const Mat& x, std::int64_t rows, const float* W, const float* b, std::int64_t n, std::int64_t k) {
  Mat y(rows * n);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t o = 0; o < n; ++o) {
      double acc = b ? b[o] : 0;
      for (std::int64_t i = 0; i < k; ++i) acc += x[r * k + i] * W[o * k + i];
      y[r * n + o] = acc;
    }
  return y;
}

Mat layernorm(const Mat& x, std::int64_t rows, std::int64_t C, const float* w, const float* b) {
  Mat y(x.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (std::int64_t c = 0; c < C; ++c) mean += x[r * C + c] / C;
    for (std::int64_t c = 0; c < C; ++c) var += (x[r * C + c] - mean) * (x[r * C + c] - mean) / C;
    for (std::int64_t c = 0; c < C; ++c) y[r * C + c] = (x[r * C + c] - mean) / std::sqrt(var + 1e-6) * w[c] + b[c];
  }
  return y;
}

// One image of H×W = (16·gh)×(16·gw) with gh×gw = the training grid (no resize).
std::vector<double> reference_logits(const Vit& vit, const Tensor& img) {
  const VitConfig& c = vit.config();
  const auto P = [&](const std::string& n) { return vit.parameters().at(n).f32(); };
  const std::int64_t C = c.embed_dims, g = c.pos_grid, T = g * g + 1, d = C / c.heads, p = c.patch_size;
  Mat x(T * C);
  for (std::int64_t ch = 0; ch < C; ++ch) x[ch] = P("cls_token")[ch] + P("pos_embed")[ch];
  for (std::int64_t t = 1; t < T; ++t)
    for (std::int64_t ch = 0; ch < C; ++ch) {
      double acc = P("patch_embed.bias")[ch];
      const std::int64_t gy = (t - 1) / g, gx = (t - 1) % g;
      for (std::int64_t ci = 0; ci < 3; ++ci)
        for (std::int64_t ky = 0; ky < p; ++ky)
          for (std::int64_t kx = 0; kx < p; ++kx)
            acc += double(img.f32()[(ci * g * p + gy * p + ky) * g * p + gx * p + kx]) *
                   P("patch_embed.weight")[((ch * 3 + ci) * p + ky) * p + kx];
      x[t * C + ch] = acc + P("pos_embed")[t * C + ch];
    }
  for (std::int64_t i = 0; i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    const Mat h = layernorm(x, T, C, P(b + "norm1.weight"), P(b + "norm1.bias"));
    const Mat qkv = linear(h, T, P(b + "qkv.weight"), P(b + "qkv.bias"), 3 * C, C);
    Mat att(T * C);
    for (std::int64_t hd = 0; hd < c.heads; ++hd)
      for (std::int64_t q = 0; q < T; ++q) {
        std::vector<double> s(T);
        for (std::int64_t k = 0; k < T; ++k) {
          for (std::int64_t j = 0; j < d; ++j) s[k] += qkv[q * 3 * C + hd * d + j] * qkv[k * 3 * C + C + hd * d + j];
          s[k] /= std::sqrt(double(d));
        }
        const double mx = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double& v : s) sum += (v = std::exp(v - mx));
        for (std::int64_t j = 0; j < d; ++j)
          for (std::int64_t k = 0; k < T; ++k) att[q * C + hd * d + j] += s[k] / sum * qkv[k * 3 * C + 2 * C + hd * d + j];
      }
    const Mat proj = linear(att, T, P(b + "proj.weight"), P(b + "proj.bias"), C, C);
    for (std::int64_t j = 0; j < T * C; ++j) x[j] += proj[j];
    Mat m = linear(layernorm(x, T, C, P(b + "norm2.weight"), P(b + "norm2.bias")), T, P(b + "fc1.weight"),
                   P(b + "fc1.bias"), c.mlp_dims, C);
    for (double& v : m) v = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
    const Mat f = linear(m, T, P(b + "fc2.weight"), P(b + "fc2.bias"), C, c.mlp_dims);
    for (std::int64_t j = 0; j < T * C; ++j) x[j] += f[j];
  }
  const Mat cls = layernorm(Mat(x.begin(), x.begin() + C), 1, C, P("norm.weight"), P("norm.bias"));
  return linear(cls, 1, P("head.weight"), P("head.bias"), c.num_classes, C);
}

TEST(Vit, BlockedAttentionMatchesPlainDefinition) {
  const Vit vit = Vit::preset("vit_t", 3);
  // 224×224: T = 197 tokens, more than three query blocks of 64.
  Tensor img(DType::F32, {1, 3, 224, 224});
  std::mt19937 rng(4);
  const auto v = test::random_vector(img.numel(), rng, -2, 2);
  std::copy(v.begin(), v.end(), img.f32());
  const Tensor logits = vit.forward(img);
  const std::vector<double> ref = reference_logits(vit, img);
  Tensor want(DType::F32, {1, vit.config().num_classes});
  for (std::size_t i = 0; i < ref.size(); ++i) want.f32()[i] = static_cast<float>(ref[i]);
  EXPECT_TRUE(test::close_to(logits, want, test::kForwardTol));
}

}  // namespace
}  // namespace vrwkv
