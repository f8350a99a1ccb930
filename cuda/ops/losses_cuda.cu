#include "cuda/ops/losses_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/core/launch.cuh"
#include "cuda/plan/step_checks.h"  // sum_fixed_order
#include "cuda/core/warp.cuh"
#include "ops/loss_math.h"

namespace fuseprop::cuda {

namespace {

constexpr int kRowsPerBlock = 8;  // one warp per row

// logits, dlogits (B,C) row-major, one warp per row; labels, row_loss (B)
__global__ void cross_entropy_row_kernel(float* dlogits, double* row_loss, const float* logits, const int64_t* labels,
                                         int64_t B, int64_t C, float label_smoothing, float grad_scale) {
  const int lane = threadIdx.x % 32;
  const int64_t b = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / 32;
  if (b >= B) return;  // a whole warp leaves together, so the shuffles below see full warps
  const float* x = logits + b * C;
  float m = x[0];
  for (int64_t c = lane; c < C; c += 32) m = max_nan(m, x[c]);
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
  float* d = dlogits + b * C;
  if (y < 0 || y >= C) {  // the caller reports it; never read past the row
    if (lane == 0) row_loss[b] = NAN;
    for (int64_t c = lane; c < C; c += 32) d[c] = 0.f;
    return;
  }
  const SmoothedTarget<float> q = smoothed_target(label_smoothing, C);
  if (lane == 0) {
    double loss = -0.0;  // the identity of +: the first term lands unchanged
    ce_row_loss_add(loss, lse, x[y], sum_x, label_smoothing, q);
    row_loss[b] = loss;
  }
  for (int64_t c = lane; c < C; c += 32) d[c] = ce_grad(expf(x[c] - lse), c == y, q, grad_scale);
}

// (v, i) becomes the row's argmax candidate: at == C means none yet, i == C is no candidate.
__device__ __forceinline__ bool better_candidate(float v, int64_t i, float best, int64_t at, int64_t C) {
  return i != C && (at == C || argmax_before(v, i, best, at));
}

// logits (B,C), one warp per row: the row counts when its argmax is its label.
__global__ void count_correct_kernel(unsigned long long* correct, const float* logits, const int64_t* labels, int64_t B,
                                     int64_t C) {
  const int lane = threadIdx.x % 32;
  const int64_t b = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / 32;
  if (b >= B) return;  // a whole warp leaves together
  const float* x = logits + b * C;
  float best = 0.f;
  int64_t at = C;
  for (int64_t c = lane; c < C; c += 32)
    if (better_candidate(x[c], c, best, at, C)) best = x[c], at = c;
  for (int o = 16; o > 0; o /= 2) {
    const float v = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t i = __shfl_xor_sync(0xffffffffu, at, o);
    if (better_candidate(v, i, best, at, C)) best = v, at = i;
  }
  if (lane == 0 && at == labels[b]) atomicAdd(correct, 1ull);  // integer adds: any order gives the same count
}

// logits, target (n): each thread counts its elements' binary_hit; one integer atomic add per thread.
__global__ void count_binary_hits_kernel(unsigned long long* hits, const float* logits, const float* target, int64_t n) {
  unsigned long long mine = 0;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads)
    mine += binary_hit(logits[i], target[i]);
  if (mine) atomicAdd(hits, mine);  // integer adds: any order gives the same count
}

// Elementwise losses: per-block partial sums in a fixed order, then one block adds them.
enum class Elementwise { mse, bce_with_logits };

template <Elementwise L>
__global__ void elementwise_loss_kernel(double* partial, float* grad, const float* x, const float* t, int64_t n,
                                        float grad_scale) {
  __shared__ double s[kThreads];
  double acc = 0;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads) {
    if (L == Elementwise::mse) {
      const float d = x[i] - t[i];
      acc += mse_value(d);
      grad[i] = mse_grad(d, grad_scale);
    } else {
      acc += double(bce_with_logits_value(x[i], t[i]));
      grad[i] = bce_with_logits_grad(x[i], t[i], grad_scale);
    }
  }
  s[threadIdx.x] = acc;
  __syncthreads();
  block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

template <Elementwise L>
void elementwise_loss(double* total, float* grad, double* partial, const float* x, const float* t, int64_t n,
                      float grad_scale) {
  const int64_t blocks = n == 0 ? 1 : std::min<int64_t>((n + kThreads - 1) / kThreads, kLossPartials);
  elementwise_loss_kernel<L><<<static_cast<unsigned>(blocks), kThreads>>>(partial, grad, x, t, n, grad_scale);
  FUSEPROP_CUDA_CHECK_LAUNCH();
  sum_fixed_order(total, partial, blocks);
}

}  // namespace

void count_correct(int64_t* correct, const float* logits, const int64_t* labels, int64_t B, int64_t C) {
  if (B == 0 || C == 0) return;
  const int64_t blocks = (B + kRowsPerBlock - 1) / kRowsPerBlock;
  count_correct_kernel<<<static_cast<unsigned>(blocks), 32 * kRowsPerBlock>>>(
      reinterpret_cast<unsigned long long*>(correct), logits, labels, B, C);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void count_binary_hits(int64_t* hits, const float* logits, const float* target, int64_t n) {
  if (n == 0) return;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, kLossPartials);
  count_binary_hits_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(reinterpret_cast<unsigned long long*>(hits),
                                                                        logits, target, n);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void mse_forward_backward(double* total, float* dpred, double* partial, const float* pred, const float* target,
                          int64_t n, float grad_scale) {
  elementwise_loss<Elementwise::mse>(total, dpred, partial, pred, target, n, grad_scale);
}

void bce_with_logits_forward_backward(double* total, float* dlogits, double* partial, const float* logits,
                                      const float* target, int64_t n, float grad_scale) {
  elementwise_loss<Elementwise::bce_with_logits>(total, dlogits, partial, logits, target, n, grad_scale);
}

void cross_entropy_forward_backward(double* total, float* dlogits, double* row_loss, const float* logits,
                                    const int64_t* labels, int64_t B, int64_t C, float label_smoothing, float grad_scale) {
  if (B > 0) {
    const int64_t blocks = (B + kRowsPerBlock - 1) / kRowsPerBlock;
    cross_entropy_row_kernel<<<static_cast<unsigned>(blocks), 32 * kRowsPerBlock>>>(dlogits, row_loss, logits, labels, B, C,
                                                                                    label_smoothing, grad_scale);
    FUSEPROP_CUDA_CHECK_LAUNCH();
  }
  sum_fixed_order(total, row_loss, B);
}

}  // namespace fuseprop::cuda
