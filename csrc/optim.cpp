#include "optim.h"

#include <atomic>
#include <cmath>

#include "finite.h"
#include "threads.h"

namespace fuseprop {

namespace {

// Elements updated between finiteness tests: small enough that the test reads them from L1.
constexpr int64_t kCheckBlock = 2048;

// The loops below see restrict pointers and no branch on the configuration (each one is a
// template parameter), so they vectorise; the bindings have checked that no two arrays overlap.

// SGD over [0, n): see sgd_step
template <typename T, bool Decay, bool Momentum, bool Nesterov, bool FirstStep>
void sgd_range(T* __restrict param, T* __restrict buf, const T* __restrict grad, int64_t n, T lr, T momentum,
               T dampening, T weight_decay) {
  for (int64_t i = 0; i < n; ++i) {
    T d = grad[i];
    if constexpr (Decay) d += weight_decay * param[i];
    if constexpr (Momentum) {
      const T b = FirstStep ? d : momentum * buf[i] + (T(1) - dampening) * d;
      buf[i] = b;
      d = Nesterov ? d + momentum * b : b;
    }
    param[i] -= lr * d;
  }
}

// Adam over [0, n): see adam_step
template <typename T, bool Decoupled, bool Decay>
void adam_range(T* __restrict param, T* __restrict exp_avg, T* __restrict exp_avg_sq, const T* __restrict grad,
                int64_t n, T beta1, T beta2, T eps, T weight_decay, T decay, T step_size, T bias_correction2_sqrt) {
  for (int64_t i = 0; i < n; ++i) {
    T p = param[i], g = grad[i];
    if constexpr (Decoupled) p *= decay;
    else if constexpr (Decay) g += weight_decay * p;
    const T m = beta1 * exp_avg[i] + (T(1) - beta1) * g;
    const T v = beta2 * exp_avg_sq[i] + (T(1) - beta2) * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    const T denom = std::sqrt(v) / bias_correction2_sqrt + eps;
    param[i] = p - step_size * (m / denom);  // addcdiv order, as PyTorch
  }
}

}  // namespace

// param, momentum_buffer, grad (n): PyTorch SGD
template <typename T>
bool sgd_step(T* param, T* momentum_buffer, const T* grad, int64_t n, T lr, T momentum, T dampening,
              bool nesterov, T weight_decay, bool first_step) {
  // The configuration picks one specialised loop.
  using Range = void (*)(T*, T*, const T*, int64_t, T, T, T, T);
  const bool decay = weight_decay != T(0);
  Range range;
  if (momentum == T(0)) range = decay ? sgd_range<T, true, false, false, false> : sgd_range<T, false, false, false, false>;
  else if (first_step && nesterov) range = decay ? sgd_range<T, true, true, true, true> : sgd_range<T, false, true, true, true>;
  else if (first_step) range = decay ? sgd_range<T, true, true, false, true> : sgd_range<T, false, true, false, true>;
  else if (nesterov) range = decay ? sgd_range<T, true, true, true, false> : sgd_range<T, false, true, true, false>;
  else range = decay ? sgd_range<T, true, true, false, false> : sgd_range<T, false, true, false, false>;
  std::atomic<bool> nonfinite{false};
  parallel_for(n, 4, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b += kCheckBlock) {  // each block tested while it is in L1
      const int64_t e = end - b < kCheckBlock ? end : b + kCheckBlock;
      range(param + b, momentum_buffer ? momentum_buffer + b : nullptr, grad + b, e - b, lr, momentum, dampening,
            weight_decay);
      if (any_nonfinite(param + b, e - b)) nonfinite.store(true, std::memory_order_relaxed);
    }
  });
  return nonfinite.load();
}

// param, exp_avg, exp_avg_sq, grad (n): PyTorch Adam / AdamW
template <typename T>
bool adam_step(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, int64_t n, T lr, T beta1, T beta2, T eps,
               T weight_decay, bool decoupled_weight_decay, int64_t step) {
  // Scalars in double, as PyTorch computes them in Python floats.
  const double bias_correction1 = 1.0 - std::pow(double(beta1), double(step));
  const double bias_correction2 = 1.0 - std::pow(double(beta2), double(step));
  const T step_size = T(double(lr) / bias_correction1);
  const T bias_correction2_sqrt = T(std::sqrt(bias_correction2));
  const T decay = T(1.0 - double(lr) * double(weight_decay));
  std::atomic<bool> nonfinite{false};
  parallel_for(n, 8, [&](int64_t begin, int64_t end) {
    auto range = decoupled_weight_decay ? adam_range<T, true, false>
                 : weight_decay != T(0) ? adam_range<T, false, true> : adam_range<T, false, false>;
    for (int64_t b = begin; b < end; b += kCheckBlock) {  // each block tested while it is in L1
      const int64_t e = end - b < kCheckBlock ? end : b + kCheckBlock;
      range(param + b, exp_avg + b, exp_avg_sq + b, grad + b, e - b, beta1, beta2, eps, weight_decay, decay, step_size,
            bias_correction2_sqrt);
      if (any_nonfinite(param + b, e - b)) nonfinite.store(true, std::memory_order_relaxed);
    }
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
