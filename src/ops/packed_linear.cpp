#include "ops/packed_linear.hpp"

#include <omp.h>

#include <string>

#include "ops/dnnl_util.hpp"
#include "vrwkv/error.hpp"

namespace vrwkv::ops {

namespace {
using dnnl::memory;
using dt = memory::data_type;
using tag = memory::format_tag;

dnnl::engine& engine() { return dnnl_engine(); }

// The eltwise post-ops of an activation (the binary multiply comes after them).
int eltwise_count(Activation act) {
  return act == Activation::None ? 0 : act == Activation::ReluSquare ? 2 : 1;
}

dt dnnl_type(DType t) {
  if (t == DType::F32) return dt::f32;
  if (t == DType::BF16) return dt::bf16;
  runtime_error("packed linear: activations must be F32 or BF16, got ", dtype_name(t));
}
}  // namespace

struct PackedLinear::Plan {
  dnnl::matmul matmul;
  const memory* weights = nullptr;  // one of packed_
  memory::desc src, gemm_src, dst, mul, bias, scratch, reorder_scratch;  // gemm_src: src in the weights' dtype
  dnnl::reorder to_bf16;  // bf16 weights, float32 x: x rounded to bf16 first
  // The tail of the epilogue done after the GEMM rather than fused into it:
  // where the fused chain would leave oneDNN only its reference matmul (on
  // AVX2, oneDNN 2.6's GEMM-based matmul takes a binary post-op or a sum,
  // not both: ~100x slower). unfused_sum: the GEMM writes z to a scratch
  // buffer and y += z follows; unfused_mul (then also the sum, which comes
  // after it): z·mul follows as well.
  bool unfused_mul = false, unfused_sum = false;
  std::string implementation;  // oneDNN's name for the matmul's implementation
};

namespace {
// y ← y + z·mul, y ← z·mul (in place: z is y) or y ← y + z, over M×N float32 values.
void finish_epilogue(float* y, const float* z, const float* mul, bool accumulate, std::int64_t count) {
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && count >= (1 << 16))
  for (std::int64_t i = 0; i < count; ++i) {
    const float v = mul ? z[i] * mul[i] : z[i];
    y[i] = accumulate ? y[i] + v : v;
  }
}
}  // namespace

PackedLinear::PackedLinear(const float* W, std::int64_t N, std::int64_t K, DType weights, const float* row_scale,
                           const float* bias)
    : W_(W), N_(N), K_(K), weights_(weights) {
  if (weights != DType::F32 && weights != DType::BF16)
    runtime_error("packed linear: weights must be F32 or BF16, got ", dtype_name(weights));
  if (row_scale) {
    scaled_.resize(N * K);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t k = 0; k < K; ++k) scaled_[n * K + k] = W[n * K + k] * row_scale[n];
    W_ = scaled_.data();
  }
  if (bias) {
    bias_.assign(bias, bias + N);
    if (row_scale)
      for (std::int64_t n = 0; n < N; ++n) bias_[n] *= row_scale[n];
  }
}
PackedLinear::~PackedLinear() = default;

const PackedLinear::Plan& PackedLinear::plan(std::int64_t M, DType x, DType y, const Epilogue& e) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<Plan>& slot = plans_[Key{M, x, y, e.act, e.mul != nullptr, e.accumulate}];
  if (slot) return *slot;
  auto plan = std::make_unique<Plan>();  // stored only once complete: creation may throw
  const dt wt = dnnl_type(weights_);
  plan->src = memory::desc({M, K_}, dnnl_type(x), tag::ab);
  plan->gemm_src = memory::desc({M, K_}, wt, tag::ab);
  plan->dst = memory::desc({M, N_}, dnnl_type(y), tag::ab);
  plan->mul = memory::desc({M, N_}, dt::f32, tag::ab);
  if (!bias_.empty()) plan->bias = memory::desc({1, N_}, dt::f32, tag::ab);
  // The fused chain, and shorter ones for where a full one leaves only oneDNN's reference matmul.
  const auto make_pd = [&](bool with_mul, bool with_sum) {
    dnnl::post_ops ops;
    if (e.act == Activation::Sigmoid) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_logistic, 0.0f, 0.0f);
    if (e.act == Activation::ReluSquare) {
      ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
      ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_square, 0.0f, 0.0f);
    }
    if (e.act == Activation::Gelu) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
    if (e.act == Activation::Tanh) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_tanh, 0.0f, 0.0f);
    if (e.act == Activation::Silu) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_swish, 1.0f, 0.0f);
    if (with_mul) ops.append_binary(dnnl::algorithm::binary_mul, plan->mul);
    if (with_sum) ops.append_sum(1.0f);
    // Scratch memory comes from the calling thread (oneDNN's own is bound to the thread that made the primitive).
    dnnl::primitive_attr attr = user_scratch_attr();
    attr.set_post_ops(ops);
    const memory::desc weights_any({K_, N_}, wt, tag::any);
    return dnnl::matmul::primitive_desc(
        bias_.empty() ? dnnl::matmul::desc(plan->gemm_src, weights_any, plan->dst)
                      : dnnl::matmul::desc(plan->gemm_src, weights_any, plan->bias, plan->dst),
        attr, engine());
  };
  const auto is_reference = [](const dnnl::matmul::primitive_desc& d) {
    return std::string(d.impl_info_str()).starts_with("ref");
  };
  dnnl::matmul::primitive_desc pd = make_pd(e.mul != nullptr, e.accumulate);
  // The unfused tail is written for float32 outputs; bf16 ones keep the fused chain.
  if (y == DType::F32 && is_reference(pd) && e.accumulate) {
    dnnl::matmul::primitive_desc shorter = make_pd(e.mul != nullptr, false);
    if (!is_reference(shorter)) pd = shorter, plan->unfused_sum = true;
  }
  if (y == DType::F32 && is_reference(pd) && e.mul) {
    dnnl::matmul::primitive_desc shorter = make_pd(false, false);
    if (!is_reference(shorter)) pd = shorter, plan->unfused_mul = true, plan->unfused_sum = e.accumulate;
  }
  plan->matmul = dnnl::matmul(pd);
  plan->implementation = pd.impl_info_str();
  plan->scratch = pd.scratchpad_desc();
  if (x != weights_) {
    const dnnl::reorder::primitive_desc rpd(engine(), plan->src, engine(), plan->gemm_src, user_scratch_attr());
    plan->to_bf16 = dnnl::reorder(rpd);
    plan->reorder_scratch = rpd.scratchpad_desc();
  }
  // Wᵀ as a [K,N] view of the row-major [N,K] weights, converted and packed
  // once per layout (so far every M has asked for the same one).
  for (auto& p : packed_)
    if (p->get_desc() == pd.weights_desc()) plan->weights = p.get();
  if (!plan->weights) {
    dnnl::stream stream(engine());
    memory user({{K_, N_}, dt::f32, tag::ba}, engine(), const_cast<float*>(W_));
    auto packed = std::make_unique<memory>(pd.weights_desc(), engine());
    dnnl::reorder(user, *packed).execute(stream, user, *packed);
    stream.wait();
    plan->weights = packed.get();
    packed_.push_back(std::move(packed));
  }
  slot = std::move(plan);
  return *slot;
}

std::string PackedLinear::implementation(std::int64_t M, DType x, DType y, const Epilogue& e) {
  const Plan& p = plan(M, x, y, e);
  return p.implementation + (p.unfused_mul || p.unfused_sum ? "+unfused" : "");
}

void PackedLinear::operator()(Activations x, Activations y, std::int64_t M, const Epilogue& e) {
  if (M == 0) return;
  if (weights_ == DType::F32 && x.dtype != DType::F32)
    runtime_error("packed linear: float32 weights need float32 activations, got ", dtype_name(x.dtype));
  try {
    const Plan& p = plan(M, x.dtype, y.dtype, e);
    dnnl::stream stream(engine());
    // This thread's bf16 copy of x, grown as needed (only grown: a resize up zeroes the new part).
    thread_local std::vector<std::uint16_t> rounded_x;
    memory src(p.src, engine(), x.data);
    if (x.dtype != weights_) {
      if (rounded_x.size() < static_cast<std::size_t>(M * K_)) rounded_x.resize(static_cast<std::size_t>(M * K_));
      memory rounded(p.gemm_src, engine(), rounded_x.data());
      p.to_bf16.execute(stream, {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, rounded},
                                 {DNNL_ARG_SCRATCHPAD, thread_scratch(p.reorder_scratch)}});
      src = rounded;
    }
    // The GEMM's output: y, or this thread's buffer for z when y += z is done after it.
    thread_local std::vector<float> z;
    void* dst = y.data;
    if (p.unfused_sum) {
      if (z.size() < static_cast<std::size_t>(M * N_)) z.resize(static_cast<std::size_t>(M * N_));
      dst = z.data();
    }
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src},
                                            {DNNL_ARG_WEIGHTS, *p.weights},
                                            {DNNL_ARG_DST, memory(p.dst, engine(), dst)},
                                            {DNNL_ARG_SCRATCHPAD, thread_scratch(p.scratch)}};
    if (!bias_.empty()) args[DNNL_ARG_BIAS] = memory(p.bias, engine(), const_cast<float*>(bias_.data()));
    if (e.mul && !p.unfused_mul)
      args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(eltwise_count(e.act)) | DNNL_ARG_SRC_1] =
          memory(p.mul, engine(), const_cast<float*>(e.mul));
    p.matmul.execute(stream, args);
    stream.wait();
    if (p.unfused_sum || p.unfused_mul)
      finish_epilogue(static_cast<float*>(y.data), static_cast<const float*>(dst), p.unfused_mul ? e.mul : nullptr,
                      p.unfused_sum, M * N_);
  } catch (const dnnl::error& err) {
    runtime_error("matmul ", M, "x", N_, "x", K_, " (", dtype_name(weights_), ") failed: ", err.what(),
                  weights_ == DType::BF16 ? " (bf16 needs a CPU with AVX-512 BF16 or AMX)" : "");
  }
}

}  // namespace vrwkv::ops
