#include "cuda/plan/step_checks.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>

#include "cuda/core/launch.cuh"
#include "cuda/core/warp.cuh"

namespace fuseprop::cuda {

namespace {

__global__ void reset_flags_kernel(StepFlags* f) {
  f->loss_total = 0;
  f->correct = 0;
  f->grad_norm = 0;
  f->skip = 0;
  f->bad_grad = INT_MAX;
  f->bad_param = INT_MAX;
  f->bad_label = ~0ull;
}

__global__ void check_labels_kernel(StepFlags* f, int64_t* clean, const int64_t* labels, int64_t B, int64_t C) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t y = labels[i];
    clean[i] = (y < 0 || y >= C) ? 0 : y;
    if (y < 0 || y >= C) {
      atomicMin(reinterpret_cast<unsigned long long*>(&f->bad_label), static_cast<unsigned long long>(i));
      atomicExch(&f->skip, 1);
    }
  }
}

__global__ void flag_nonfinite_loss_kernel(StepFlags* f) {
  if (!isfinite(f->loss_total)) f->skip = 1;
}

// x (n) grid-stride; any thread that meets a non-finite element raises the flag (integer atomics:
// the result does not depend on which thread gets there first).
__global__ void flag_nonfinite_kernel(StepFlags* f, const float* x, int64_t n, int32_t slot, bool as_param) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (!isfinite(x[i])) {
      if (as_param) {
        atomicMin(&f->bad_param, slot);
      } else {
        atomicMin(&f->bad_grad, slot);
        atomicExch(&f->skip, 1);
      }
      return;
    }
  }
}

// x (n) -> partial[blockIdx.x]: thread t of block b sums x[b*kThreads + t + k*grid*kThreads], k = 0, 1, ...
__global__ void sum_squares_blocks_kernel(double* partial, const float* x, int64_t n) {
  __shared__ double s[kThreads];
  double acc = 0;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads)
    acc += double(x[i]) * double(x[i]);
  s[threadIdx.x] = acc;
  __syncthreads();
  block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// x (n) -> *out, one block: thread t sums x[t], x[t + kThreads], ... in order, then a fixed tree
__global__ void sum_fixed_order_kernel(double* out, const double* x, int64_t n) {
  __shared__ double s[kThreads];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) acc += x[i];
  s[threadIdx.x] = acc;
  __syncthreads();
  block_sum(s);
  if (threadIdx.x == 0) *out = s[0];
}

__global__ void write_grad_norm_kernel(StepFlags* f, const double* parts, int n_parts) {
  double total = 0;
  for (int i = 0; i < n_parts; ++i) total += parts[i];  // slot order
  f->grad_norm = sqrt(total);
}

__global__ void clip_kernel(float* x, int64_t n, const StepFlags* f, double max_norm) {
  if (f->skip) return;
  const double coef = max_norm / (f->grad_norm + 1e-6);
  if (!(coef < 1)) return;
  const float c = float(coef);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] *= c;
}

}  // namespace

void reset_flags(StepFlags* flags) {
  reset_flags_kernel<<<1, 1>>>(flags);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void check_labels(StepFlags* flags, int64_t* clean, const int64_t* labels, int64_t B, int64_t C) {
  if (B == 0) return;
  check_labels_kernel<<<grid_1d(B), kThreads>>>(flags, clean, labels, B, C);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void flag_nonfinite_loss(StepFlags* flags) {
  flag_nonfinite_loss_kernel<<<1, 1>>>(flags);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void flag_nonfinite(StepFlags* flags, const float* x, int64_t n, int32_t slot, bool as_param) {
  if (n == 0) return;
  flag_nonfinite_kernel<<<grid_1d(n), kThreads>>>(flags, x, n, slot, as_param);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void sum_squares(double* out, double* partial, const float* x, int64_t n) {
  // The grid depends on n only, so the summation order (and the bits) are the same on every run.
  const int64_t blocks = n == 0 ? 1 : std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxPartials);
  sum_squares_blocks_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(partial, x, n);
  FUSEPROP_CUDA_CHECK_LAUNCH();
  sum_fixed_order(out, partial, blocks);
}

void sum_fixed_order(double* out, const double* x, int64_t n) {
  sum_fixed_order_kernel<<<1, kThreads>>>(out, x, n);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void write_grad_norm(StepFlags* flags, const double* parts, int n_parts) {
  write_grad_norm_kernel<<<1, 1>>>(flags, parts, n_parts);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void clip_by_norm(float* x, int64_t n, const StepFlags* flags, double max_norm) {
  if (n == 0) return;
  clip_kernel<<<grid_1d(n), kThreads>>>(x, n, flags, max_norm);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

}  // namespace fuseprop::cuda
