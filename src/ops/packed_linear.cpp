#include "ops/packed_linear.hpp"

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
};

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
  dnnl::post_ops ops;
  if (e.act == Activation::Sigmoid) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_logistic, 0.0f, 0.0f);
  if (e.act == Activation::ReluSquare) {
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_square, 0.0f, 0.0f);
  }
  if (e.act == Activation::Gelu) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
  if (e.act == Activation::Tanh) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_tanh, 0.0f, 0.0f);
  if (e.act == Activation::Silu) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_swish, 1.0f, 0.0f);
  if (e.mul) ops.append_binary(dnnl::algorithm::binary_mul, plan->mul);
  if (e.accumulate) ops.append_sum(1.0f);
  // Scratch memory comes from the calling thread (oneDNN's own is bound to the thread that made the primitive).
  dnnl::primitive_attr attr = user_scratch_attr();
  attr.set_post_ops(ops);
  const memory::desc weights_any({K_, N_}, wt, tag::any);
  const dnnl::matmul::primitive_desc pd(
      bias_.empty() ? dnnl::matmul::desc(plan->gemm_src, weights_any, plan->dst)
                    : dnnl::matmul::desc(plan->gemm_src, weights_any, plan->bias, plan->dst),
      attr, engine());
  plan->matmul = dnnl::matmul(pd);
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

void PackedLinear::operator()(Activations x, Activations y, std::int64_t M, const Epilogue& e) {
  if (M == 0) return;
  if (weights_ == DType::F32 && x.dtype != DType::F32)
    runtime_error("packed linear: float32 weights need float32 activations, got ", dtype_name(x.dtype));
  try {
    const Plan& p = plan(M, x.dtype, y.dtype, e);
    dnnl::stream stream(engine());
    // This thread's bf16 copy of x, grown as needed.
    thread_local std::vector<std::uint16_t> rounded_x;
    memory src(p.src, engine(), x.data);
    if (x.dtype != weights_) {
      rounded_x.resize(static_cast<std::size_t>(M * K_));
      memory rounded(p.gemm_src, engine(), rounded_x.data());
      p.to_bf16.execute(stream, {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, rounded},
                                 {DNNL_ARG_SCRATCHPAD, thread_scratch(p.reorder_scratch)}});
      src = rounded;
    }
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src},
                                            {DNNL_ARG_WEIGHTS, *p.weights},
                                            {DNNL_ARG_DST, memory(p.dst, engine(), y.data)},
                                            {DNNL_ARG_SCRATCHPAD, thread_scratch(p.scratch)}};
    if (!bias_.empty()) args[DNNL_ARG_BIAS] = memory(p.bias, engine(), const_cast<float*>(bias_.data()));
    if (e.mul)
      args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(eltwise_count(e.act)) | DNNL_ARG_SRC_1] =
          memory(p.mul, engine(), const_cast<float*>(e.mul));
    p.matmul.execute(stream, args);
    stream.wait();
  } catch (const dnnl::error& err) {
    runtime_error("matmul ", M, "x", N_, "x", K_, " (", dtype_name(weights_), ") failed: ", err.what(),
                  weights_ == DType::BF16 ? " (bf16 needs a CPU with AVX-512 BF16 or AMX)" : "");
  }
}

}  // namespace vrwkv::ops
