// The effective receptive field (vrwkv/backward.hpp): one backward from the
// central output token to the input.
#include <cmath>

#include "vrwkv/backward.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv {

Tensor receptive_field(const Model& model, const Tensor& input, const Context& ctx) {
  const Architecture& a = model.architecture();
  if (input.dtype() != DType::F32 || input.ndim() != 4 || input.dim(1) != a.in_channels)
    input_error("input has shape ", shape_str(input.shape()), ", expected F32 [B,", a.in_channels, ",H,W]");
  const std::int64_t last = model.config().run.out_indices.back();
  Backprop backprop(model);
  backprop.forward(input, last, {}, ctx);
  const Tensor y = backprop.block_output(last);
  const std::int64_t B = y.dim(0), T = y.dim(1), C = y.dim(2);
  const std::int64_t centre = (backprop.grid_h() / 2) * backprop.grid_w() + backprop.grid_w() / 2;
  // d s / d (output features): 1 on every channel of the central token.
  Tensor d_features(DType::F32, y.shape());
  float* d = d_features.f32();
  for (std::int64_t i = 0; i < d_features.numel(); ++i) d[i] = 0.0f;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t c = 0; c < C; ++c) d[(b * T + centre) * C + c] = 1.0f;
  Gradients grads(model);
  const bool normed = a.final_norm && last == a.depth - 1;
  const Tensor d_y = normed ? final_norm_backward(model, y, d_features, grads, ctx) : d_features;
  Tensor d_input;
  backprop.backward({{last, d_y}}, grads, ctx, &d_input);
  const std::int64_t Cin = input.dim(1), H = input.dim(2), W = input.dim(3);
  Tensor map(DType::F32, {H, W});
  float* m = map.f32();
  const float* g = d_input.f32();
  for (std::int64_t p = 0; p < H * W; ++p) {
    double sum = 0;
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t ch = 0; ch < Cin; ++ch) sum += std::abs(g[(b * Cin + ch) * H * W + p]);
    m[p] = static_cast<float>(sum);
  }
  return map;
}

}  // namespace vrwkv
