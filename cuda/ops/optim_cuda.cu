#include "cuda/ops/optim_cuda.h"

#include <cuda_runtime.h>

#include <cmath>

#include "cuda/core/launch.cuh"
#include "ops/optim_math.h"

namespace fuseprop::cuda {

namespace {

// param, buf, grad (n) flat, grid-stride; buf unused without momentum
__global__ void sgd_kernel(float* param, float* buf, const float* grad, int64_t n, float lr, float momentum,
                           float dampening, bool nesterov, float weight_decay, bool first_step,
                           const int32_t* skip) {
  if (skip && *skip) return;
  const bool use_momentum = momentum != 0.f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float b = use_momentum && !first_step ? buf[i] : 0.f;
    param[i] = sgd_update(param[i], grad[i], b, lr, momentum, dampening, weight_decay, weight_decay != 0.f, use_momentum,
                          nesterov, first_step);
    if (use_momentum) buf[i] = b;
  }
}

// param, exp_avg, exp_avg_sq, grad (n) flat, grid-stride; the scalars come from the host in double
__global__ void adam_kernel(float* param, float* exp_avg, float* exp_avg_sq, const float* grad, int64_t n, float beta1,
                            float beta2, float eps, float weight_decay, bool decoupled, float decay, float step_size,
                            float bias_correction2_sqrt, const int32_t* skip) {
  if (skip && *skip) return;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float m = exp_avg[i], v = exp_avg_sq[i];
    param[i] = adam_update(param[i], grad[i], m, v, beta1, beta2, eps, weight_decay, decoupled, weight_decay != 0.f, decay,
                           step_size, bias_correction2_sqrt);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
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
  const AdamScalars s = adam_scalars(double(lr), double(beta1), double(beta2), double(weight_decay), step);
  adam_kernel<<<grid_1d(n), kThreads>>>(param, exp_avg, exp_avg_sq, grad, n, beta1, beta2, eps, weight_decay,
                                        decoupled_weight_decay, float(s.decay), float(s.step_size),
                                        float(s.bias_correction2_sqrt), skip);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

}  // namespace fuseprop::cuda
