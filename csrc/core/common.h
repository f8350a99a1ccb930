// Conventions shared by every kernel in csrc/.
//
// Layout: every matrix is row-major. A matrix of shape (R, C) with leading dimension ld keeps element
// (r, c) at p[r * ld + c], with ld >= C. Sizes and leading dimensions are int64_t.
// Argument order: outputs first, then inputs, then sizes, then options.
// Gradients are named d<name> (dx, dw, db, dy). Parameter gradients ACCUMULATE (+=) so micro-batches
// can be summed; activation gradients are WRITTEN (=).
// Kernels trust their contract: bindings.cpp validates dtype, shape, layout and values once, at the
// boundary. Kernels never call into Python and never throw on data (NaN and Inf propagate as in NumPy).
#pragma once

#include <cstdint>

namespace fuseprop {

enum class Activation : int { identity = 0, relu, leaky_relu, sigmoid, tanh, gelu, gelu_tanh };

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace fuseprop
