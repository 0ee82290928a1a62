#include "ops/linear_bf16.hpp"

#include <oneapi/dnnl/dnnl.hpp>

#include "vrwkv/error.hpp"

namespace vrwkv::ops {

namespace {
using dnnl::memory;
using dt = memory::data_type;
using tag = memory::format_tag;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
}  // namespace

struct LinearBf16::Plan {
  dnnl::matmul matmul;
  dnnl::reorder to_bf16;  // x: f32 → bf16
  memory src_f32, src_bf16, weights, dst;
};

LinearBf16::LinearBf16(const float* W, std::int64_t N, std::int64_t K) : W_(W), N_(N), K_(K) {}
LinearBf16::~LinearBf16() = default;

void LinearBf16::operator()(const float* x, float* y, std::int64_t M) {
  try {
    auto& plan = plans_[M];
    dnnl::stream stream(engine());
    if (!plan) {
      plan = std::make_unique<Plan>();
      const memory::desc src_md({M, K_}, dt::bf16, tag::ab), dst_md({M, N_}, dt::f32, tag::ab);
      const memory::desc weights_any({K_, N_}, dt::bf16, tag::any);
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, weights_any, dst_md), engine());
      plan->matmul = dnnl::matmul(pd);
      // Wᵀ as a [K,N] view of the row-major [N,K] weights, converted and packed once.
      memory user_weights({{K_, N_}, dt::f32, tag::ba}, engine(), const_cast<float*>(W_));
      plan->weights = memory(pd.weights_desc(), engine());
      dnnl::reorder(user_weights, plan->weights).execute(stream, user_weights, plan->weights);
      plan->src_f32 = memory({{M, K_}, dt::f32, tag::ab}, engine(), nullptr);
      plan->src_bf16 = memory(src_md, engine());
      plan->dst = memory(dst_md, engine(), nullptr);
      plan->to_bf16 = dnnl::reorder(plan->src_f32, plan->src_bf16);
    }
    plan->src_f32.set_data_handle(const_cast<float*>(x));
    plan->dst.set_data_handle(y);
    plan->to_bf16.execute(stream, plan->src_f32, plan->src_bf16);
    plan->matmul.execute(stream, {{DNNL_ARG_SRC, plan->src_bf16}, {DNNL_ARG_WEIGHTS, plan->weights},
                                  {DNNL_ARG_DST, plan->dst}});
    stream.wait();
  } catch (const dnnl::error& e) {
    runtime_error("bf16 matmul ", M, "x", N_, "x", K_, " failed: ", e.what(),
                  " (bf16 needs a CPU with AVX-512 BF16 or AMX)");
  }
}

}  // namespace vrwkv::ops
