// The elementwise kernel table: per instruction set, the step's update and finiteness loops
// (elementwise_simd.h compiled at that level). float follows the CPU level; double always uses the
// baseline copy. Every level computes the same bits (see elementwise_simd.h).
#pragma once

#include <cstdint>

namespace fuseprop {

template <typename T>
struct ElementwiseKernels {
  const char* level;
  // a (n): true when some element is NaN or Inf
  bool (*any_nonfinite)(const T* a, int64_t n);
  // [0, n) of sgd_step / adam_step (optim.h); true when some updated parameter is NaN or Inf
  bool (*sgd_chunk)(T* param, T* buf, const T* grad, int64_t n, T lr, T momentum, T dampening, bool nesterov,
                    T weight_decay, bool first_step);
  bool (*adam_chunk)(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, int64_t n, T beta1, T beta2, T eps,
                     T weight_decay, bool decoupled, T decay, T step_size, T bias_correction2_sqrt);
};

const ElementwiseKernels<float>& elementwise_kernels(float);
const ElementwiseKernels<double>& elementwise_kernels(double);

#if defined(FUSEPROP_SIMD_X86)
extern const ElementwiseKernels<float> elementwise_kernels_avx2;
extern const ElementwiseKernels<float> elementwise_kernels_avx512;
#endif

}  // namespace fuseprop
