// Warp- and block-level reductions and numpy's argmax order, shared by the kernels that reduce rows (CUDA-only header).
// The butterflies run in the same order every time, so their results are the same bits on every run.
#pragma once

#include <cstdint>

#include "cuda/core/launch.cuh"  // kThreads
#include "ops/activation_math.h"  // max_nan

namespace fuseprop::cuda {

__device__ __forceinline__ float warp_max(float v) {  // NaN wins, as in the CPU kernel
  for (int o = 16; o > 0; o /= 2) {
    v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
  }
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Whether (v, i) comes before (w, j) in numpy's argmax: a NaN beats any number, a larger number beats a
// smaller one, and among equals (or NaNs) the lower index wins.
__device__ __forceinline__ bool argmax_before(float v, int64_t i, float w, int64_t j) {
  const bool nan_v = v != v, nan_w = w != w;
  if (nan_v != nan_w) return nan_v;
  if (!nan_v && v != w) return v > w;
  return i < j;
}

// Fixed tree over a block's kThreads values in shared memory s (written, then a __syncthreads, by the
// caller); the sum lands in s[0]. Every thread of the block must call it.
__device__ __forceinline__ void block_sum(double* s) {
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) s[threadIdx.x] += s[threadIdx.x + half];
    __syncthreads();
  }
}

}  // namespace fuseprop::cuda
