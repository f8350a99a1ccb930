// Launch helpers shared by the .cu files (CUDA-only header).
#pragma once

#include <cstdint>

#include "cuda/core/memory.h"

namespace fuseprop::cuda {

constexpr int kThreads = 256;  // threads per block of the elementwise (grid-stride) kernels

// Blocks for a grid-stride loop over n elements: enough to fill the GPU, never more than needed.
inline unsigned grid_1d(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 4096 ? blocks : 4096);
}

// Checks the launch itself; errors raised while the kernel runs surface at the next synchronising call.
#define FUSEPROP_CUDA_CHECK_LAUNCH() FUSEPROP_CUDA_CHECK(cudaGetLastError())

}  // namespace fuseprop::cuda
