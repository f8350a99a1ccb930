// Optimizer updates on the device, in place: plain C++ (no CUDA types). Pointers are device memory.
// PyTorch's formulas in PyTorch's order, as csrc/ops/optim.h (whose comments give the math); the element
// updates are csrc/ops/optim_math.h's, the CPU's own.
#pragma once

#include <cstdint>

namespace fuseprop::cuda {

// skip: a device flag (or null); when it holds non-zero the update does nothing (a refused training step).

// param, grad, momentum_buffer (n); momentum_buffer may be null when momentum == 0.
// d = grad + wd*param; buf = d on the first step else momentum*buf + (1-dampening)*d;
// d = nesterov ? d + momentum*buf : buf; param -= lr*d
void sgd_step(float* param, float* momentum_buffer, const float* grad, int64_t n, float lr, float momentum,
              float dampening, bool nesterov, float weight_decay, bool first_step, const int32_t* skip = nullptr);

// param, exp_avg, exp_avg_sq, grad (n); step counts from 1 and includes this update.
// decoupled (AdamW): param *= 1 - lr*wd, g = grad; else (Adam) g = grad + wd*param.
// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; param -= lr/bc1 * (m / (sqrt(v)/sqrt(bc2) + eps))
void adam_step(float* param, float* exp_avg, float* exp_avg_sq, const float* grad, int64_t n, float lr, float beta1,
               float beta2, float eps, float weight_decay, bool decoupled_weight_decay, int64_t step,
               const int32_t* skip = nullptr);

}  // namespace fuseprop::cuda
