// Elementwise activations on the device, forward and backward: plain C++ (no CUDA types).
// Pointers are device memory; n may be 0.
#pragma once

#include <cstdint>

#include "core/common.h"

namespace fuseprop::cuda {

// x, y (n) elementwise: y = act(x)
void activation_forward(float* y, const float* x, int64_t n, Activation act, float slope);
// dy, x, y, dx (n) elementwise: dx = dy * act'(x)   (y = act(x) from the forward)
void activation_backward(float* dx, const float* dy, const float* x, const float* y, int64_t n, Activation act, float slope);

}  // namespace fuseprop::cuda
