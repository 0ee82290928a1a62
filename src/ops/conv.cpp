#include "ops/conv.hpp"

#include <cmath>

#include "ops/dnnl_util.hpp"
#include "ops/packed_linear.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::ops {

namespace {
using dnnl::memory;
using dt = memory::data_type;
using tag = memory::format_tag;

// An NHWC map [B,H,W,C] as a oneDNN descriptor (logical dims N,C,H,W). (Wider
// pixel strides, a channel slice of a concatenation, would send oneDNN 2.6 to
// its reference convolution: callers copy instead.)
memory::desc nhwc(std::int64_t B, std::int64_t C, std::int64_t H, std::int64_t W) {
  return memory::desc({B, C, H, W}, dt::f32, tag::nhwc);
}

// The user weights' descriptor and their packed copy in the layout `pd` wants, packed once per layout.
const memory* packed_weights(std::vector<std::unique_ptr<memory>>& packed, const memory::desc& user,
                             const memory::desc& wanted, const float* data) {
  for (auto& p : packed)
    if (p->get_desc() == wanted) return p.get();
  dnnl::stream stream(dnnl_engine());
  memory src(user, dnnl_engine(), const_cast<float*>(data));
  auto out = std::make_unique<memory>(wanted, dnnl_engine());
  dnnl::reorder(src, *out).execute(stream, src, *out);
  stream.wait();
  packed.push_back(std::move(out));
  return packed.back().get();
}

void run_primitive(const dnnl::primitive& p, const memory::desc& scratch, const memory::desc& src, const void* x,
                   const memory& weights, const memory::desc& bias, const float* b, const memory::desc& dst,
                   void* y) {
  dnnl::stream stream(dnnl_engine());
  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, memory(src, dnnl_engine(), const_cast<void*>(x))},
                                          {DNNL_ARG_WEIGHTS, weights},
                                          {DNNL_ARG_DST, memory(dst, dnnl_engine(), y)},
                                          {DNNL_ARG_SCRATCHPAD, thread_scratch(scratch)}};
  if (b) args[DNNL_ARG_BIAS] = memory(bias, dnnl_engine(), const_cast<float*>(b));
  p.execute(stream, args);
  stream.wait();
}
}  // namespace

void conv2d_ref(const float* x, const float* weight, const float* bias, float* y, std::int64_t B, std::int64_t H,
                std::int64_t W, const ConvShape& s) {
  const std::int64_t Ho = s.out(H), Wo = s.out(W), cig = s.Ci / s.groups, cog = s.Co / s.groups;
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t oy = 0; oy < Ho; ++oy)
      for (std::int64_t ox = 0; ox < Wo; ++ox)
        for (std::int64_t co = 0; co < s.Co; ++co) {
          const std::int64_t g = co / cog;
          double acc = bias ? bias[co] : 0.0;
          for (std::int64_t ky = 0; ky < s.k; ++ky) {
            const std::int64_t iy = oy * s.stride - s.pad + ky;
            if (iy < 0 || iy >= H) continue;
            for (std::int64_t kx = 0; kx < s.k; ++kx) {
              const std::int64_t ix = ox * s.stride - s.pad + kx;
              if (ix < 0 || ix >= W) continue;
              const float* px = x + ((b * H + iy) * W + ix) * s.Ci + g * cig;
              const float* pw = weight + (co * cig * s.k + ky) * s.k + kx;
              for (std::int64_t ci = 0; ci < cig; ++ci)
                acc += static_cast<double>(px[ci]) * pw[ci * s.k * s.k];
            }
          }
          y[((b * Ho + oy) * Wo + ox) * s.Co + co] = static_cast<float>(acc);
        }
}

void conv_transpose2d_ref(const float* x, const float* weight, const float* bias, float* y, std::int64_t B,
                          std::int64_t H, std::int64_t W, const ConvShape& s) {
  const std::int64_t k = s.k, Ho = H * k, Wo = W * k;
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t oy = 0; oy < Ho; ++oy)
      for (std::int64_t ox = 0; ox < Wo; ++ox) {
        const std::int64_t iy = oy / k, ky = oy % k, ix = ox / k, kx = ox % k;
        const float* px = x + ((b * H + iy) * W + ix) * s.Ci;
        for (std::int64_t co = 0; co < s.Co; ++co) {
          double acc = bias ? bias[co] : 0.0;
          for (std::int64_t ci = 0; ci < s.Ci; ++ci)
            acc += static_cast<double>(px[ci]) * weight[((ci * s.Co + co) * k + ky) * k + kx];
          y[((b * Ho + oy) * Wo + ox) * s.Co + co] = static_cast<float>(acc);
        }
      }
}

// ---------------------------------------------------------------------------

struct Conv2d::Plan {
  dnnl::convolution_forward conv;
  const memory* weights = nullptr;
  memory::desc user_src, src, dst, user_dst, bias, scratch;  // src, dst: the primitive's layouts
  dnnl::reorder to_src, to_user_dst;  // when the layouts differ: x rounded to bf16, or blocked for Winograd
  memory::desc to_src_scratch, to_user_dst_scratch;
};

Conv2d::Conv2d(const float* weight, const float* bias, const ConvShape& shape, const float* scale,
               const float* shift, bool relu)
    : shape_(shape), relu_(relu) {
  const std::int64_t per_out = shape.Ci / shape.groups * shape.k * shape.k;
  weight_.assign(weight, weight + shape.Co * per_out);
  bias_.assign(shape.Co, 0.0f);
  for (std::int64_t co = 0; co < shape.Co; ++co) {
    // The affine in float64, rounded once: (conv + b)·scale + shift.
    const double sc = scale ? scale[co] : 1.0, b = bias ? bias[co] : 0.0;
    if (scale)
      for (std::int64_t i = 0; i < per_out; ++i)
        weight_[co * per_out + i] = static_cast<float>(weight[co * per_out + i] * sc);
    bias_[co] = static_cast<float>(b * sc + (shift ? shift[co] : 0.0));
  }
}
Conv2d::~Conv2d() = default;

bool winograd_supported() {
  static const bool supported = [] {
    const memory::dim c = kWinogradMinChannels;
    try {
      const dnnl::convolution_forward::primitive_desc pd(
          dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_winograd,
                                          memory::desc({1, c, 8, 8}, dt::f32, tag::any),
                                          memory::desc({c, c, 3, 3}, dt::f32, tag::any),
                                          memory::desc({c}, dt::f32, tag::x),
                                          memory::desc({1, c, 8, 8}, dt::f32, tag::any), {1, 1}, {1, 1}, {1, 1}),
          dnnl_engine());
      return true;
    } catch (const dnnl::error&) {
      return false;  // no implementation for this CPU
    }
  }();
  return supported;
}

bool Conv2d::winograd_applies() const {
  const ConvShape& s = shape_;
  return s.k == 3 && s.stride == 1 && s.pad == 1 && s.groups == 1 && s.Ci >= kWinogradMinChannels &&
         s.Co >= kWinogradMinChannels && winograd_supported();
}

const Conv2d::Plan& Conv2d::plan(std::int64_t B, std::int64_t H, std::int64_t W, ConvCompute compute) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<Plan>& slot = plans_[{B, H, W, compute}];
  if (slot) return *slot;
  const ConvShape& s = shape_;
  const dt wt = compute == ConvCompute::BF16 ? dt::bf16 : dt::f32;
  auto p = std::make_unique<Plan>();
  p->user_src = nhwc(B, s.Ci, H, W);
  p->user_dst = nhwc(B, s.Co, s.out(H), s.out(W));
  p->bias = memory::desc({s.Co}, dt::f32, tag::x);
  const std::int64_t g = s.groups;
  const memory::dims wdims = g == 1 ? memory::dims{s.Co, s.Ci, s.k, s.k}
                                    : memory::dims{g, s.Co / g, s.Ci / g, s.k, s.k};
  const memory::desc w_any(wdims, wt, tag::any), w_user(wdims, dt::f32, g == 1 ? tag::oihw : tag::goihw);
  dnnl::post_ops ops;
  if (relu_) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  dnnl::primitive_attr attr = user_scratch_attr();
  attr.set_post_ops(ops);
  const auto make = [&](dnnl::algorithm alg, const memory::desc& src, const memory::desc& dst) {
    return dnnl::convolution_forward::primitive_desc(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, alg, src, w_any, p->bias, dst,
                                        {s.stride, s.stride}, {s.pad, s.pad}, {s.pad, s.pad}),
        attr, dnnl_engine());
  };
  dnnl::convolution_forward::primitive_desc pd;
  if (compute == ConvCompute::Winograd) {
    // Winograd F(4×4, 3×3) runs on oneDNN's blocked layouts only.
    pd = make(dnnl::algorithm::convolution_winograd, memory::desc({B, s.Ci, H, W}, dt::f32, tag::any),
              memory::desc({B, s.Co, s.out(H), s.out(W)}, dt::f32, tag::any));
  } else {
    pd = make(dnnl::algorithm::convolution_direct, memory::desc({B, s.Ci, H, W}, wt, tag::nhwc), p->user_dst);
  }
  p->src = pd.src_desc();
  p->dst = pd.dst_desc();
  if (p->src != p->user_src) {
    const dnnl::reorder::primitive_desc rpd(dnnl_engine(), p->user_src, dnnl_engine(), p->src, user_scratch_attr());
    p->to_src = dnnl::reorder(rpd);
    p->to_src_scratch = rpd.scratchpad_desc();
  }
  if (p->dst != p->user_dst) {
    const dnnl::reorder::primitive_desc rpd(dnnl_engine(), p->dst, dnnl_engine(), p->user_dst, user_scratch_attr());
    p->to_user_dst = dnnl::reorder(rpd);
    p->to_user_dst_scratch = rpd.scratchpad_desc();
  }
  p->conv = dnnl::convolution_forward(pd);
  p->scratch = pd.scratchpad_desc();
  p->weights = packed_weights(packed_, w_user, pd.weights_desc(), weight_.data());
  slot = std::move(p);
  return *slot;
}

void Conv2d::operator()(const float* x, float* y, std::int64_t B, std::int64_t H, std::int64_t W, DType compute) {
  if (B == 0) return;
  if (compute != DType::F32 && compute != DType::BF16)
    runtime_error("convolution: compute type must be F32 or BF16, got ", dtype_name(compute));
  const ConvCompute how = compute == DType::BF16 ? ConvCompute::BF16
                          : winograd_ && winograd_applies() ? ConvCompute::Winograd
                                                            : ConvCompute::Direct;
  try {
    const Plan& p = plan(B, H, W, how);
    dnnl::stream stream(dnnl_engine());
    // This thread's copies of x and y in the primitive's layouts, when they differ from NHWC float32; they only
    // grow (a resize up would zero the new part on every call that follows a smaller one).
    thread_local std::vector<char> src_copy, dst_copy;
    const auto reorder = [&](const dnnl::reorder& r, const memory::desc& from_d, const void* from,
                             const memory::desc& to_d, void* to, const memory::desc& scratch) {
      memory a(from_d, dnnl_engine(), const_cast<void*>(from)), b(to_d, dnnl_engine(), to);
      r.execute(stream, {{DNNL_ARG_FROM, a}, {DNNL_ARG_TO, b}, {DNNL_ARG_SCRATCHPAD, thread_scratch(scratch)}});
      stream.wait();
    };
    const void* src = x;
    if (p.to_src) {
      if (src_copy.size() < p.src.get_size()) src_copy.resize(p.src.get_size());
      reorder(p.to_src, p.user_src, x, p.src, src_copy.data(), p.to_src_scratch);
      src = src_copy.data();
    }
    void* dst = y;
    if (p.to_user_dst) {
      if (dst_copy.size() < p.dst.get_size()) dst_copy.resize(p.dst.get_size());
      dst = dst_copy.data();
    }
    run_primitive(p.conv, p.scratch, p.src, src, *p.weights, p.bias, bias_.data(), p.dst, dst);
    if (p.to_user_dst) reorder(p.to_user_dst, p.dst, dst_copy.data(), p.user_dst, y, p.to_user_dst_scratch);
  } catch (const dnnl::error& err) {
    runtime_error("convolution ", shape_.Ci, "->", shape_.Co, " ", shape_.k, "x", shape_.k, " on ", B, "x", H, "x", W,
                  " (", dtype_name(compute), ") failed: ", err.what(),
                  compute == DType::BF16 ? " (bf16 needs a CPU with AVX-512 BF16 or AMX)" : "");
  }
}

// ---------------------------------------------------------------------------

// With kernel = stride the outputs of different input pixels never overlap,
// so the transposed convolution is one GEMM, Z [B·H·W, k·k·Co] = X·W′ᵀ with
// W′[(di·k + dj)·Co + co, ci] = W[ci, co, di, dj], whose rows are then laid
// out as the output's k×k blocks (oneDNN's deconvolution ran these shapes at a
// quarter of the GEMM's speed).
ConvTranspose2d::ConvTranspose2d(const float* weight, const float* bias, const ConvShape& shape) : shape_(shape) {
  const std::int64_t Ci = shape.Ci, Co = shape.Co, k = shape.k;
  weight_.resize(k * k * Co * Ci);  // kept: the GEMM packs it on first use
  for (std::int64_t ci = 0; ci < Ci; ++ci)
    for (std::int64_t co = 0; co < Co; ++co)
      for (std::int64_t d = 0; d < k * k; ++d) weight_[(d * Co + co) * Ci + ci] = weight[(ci * Co + co) * k * k + d];
  std::vector<float> bias_rows(k * k * Co, 0.0f);  // the bias of every (di, dj) block, added by the GEMM
  if (bias)
    for (std::int64_t d = 0; d < k * k; ++d) std::copy(bias, bias + Co, bias_rows.begin() + d * Co);
  gemm_ = std::make_unique<PackedLinear>(weight_.data(), k * k * Co, Ci, DType::F32, nullptr, bias_rows.data());
}
ConvTranspose2d::~ConvTranspose2d() = default;

void ConvTranspose2d::operator()(const float* x, float* y, std::int64_t B, std::int64_t H, std::int64_t W) {
  if (B == 0) return;
  const std::int64_t Co = shape_.Co, k = shape_.k, M = B * H * W, row = k * Co;
  thread_local std::vector<float> z;  // this thread's GEMM output, grown as needed; written in full below
  if (z.size() < static_cast<std::size_t>(M * k * row)) z.resize(M * k * row);
  (*gemm_)(Activations{const_cast<float*>(x), DType::F32}, Activations{z.data(), DType::F32}, M);
  const float* zs = z.data();
#pragma omp parallel for collapse(2) schedule(static)
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < H; ++i)
      for (std::int64_t di = 0; di < k; ++di) {
        // Output row k·i + di: for each input column j, the k·Co values of (dj, co) are contiguous in both.
        float* out = y + ((b * H * k + i * k + di) * W * k) * Co;
        for (std::int64_t j = 0; j < W; ++j)
          std::copy_n(zs + ((b * H + i) * W + j) * k * row + di * row, row, out + j * row);
      }
}

}  // namespace vrwkv::ops
