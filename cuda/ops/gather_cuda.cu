#include "cuda/ops/gather_cuda.h"

#include <cuda_runtime.h>

#include "cuda/core/launch.cuh"

namespace fuseprop::cuda {

namespace {

// dst (B,D) = src[index] (N,D), grid-stride over B*D; consecutive threads copy consecutive columns.
template <typename T>
__global__ void gather_rows_kernel(T* dst, const T* src, const int64_t* index, int64_t B, int64_t D) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * D; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / D, d = i % D;
    dst[i] = src[index[b] * D + d];
  }
}

template <typename T>
void launch(T* dst, const T* src, const int64_t* index, int64_t B, int64_t D) {
  if (B == 0 || D == 0) return;
  gather_rows_kernel<T><<<grid_1d(B * D), kThreads>>>(dst, src, index, B, D);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

}  // namespace

void gather_rows(float* dst, const float* src, const int64_t* index, int64_t B, int64_t D) { launch(dst, src, index, B, D); }
void gather_rows(int64_t* dst, const int64_t* src, const int64_t* index, int64_t B, int64_t D) {
  launch(dst, src, index, B, D);
}

}  // namespace fuseprop::cuda
