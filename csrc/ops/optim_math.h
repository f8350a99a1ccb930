// The optimizer updates, one scalar source each, compiled by both backends: the CPU's per-ISA loops
// (ops/elementwise_simd.h, behind ops/optim.cpp) and the CUDA kernels (cuda/ops/optim_cuda.cu); both
// train plans update through those. PyTorch's formulas in PyTorch's order (torch.optim.SGD / Adam /
// AdamW, the single-tensor "foreach=False" path), so results match step for step.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/common.h"

namespace fuseprop {

// sqrt through the builtin on the host, not std::sqrt: an out-of-line copy of an inline std:: function
// compiled in a wide-vector file could be the one the linker keeps for the baseline code too.
FUSEPROP_HD FUSEPROP_FORCEINLINE float square_root(float v) {
#if defined(__CUDA_ARCH__)
  return sqrtf(v);
#else
  return __builtin_sqrtf(v);
#endif
}
FUSEPROP_HD FUSEPROP_FORCEINLINE double square_root(double v) {
#if defined(__CUDA_ARCH__)
  return sqrt(v);
#else
  return __builtin_sqrt(v);
#endif
}

// One element of SGD: d = g (+ weight_decay p when decay); with momentum, b = first_step ? d :
// momentum b + (1 - dampening) d and d = nesterov ? d + momentum b : b; returns p - lr d. b is the
// momentum buffer's element: read only with momentum after its first step, written with momentum.
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T sgd_update(T p, T g, T& b, T lr, T momentum, T dampening, T weight_decay, bool decay,
                                              bool use_momentum, bool nesterov, bool first_step) {
  T d = g;
  if (decay) d += weight_decay * p;
  if (use_momentum) {
    b = first_step ? d : momentum * b + (T(1) - dampening) * d;
    d = nesterov ? d + momentum * b : b;
  }
  return p - lr * d;
}

// The scalars of one Adam / AdamW step (step counts from 1 and includes this update), in double as
// PyTorch computes them in Python floats: lr / bc1, sqrt(bc2) with bc_i = 1 - beta_i^step, and AdamW's
// decay factor 1 - lr wd. Host code on both backends (the CUDA launcher passes them to its kernel).
struct AdamScalars {
  double step_size, bias_correction2_sqrt, decay;
};
inline AdamScalars adam_scalars(double lr, double beta1, double beta2, double weight_decay, int64_t step) {
  const double bias_correction1 = 1.0 - std::pow(beta1, double(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, double(step));
  return {lr / bias_correction1, std::sqrt(bias_correction2), 1.0 - lr * weight_decay};
}

// One element of Adam / AdamW: decoupled (AdamW) p *= decay_factor, else (Adam, when decay)
// g += weight_decay p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; returns
// p - step_size * (m / (sqrt(v) / bias_correction2_sqrt + eps)), PyTorch's addcdiv order.
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T adam_update(T p, T g, T& m, T& v, T beta1, T beta2, T eps, T weight_decay,
                                               bool decoupled, bool decay, T decay_factor, T step_size,
                                               T bias_correction2_sqrt) {
  if (decoupled) p *= decay_factor;
  else if (decay) g += weight_decay * p;
  m = beta1 * m + (T(1) - beta1) * g;
  v = beta2 * v + (T(1) - beta2) * g * g;
  const T denom = square_root(v) / bias_correction2_sqrt + eps;
  return p - step_size * (m / denom);
}

}  // namespace fuseprop
