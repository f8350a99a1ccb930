#include "losses.h"

#include <cuda_runtime.h>

#include "launch.cuh"

namespace fuseprop::cuda {

namespace {

constexpr int kRowsPerBlock = 8;  // one warp per row

__device__ __forceinline__ float warp_max(float v) {  // NaN wins, as in the CPU kernel
  for (int o = 16; o > 0; o /= 2) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = (w > v || w != w) ? w : v;
  }
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {  // the same butterfly order every time
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// logits, dlogits (B,C) row-major, one warp per row; labels, row_loss (B)
__global__ void cross_entropy_row_kernel(float* dlogits, double* row_loss, const float* logits, const int64_t* labels,
                                         int64_t B, int64_t C, float label_smoothing, float grad_scale) {
  const int lane = threadIdx.x % 32;
  const int64_t b = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / 32;
  if (b >= B) return;  // a whole warp leaves together, so the shuffles below see full warps
  const float* x = logits + b * C;
  float m = x[0];
  for (int64_t c = lane; c < C; c += 32) m = (x[c] > m || x[c] != x[c]) ? x[c] : m;
  m = warp_max(m);
  float sum = 0.f, sum_x = 0.f;
  for (int64_t c = lane; c < C; c += 32) {
    sum += expf(x[c] - m);
    sum_x += x[c];
  }
  sum = warp_sum(sum);
  sum_x = warp_sum(sum_x);
  const float lse = m + logf(sum);
  const int64_t y = labels[b];
  const float off = label_smoothing / float(C);  // q_c for c != label
  const float on = 1.f - label_smoothing + off;
  if (lane == 0) {
    // -sum_c q_c (x_c - lse) = lse - (1-eps) x_y - (eps/C) sum_c x_c; the last term skipped at eps = 0,
    // where 0 * (-inf) would be NaN
    double loss = double(lse) - double(1.f - label_smoothing) * double(x[y]);
    if (label_smoothing != 0.f) loss -= double(off) * double(sum_x);
    row_loss[b] = loss;
  }
  float* d = dlogits + b * C;
  for (int64_t c = lane; c < C; c += 32) d[c] = (expf(x[c] - lse) - (c == y ? on : off)) * grad_scale;
}

// x (n) -> total (1): one block; thread t sums x[t], x[t + 256], ... in order, then a fixed tree.
__global__ void sum_fixed_order_kernel(double* total, const double* x, int64_t n) {
  __shared__ double partial[kThreads];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) s += x[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *total = partial[0];
}

}  // namespace

void cross_entropy_forward_backward(double* total, float* dlogits, double* row_loss, const float* logits,
                                    const int64_t* labels, int64_t B, int64_t C, float label_smoothing, float grad_scale) {
  if (B > 0) {
    const int64_t blocks = (B + kRowsPerBlock - 1) / kRowsPerBlock;
    cross_entropy_row_kernel<<<static_cast<unsigned>(blocks), 32 * kRowsPerBlock>>>(dlogits, row_loss, logits, labels, B, C,
                                                                                    label_smoothing, grad_scale);
    FUSEPROP_CUDA_CHECK_LAUNCH();
  }
  sum_fixed_order_kernel<<<1, kThreads>>>(total, row_loss, B);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

}  // namespace fuseprop::cuda
