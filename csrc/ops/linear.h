// Fused linear layer: y = act(x W^T + b), forward and backward side by side.
#pragma once

#include <cstdint>

#include "core/common.h"

namespace fuseprop {

// x (B,IN), w (OUT,IN) as PyTorch, b (OUT) or null; z, y (B,OUT).
// z = x w^T + b (kept for backward), y = act(z): bias and activation run on each GEMM tile as it is
// finished, so y is written in the same pass. z and y may be the same buffer when act is identity.
template <typename T>
void linear_forward(T* y, T* z, const T* x, const T* w, const T* b, int64_t B, int64_t IN, int64_t OUT,
                    Activation act, T slope);

// dy, z, y (B,OUT); x (B,IN); w (OUT,IN). Accumulates dw (OUT,IN) += dz^T x and db (OUT) += sum_rows dz;
// writes dx (B,IN) = dz w, where dz = dy * act'(z). dx and db may be null (not wanted).
// workspace holds dz: B*OUT elements, unused (may be null) when act is identity.
// db is summed in the same pass that forms dz.
// accumulate false writes dw and db instead of adding to them (the same result as zeroing them first).
template <typename T>
void linear_backward(T* dx, T* dw, T* db, T* workspace, const T* dy, const T* x, const T* w, const T* z,
                     const T* y, int64_t B, int64_t IN, int64_t OUT, Activation act, T slope, bool accumulate = true);

}  // namespace fuseprop
