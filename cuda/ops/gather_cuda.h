// A mini-batch gathered on the device from a dataset that lives there: plain C++ (no CUDA types).
#pragma once

#include <cstdint>

namespace fuseprop::cuda {

// src (N,D) row-major, index (B) device int64 in [0,N) (checked by the caller) -> dst (B,D): dst[b] = src[index[b]]
void gather_rows(float* dst, const float* src, const int64_t* index, int64_t B, int64_t D);
void gather_rows(int64_t* dst, const int64_t* src, const int64_t* index, int64_t B, int64_t D);

}  // namespace fuseprop::cuda
