// 2-D max and average pooling on the device, forward and backward: plain C++ (no CUDA types), the twins
// of csrc/ops/pool.h with the same shapes (Pool2dShape) and the same semantics. Pointers are device memory.
// Every output and every input gradient is computed by one thread, adding in the CPU kernels' order, so
// the results are the same bits on every run (no atomics).
#pragma once

#include <cstdint>

#include "ops/pool.h"  // Pool2dShape

namespace fuseprop::cuda {

// x (N,C,H,W); y, indices (N,C,Ho,Wo), one thread per output: the window's max over its positions inside
// the input (padding is -inf) and its flat place ih*W + iw. The first max on ties in row-major window
// order; a NaN takes the window (the last NaN wins); a window of -inf points at its first position inside.
void max_pool2d_forward(float* y, int64_t* indices, const float* x, const Pool2dShape& s);

// dy, indices (N,C,Ho,Wo); dx (N,C,H,W) written: dx = 0, then dx[indices] += dy in output order, one thread
// per (n, c) plane (indices may point anywhere in their plane, so no thread of another plane touches it).
// Every index is in [0, H*W) (the bindings check). Only N, C, H, W, Ho, Wo of s are read.
void max_pool2d_backward(float* dx, const float* dy, const int64_t* indices, const Pool2dShape& s);

// x (N,C,H,W); y (N,C,Ho,Wo), one thread per output: the window's sum (row-major) / its divisor, kh*kw
// with count_include_pad, else the number of its positions inside the input.
void avg_pool2d_forward(float* y, const float* x, const Pool2dShape& s, bool count_include_pad);

// dy (N,C,Ho,Wo); dx (N,C,H,W) written, one thread per input element: the sum, over the windows that cover
// it in output order, of dy / divisor (the CPU's scatter, gathered).
void avg_pool2d_backward(float* dx, const float* dy, const Pool2dShape& s, bool count_include_pad);

}  // namespace fuseprop::cuda
