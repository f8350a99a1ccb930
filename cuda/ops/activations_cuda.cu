#include "cuda/ops/activations_cuda.h"

#include <cuda_runtime.h>

#include "ops/activation_math.h"
#include "cuda/core/launch.cuh"

namespace fuseprop::cuda {

namespace {

// x, y (n) flat, grid-stride: y = act(x)
template <Activation A>
__global__ void activation_forward_kernel(float* y, const float* x, int64_t n, float slope) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = act_forward<A>(x[i], slope);
}

// dy, x, y, dx (n) flat, grid-stride: dx = dy * act'(x)
template <Activation A>
__global__ void activation_backward_kernel(float* dx, const float* dy, const float* x, const float* y, int64_t n,
                                           float slope) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = dy[i] * act_derivative<A>(x[i], y[i], slope);
}

}  // namespace

void activation_forward(float* y, const float* x, int64_t n, Activation act, float slope) {
  if (n == 0) return;
  FUSEPROP_DISPATCH_ACTIVATION(act, A, activation_forward_kernel<A><<<grid_1d(n), kThreads>>>(y, x, n, slope));
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void activation_backward(float* dx, const float* dy, const float* x, const float* y, int64_t n, Activation act, float slope) {
  if (n == 0) return;
  FUSEPROP_DISPATCH_ACTIVATION(act, A, activation_backward_kernel<A><<<grid_1d(n), kThreads>>>(dx, dy, x, y, n, slope));
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

}  // namespace fuseprop::cuda
