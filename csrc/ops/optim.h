// Optimizer updates, in place, one parameter tensor at a time, following PyTorch's formulas
// (torch.optim.SGD / Adam / AdamW, single-tensor "foreach=False" path) so results match step for step.
#pragma once

#include <cstdint>

namespace fuseprop {

// param, grad, momentum_buffer (n). momentum_buffer may be null when momentum == 0.
// d = grad + wd*param; buf = d on the first step else momentum*buf + (1-dampening)*d;
// d = nesterov ? d + momentum*buf : buf; param -= lr*d
// Both updates return true when some updated parameter is NaN or Inf (tested as each block is written).
template <typename T>
bool sgd_step(T* param, T* momentum_buffer, const T* grad, int64_t n, T lr, T momentum, T dampening,
              bool nesterov, T weight_decay, bool first_step);

// param, exp_avg, exp_avg_sq, grad (n); step counts from 1 and includes this update.
// decoupled (AdamW): param *= 1 - lr*wd, g = grad; else (Adam) g = grad + wd*param.
// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; param -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
template <typename T>
bool adam_step(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, int64_t n, T lr, T beta1, T beta2, T eps,
               T weight_decay, bool decoupled_weight_decay, int64_t step);

}  // namespace fuseprop
