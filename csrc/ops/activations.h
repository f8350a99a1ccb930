// Elementwise activations and row-wise softmax / log-softmax, forward and backward side by side.
#pragma once

#include <cstdint>

#include "core/common.h"
#include "ops/activation_math.h"

namespace fuseprop {

// The scalar formulas (act_forward, act_derivative) and FUSEPROP_DISPATCH_ACTIVATION are
// ops/activation_math.h's, shared with the CUDA kernels.

// x, y (n) elementwise: y = act(x)
template <typename T>
void activation_forward(T* y, const T* x, int64_t n, Activation act, T slope);
// dy, x, y, dx (n) elementwise: dx = dy * act'(x)   (y = act(x) from the forward)
template <typename T>
void activation_backward(T* dx, const T* dy, const T* x, const T* y, int64_t n, Activation act, T slope);

// x, y (B, C) row-major, softmax over each row
template <typename T>
void softmax_forward(T* y, const T* x, int64_t B, int64_t C);
// dy, y, dx (B, C): dx = y * (dy - sum_c dy*y)
template <typename T>
void softmax_backward(T* dx, const T* dy, const T* y, int64_t B, int64_t C);

// x, y (B, C): y = x - logsumexp(x) per row
template <typename T>
void log_softmax_forward(T* y, const T* x, int64_t B, int64_t C);
// dy, y, dx (B, C): dx = dy - exp(y) * sum_c dy
template <typename T>
void log_softmax_backward(T* dx, const T* dy, const T* y, int64_t B, int64_t C);

}  // namespace fuseprop
