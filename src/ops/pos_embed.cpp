#include "ops/pos_embed.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace vrwkv::ops {

namespace {
constexpr double kA = -0.75;

// The four taps and weights of one output coordinate along one axis.
struct Taps {
  std::int64_t index[4];
  double weight[4];
};

Taps cubic_taps(std::int64_t out_index, std::int64_t in_size, std::int64_t out_size) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double real = scale * (out_index + 0.5) - 0.5;
  const double base = std::floor(real);
  const double t = real - base;
  const auto near = [](double x) { return ((kA + 2) * x - (kA + 3)) * x * x + 1; };             // |x| ≤ 1
  const auto far = [](double x) { return ((kA * x - 5 * kA) * x + 8 * kA) * x - 4 * kA; };  // 1 < |x| < 2
  Taps taps;
  const double w[4] = {far(t + 1), near(t), near(1 - t), far(2 - t)};
  for (int i = 0; i < 4; ++i) {
    taps.index[i] = std::clamp<std::int64_t>(static_cast<std::int64_t>(base) - 1 + i, 0, in_size - 1);
    taps.weight[i] = w[i];
  }
  return taps;
}
}  // namespace

void resize_pos_embed_ref(const float* src, Grid from, float* dst, Grid to, std::int64_t C) {
  for (std::int64_t oy = 0; oy < to.H; ++oy) {
    const Taps ty = cubic_taps(oy, from.H, to.H);
    for (std::int64_t ox = 0; ox < to.W; ++ox) {
      const Taps tx = cubic_taps(ox, from.W, to.W);
      for (std::int64_t c = 0; c < C; ++c) {
        double acc = 0;
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j)
            acc += ty.weight[i] * tx.weight[j] * src[(ty.index[i] * from.W + tx.index[j]) * C + c];
        dst[(oy * to.W + ox) * C + c] = static_cast<float>(acc);
      }
    }
  }
}

void resize_pos_embed(const float* src, Grid from, float* dst, Grid to, std::int64_t C) {
  // Separable: along x into a [H0, W, C] buffer, then along y; float64 sums.
  std::vector<double> rows(static_cast<std::size_t>(from.H * to.W * C));
  for (std::int64_t ox = 0; ox < to.W; ++ox) {
    const Taps tx = cubic_taps(ox, from.W, to.W);
    for (std::int64_t iy = 0; iy < from.H; ++iy) {
      double* out = rows.data() + (iy * to.W + ox) * C;
      std::fill(out, out + C, 0.0);
      for (int j = 0; j < 4; ++j) {
        const float* in = src + (iy * from.W + tx.index[j]) * C;
        for (std::int64_t c = 0; c < C; ++c) out[c] += tx.weight[j] * in[c];
      }
    }
  }
  for (std::int64_t oy = 0; oy < to.H; ++oy) {
    const Taps ty = cubic_taps(oy, from.H, to.H);
    for (std::int64_t ox = 0; ox < to.W; ++ox) {
      float* out = dst + (oy * to.W + ox) * C;
      for (std::int64_t c = 0; c < C; ++c) {
        double acc = 0;
        for (int i = 0; i < 4; ++i) acc += ty.weight[i] * rows[(ty.index[i] * to.W + ox) * C + c];
        out[c] = static_cast<float>(acc);
      }
    }
  }
}

void resize_pos_embed_backward(const float* ddst, Grid to, float* dsrc, Grid from, std::int64_t C) {
  std::vector<double> acc(static_cast<std::size_t>(from.tokens() * C), 0.0);
  for (std::int64_t oy = 0; oy < to.H; ++oy) {
    const Taps ty = cubic_taps(oy, from.H, to.H);
    for (std::int64_t ox = 0; ox < to.W; ++ox) {
      const Taps tx = cubic_taps(ox, from.W, to.W);
      const float* g = ddst + (oy * to.W + ox) * C;
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          double* a = acc.data() + (ty.index[i] * from.W + tx.index[j]) * C;
          const double wt = ty.weight[i] * tx.weight[j];
          for (std::int64_t c = 0; c < C; ++c) a[c] += wt * g[c];
        }
    }
  }
  for (std::int64_t i = 0; i < from.tokens() * C; ++i) dsrc[i] += static_cast<float>(acc[i]);
}

}  // namespace vrwkv::ops
