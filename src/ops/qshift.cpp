#include "ops/qshift.hpp"

#include <algorithm>
#include <vector>

namespace vrwkv::ops {

std::int64_t q_shift_group(std::int64_t C, double channel_gamma) {
  return static_cast<std::int64_t>(static_cast<double>(C) * channel_gamma);
}

void q_shift_ref(const float* x, float* xx, std::int64_t B, Grid grid, std::int64_t C, int s, double channel_gamma,
                 std::int64_t head) {
  if (head <= 0) head = C;
  const std::int64_t H = grid.H, W = grid.W, T = grid.tokens(), q = q_shift_group(head, channel_gamma);
  std::fill(xx, xx + B * T * C, 0.0f);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t w = 0; w < W; ++w)
        for (std::int64_t c = 0; c < C; ++c) {
          const std::int64_t hc = c % head;  // the channel's place in its head
          std::int64_t sh = h, sw = w;       // source pixel
          if (hc < q) sw = w - s;
          else if (hc < 2 * q) sw = w + s;
          else if (hc < 3 * q) sh = h - s;
          else if (hc < 4 * q) sh = h + s;
          if (sh < 0 || sh >= H || sw < 0 || sw >= W) continue;
          xx[(b * T + h * W + w) * C + c] = x[(b * T + sh * W + sw) * C + c];
        }
}

void q_shift_mix_ref(const float* x, std::int64_t B, Grid grid, std::int64_t C, int shift_pixel, double channel_gamma,
                     int count, const float* const* mu, float* const* out, std::int64_t head) {
  const std::int64_t n = B * grid.tokens() * C;
  std::vector<float> xx(n);
  if (shift_pixel == 0) std::copy(x, x + n, xx.begin());
  else q_shift_ref(x, xx.data(), B, grid, C, shift_pixel, channel_gamma, head);
  for (int i = 0; i < count; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      const double m = mu[i] ? mu[i][j % C] : 0.0;
      out[i][j] = static_cast<float>(x[j] * m + xx[j] * (1.0 - m));
    }
}

namespace {
// Channels [lo, hi) of shift group g (0..3: from the left, right, above,
// below; 4: the copied rest) within a head of `head` channels starting at
// h0. With q·4 > head (the 1-D shift's q = head) the later groups are empty.
struct GroupRange {
  std::int64_t lo, hi;
};
inline GroupRange group_range(std::int64_t h0, int g, std::int64_t q, std::int64_t head) {
  return {h0 + std::min(g * q, head), h0 + (g < 4 ? std::min((g + 1) * q, head) : head)};
}

// out = x·μ + xx·(1−μ) over one channel range; xx == nullptr means zeros.
template <class Out>
inline void mix_range(const float* x, const float* xx, int count, const float* const* mu, Out* const* out,
                      std::int64_t c0, std::int64_t c1) {
  for (int i = 0; i < count; ++i) {
    const float* m = mu[i];
    Out* o = out[i];
    if (!m) {  // μ = 0: the shifted value itself
      if (xx)
        for (std::int64_t c = c0; c < c1; ++c) store(o + c, xx[c]);
      else
        for (std::int64_t c = c0; c < c1; ++c) store(o + c, 0.0f);
    } else if (xx) {
      for (std::int64_t c = c0; c < c1; ++c) store(o + c, x[c] * m[c] + xx[c] * (1.0f - m[c]));
    } else {
      for (std::int64_t c = c0; c < c1; ++c) store(o + c, x[c] * m[c]);
    }
  }
}

template <class Out>
void q_shift_mix_impl(const float* x, Grid grid, std::int64_t C, int s, double channel_gamma, int count,
                      const float* const* mu, Out* const* out, std::int64_t row_begin, std::int64_t row_end,
                      std::int64_t head) {
  const std::int64_t H = grid.H, W = grid.W, T = grid.tokens();
  if (head <= 0) head = C;
  const std::int64_t q = s == 0 ? 0 : q_shift_group(head, channel_gamma);
#pragma omp parallel for schedule(static)
  for (std::int64_t bt = row_begin; bt < row_end; ++bt) {
    const std::int64_t b = bt / T, h = (bt % T) / W, w = bt % W;
    const float* row = x + bt * C;
    const auto neighbour = [&](std::int64_t sh, std::int64_t sw) -> const float* {
      if (sh < 0 || sh >= H || sw < 0 || sw >= W) return nullptr;
      return x + (b * T + sh * W + sw) * C;
    };
    const float* src[4] = {neighbour(h, w - s), neighbour(h, w + s), neighbour(h - s, w), neighbour(h + s, w)};
    Out* o[3];
    for (int i = 0; i < count; ++i) o[i] = out[i] + bt * C;
    for (std::int64_t h0 = 0; h0 < C; h0 += head) {
      for (int g = 0; g < 4 && q > 0; ++g) {
        const GroupRange r = group_range(h0, g, q, head);
        mix_range(row, src[g], count, mu, o, r.lo, r.hi);
      }
      const GroupRange rest = group_range(h0, 4, q, head);
      mix_range(row, row, count, mu, o, rest.lo, rest.hi);
    }
  }
}
}  // namespace

void q_shift_mix(const float* x, std::int64_t B, Grid grid, std::int64_t C, int s, double channel_gamma, int count,
                 const float* const* mu, float* const* out, std::int64_t head) {
  q_shift_mix_impl(x, grid, C, s, channel_gamma, count, mu, out, 0, B * grid.tokens(), head);
}

void q_shift_mix_rows(const float* x, Grid grid, std::int64_t C, int s, double channel_gamma, int count,
                      const float* const* mu, float* const* out, std::int64_t row_begin, std::int64_t row_end,
                      std::int64_t head) {
  q_shift_mix_impl(x, grid, C, s, channel_gamma, count, mu, out, row_begin, row_end, head);
}

void q_shift_mix_rows(const float* x, Grid grid, std::int64_t C, int s, double channel_gamma, int count,
                      const float* const* mu, Bf16* const* out, std::int64_t row_begin, std::int64_t row_end,
                      std::int64_t head) {
  q_shift_mix_impl(x, grid, C, s, channel_gamma, count, mu, out, row_begin, row_end, head);
}

void q_shift_mix_backward_ref(const float* x, std::int64_t B, Grid grid, std::int64_t C, int s, double channel_gamma,
                              int count, const float* const* mu, const float* const* dout, float* dx,
                              float* const* dmu, std::int64_t head) {
  if (head <= 0) head = C;
  const std::int64_t H = grid.H, W = grid.W, T = grid.tokens(), n = B * T * C, q = q_shift_group(head, channel_gamma);
  if (s == 0) {
    for (int i = 0; i < count; ++i)
      for (std::int64_t j = 0; j < n; ++j) dx[j] += dout[i][j];
    return;
  }
  std::vector<float> xx(n);
  q_shift_ref(x, xx.data(), B, grid, C, s, channel_gamma, head);
  std::vector<double> dxx(n, 0.0);
  for (int i = 0; i < count; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      const double m = mu[i] ? mu[i][j % C] : 0.0;
      dx[j] += static_cast<float>(dout[i][j] * m);
      dxx[j] += dout[i][j] * (1.0 - m);
    }
  for (int i = 0; i < count; ++i)
    for (std::int64_t c = 0; c < C && mu[i]; ++c) {
      double acc = 0;
      for (std::int64_t bt = 0; bt < B * T; ++bt) acc += static_cast<double>(dout[i][bt * C + c]) * (x[bt * C + c] - xx[bt * C + c]);
      dmu[i][c] += static_cast<float>(acc);
    }
  // Transposed shift: scatter each shifted value's gradient to its source pixel.
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t w = 0; w < W; ++w)
        for (std::int64_t c = 0; c < C; ++c) {
          const std::int64_t hc = c % head;
          std::int64_t sh = h, sw = w;
          if (hc < q) sw = w - s;
          else if (hc < 2 * q) sw = w + s;
          else if (hc < 3 * q) sh = h - s;
          else if (hc < 4 * q) sh = h + s;
          if (sh < 0 || sh >= H || sw < 0 || sw >= W) continue;
          dx[(b * T + sh * W + sw) * C + c] += static_cast<float>(dxx[(b * T + h * W + w) * C + c]);
        }
}

void q_shift_mix_backward(const float* x, std::int64_t B, Grid grid, std::int64_t C, int s, double channel_gamma,
                          int count, const float* const* mu, const float* const* dout, float* dx, float* const* dmu,
                          std::int64_t head) {
  const std::int64_t H = grid.H, W = grid.W, T = grid.tokens();
  if (head <= 0) head = C;
  if (s == 0) {
#pragma omp parallel for schedule(static)
    for (std::int64_t j = 0; j < B * T * C; ++j)
      for (int i = 0; i < count; ++i) dx[j] += dout[i][j];
    return;
  }
  const std::int64_t q = q_shift_group(head, channel_gamma);
  // Token (b, h, w) shifted by (dh, dw), or −1 outside the grid.
  const auto at = [&](std::int64_t bt, std::int64_t dh, std::int64_t dw) -> std::int64_t {
    const std::int64_t h = (bt % T) / W + dh, w = bt % W + dw;
    return h < 0 || h >= H || w < 0 || w >= W ? -1 : bt + dh * W + dw;
  };
  // Group g of a pixel took its value from the neighbour at offset src[g];
  // so the gradient of pixel p's group g comes from the pixel at −src[g].
  const std::int64_t src[4][2] = {{0, -s}, {0, s}, {-s, 0}, {s, 0}};
#pragma omp parallel for schedule(static)
  for (std::int64_t bt = 0; bt < B * T; ++bt) {
    float* d = dx + bt * C;
    for (int i = 0; i < count; ++i) {
      if (!mu[i]) {  // μ = 0: only the transposed shift
        for (std::int64_t h0 = 0; h0 < C; h0 += head) {
          for (int grp = 0; grp < 4; ++grp) {
            const std::int64_t from = at(bt, -src[grp][0], -src[grp][1]);
            if (from < 0) continue;
            const float* gf = dout[i] + from * C;
            const GroupRange r = group_range(h0, grp, q, head);
            for (std::int64_t c = r.lo; c < r.hi; ++c) d[c] += gf[c];
          }
          const float* g = dout[i] + bt * C;
          const GroupRange rest = group_range(h0, 4, q, head);
          for (std::int64_t c = rest.lo; c < rest.hi; ++c) d[c] += g[c];
        }
        continue;
      }
      const float *m = mu[i], *g = dout[i] + bt * C;
      for (std::int64_t c = 0; c < C; ++c) d[c] += g[c] * m[c];
      for (std::int64_t h0 = 0; h0 < C; h0 += head) {
        for (int grp = 0; grp < 4; ++grp) {
          const std::int64_t from = at(bt, -src[grp][0], -src[grp][1]);
          if (from < 0) continue;
          const float* gf = dout[i] + from * C;
          const GroupRange r = group_range(h0, grp, q, head);
          for (std::int64_t c = r.lo; c < r.hi; ++c) d[c] += gf[c] * (1.0f - m[c]);
        }
        const GroupRange rest = group_range(h0, 4, q, head);
        for (std::int64_t c = rest.lo; c < rest.hi; ++c) d[c] += g[c] * (1.0f - m[c]);
      }
    }
  }
  // dmu by channel ranges, each summing over the tokens in order (independent of the thread count).
  constexpr std::int64_t kRange = 64;
  const std::int64_t ranges = (C + kRange - 1) / kRange;
#pragma omp parallel for schedule(static)
  for (std::int64_t job = 0; job < count * ranges; ++job) {
    const int i = static_cast<int>(job / ranges);
    if (!mu[i]) continue;
    const std::int64_t c0 = (job % ranges) * kRange, c1 = std::min(C, c0 + kRange);
    float acc[kRange] = {};
    for (std::int64_t bt = 0; bt < B * T; ++bt) {
      const float *xr = x + bt * C, *g = dout[i] + bt * C;
      for (std::int64_t h0 = c0 / head * head; h0 < c1; h0 += head)
        for (int grp = 0; grp < 4; ++grp) {
          const GroupRange r = group_range(h0, grp, q, head);
          const std::int64_t lo = std::max(c0, r.lo), hi = std::min(c1, r.hi);
          if (lo >= hi) continue;
          const std::int64_t from = at(bt, src[grp][0], src[grp][1]);
          const float* xs = from < 0 ? nullptr : x + from * C;
          for (std::int64_t c = lo; c < hi; ++c) acc[c - c0] += g[c] * (xr[c] - (xs ? xs[c] : 0.0f));
        }
      // Channels [4q, head) of each head are copied: x − xx = 0.
    }
    for (std::int64_t c = c0; c < c1; ++c) dmu[i][c] += acc[c - c0];
  }
}

}  // namespace vrwkv::ops
