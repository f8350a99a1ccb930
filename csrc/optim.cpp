#include "optim.h"

#include <cmath>

#include "threads.h"

namespace fuseprop {

// param, momentum_buffer, grad (n): PyTorch SGD
template <typename T>
void sgd_step(T* param, T* momentum_buffer, const T* grad, int64_t n, T lr, T momentum, T dampening,
              bool nesterov, T weight_decay, bool first_step) {
  parallel_for(n, 4, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T d = weight_decay != T(0) ? grad[i] + weight_decay * param[i] : grad[i];
      if (momentum != T(0)) {
        T& buf = momentum_buffer[i];
        buf = first_step ? d : momentum * buf + (T(1) - dampening) * d;
        d = nesterov ? d + momentum * buf : buf;
      }
      param[i] -= lr * d;
    }
  });
}

// param, exp_avg, exp_avg_sq, grad (n): PyTorch Adam / AdamW
template <typename T>
void adam_step(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, int64_t n, T lr, T beta1, T beta2, T eps,
               T weight_decay, bool decoupled_weight_decay, int64_t step) {
  // Scalars in double, as PyTorch computes them in Python floats.
  const double bias_correction1 = 1.0 - std::pow(double(beta1), double(step));
  const double bias_correction2 = 1.0 - std::pow(double(beta2), double(step));
  const T step_size = T(double(lr) / bias_correction1);
  const T bias_correction2_sqrt = T(std::sqrt(bias_correction2));
  const T decay = T(1.0 - double(lr) * double(weight_decay));
  parallel_for(n, 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T g = grad[i];
      if (decoupled_weight_decay) {
        param[i] *= decay;
      } else if (weight_decay != T(0)) {
        g += weight_decay * param[i];
      }
      exp_avg[i] = beta1 * exp_avg[i] + (T(1) - beta1) * g;
      exp_avg_sq[i] = beta2 * exp_avg_sq[i] + (T(1) - beta2) * g * g;
      const T denom = std::sqrt(exp_avg_sq[i]) / bias_correction2_sqrt + eps;
      param[i] -= step_size * (exp_avg[i] / denom);  // addcdiv order, as PyTorch
    }
  });
}

#define FUSEPROP_INSTANTIATE(T)                                                                    \
  template void sgd_step<T>(T*, T*, const T*, int64_t, T, T, T, bool, T, bool);                    \
  template void adam_step<T>(T*, T*, T*, const T*, int64_t, T, T, T, T, T, bool, int64_t);
FUSEPROP_INSTANTIATE(float)
FUSEPROP_INSTANTIATE(double)
#undef FUSEPROP_INSTANTIATE

}  // namespace fuseprop
