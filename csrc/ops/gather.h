// Rows of a dataset gathered into one contiguous mini-batch: plain C++, no Python.
#pragma once

#include <cstdint>

namespace fuseprop {

// src (N,D) row-major, index (B) in [0,N) (checked by the caller) -> dst (B,D) row-major: dst[b] = src[index[b]].
// T is float, double or int64_t (class labels: D = 1).
template <typename T>
void gather_rows(T* dst, const T* src, const int64_t* index, int64_t B, int64_t D);

}  // namespace fuseprop
