#include "cuda/ops/optim_cuda.h"

#include <cuda_runtime.h>

#include <cmath>

#include "cuda/core/launch.cuh"

namespace fuseprop::cuda {

namespace {

// param, buf, grad (n) flat, grid-stride; buf unused without momentum
__global__ void sgd_kernel(float* param, float* buf, const float* grad, int64_t n, float lr, float momentum,
                           float dampening, bool nesterov, float weight_decay, bool first_step,
                           const int32_t* skip) {
  if (skip && *skip) return;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float d = grad[i];
    if (weight_decay != 0.f) d += weight_decay * param[i];
    if (momentum != 0.f) {
      const float b = first_step ? d : momentum * buf[i] + (1.f - dampening) * d;
      buf[i] = b;
      d = nesterov ? d + momentum * b : b;
    }
    param[i] -= lr * d;
  }
}

// param, exp_avg, exp_avg_sq, grad (n) flat, grid-stride; the scalars come from the host in double
__global__ void adam_kernel(float* param, float* exp_avg, float* exp_avg_sq, const float* grad, int64_t n, float beta1,
                            float beta2, float eps, float weight_decay, bool decoupled, float decay, float step_size,
                            float bias_correction2_sqrt, const int32_t* skip) {
  if (skip && *skip) return;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float p = param[i], g = grad[i];
    if (decoupled) p *= decay;
    else if (weight_decay != 0.f) g += weight_decay * p;
    const float m = beta1 * exp_avg[i] + (1.f - beta1) * g;
    const float v = beta2 * exp_avg_sq[i] + (1.f - beta2) * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    const float denom = sqrtf(v) / bias_correction2_sqrt + eps;
    param[i] = p - step_size * (m / denom);  // addcdiv order, as PyTorch
  }
}

}  // namespace

void sgd_step(float* param, float* momentum_buffer, const float* grad, int64_t n, float lr, float momentum,
              float dampening, bool nesterov, float weight_decay, bool first_step, const int32_t* skip) {
  if (n == 0) return;
  sgd_kernel<<<grid_1d(n), kThreads>>>(param, momentum_buffer, grad, n, lr, momentum, dampening, nesterov, weight_decay,
                                       first_step, skip);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void adam_step(float* param, float* exp_avg, float* exp_avg_sq, const float* grad, int64_t n, float lr, float beta1,
               float beta2, float eps, float weight_decay, bool decoupled_weight_decay, int64_t step, const int32_t* skip) {
  if (n == 0) return;
  // Scalars in double, as PyTorch computes them in Python floats (and as csrc/optim.cpp).
  const double bias_correction1 = 1.0 - std::pow(double(beta1), double(step));
  const double bias_correction2 = 1.0 - std::pow(double(beta2), double(step));
  const float step_size = float(double(lr) / bias_correction1);
  const float bias_correction2_sqrt = float(std::sqrt(bias_correction2));
  const float decay = float(1.0 - double(lr) * double(weight_decay));
  adam_kernel<<<grid_1d(n), kThreads>>>(param, exp_avg, exp_avg_sq, grad, n, beta1, beta2, eps, weight_decay,
                                        decoupled_weight_decay, decay, step_size, bias_correction2_sqrt, skip);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

}  // namespace fuseprop::cuda
