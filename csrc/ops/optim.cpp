#include "ops/optim.h"

#include <atomic>
#include <cmath>

#include "ops/elementwise_kernels.h"
#include "ops/optim_math.h"
#include "core/threads.h"

namespace fuseprop {

// param, momentum_buffer, grad (n): PyTorch SGD. Threads take contiguous chunks; the loops, and the
// test of what they wrote, are elementwise_simd.h's at the CPU's level.
template <typename T>
bool sgd_step(T* param, T* momentum_buffer, const T* grad, int64_t n, T lr, T momentum, T dampening,
              bool nesterov, T weight_decay, bool first_step) {
  const ElementwiseKernels<T>& kern = elementwise_kernels(T{});
  std::atomic<bool> nonfinite{false};
  parallel_for(n, 4, [&](int64_t begin, int64_t end) {
    if (kern.sgd_chunk(param + begin, momentum_buffer ? momentum_buffer + begin : nullptr, grad + begin, end - begin,
                       lr, momentum, dampening, nesterov, weight_decay, first_step))
      nonfinite.store(true, std::memory_order_relaxed);
  });
  return nonfinite.load();
}

// param, exp_avg, exp_avg_sq, grad (n): PyTorch Adam / AdamW
template <typename T>
bool adam_step(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, int64_t n, T lr, T beta1, T beta2, T eps,
               T weight_decay, bool decoupled_weight_decay, int64_t step) {
  const AdamScalars s = adam_scalars(double(lr), double(beta1), double(beta2), double(weight_decay), step);
  const T step_size = T(s.step_size), bias_correction2_sqrt = T(s.bias_correction2_sqrt), decay = T(s.decay);
  const ElementwiseKernels<T>& kern = elementwise_kernels(T{});
  std::atomic<bool> nonfinite{false};
  parallel_for(n, 8, [&](int64_t begin, int64_t end) {
    if (kern.adam_chunk(param + begin, exp_avg + begin, exp_avg_sq + begin, grad + begin, end - begin, beta1, beta2,
                        eps, weight_decay, decoupled_weight_decay, decay, step_size, bias_correction2_sqrt))
      nonfinite.store(true, std::memory_order_relaxed);
  });
  return nonfinite.load();
}

#define FUSEPROP_INSTANTIATE(T)                                                                    \
  template bool sgd_step<T>(T*, T*, const T*, int64_t, T, T, T, bool, T, bool);                    \
  template bool adam_step<T>(T*, T*, T*, const T*, int64_t, T, T, T, T, T, bool, int64_t);
FUSEPROP_INSTANTIATE(float)
FUSEPROP_INSTANTIATE(double)
#undef FUSEPROP_INSTANTIATE

}  // namespace fuseprop
