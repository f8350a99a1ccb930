// Conventions shared by every kernel in csrc/.
//
// Layout: every matrix is row-major. A matrix of shape (R, C) with leading dimension ld keeps element
// (r, c) at p[r * ld + c], with ld >= C. Sizes and leading dimensions are int64_t.
// Argument order: outputs first, then inputs, then sizes, then options.
// Gradients are named d<name> (dx, dw, db, dy). Parameter gradients ACCUMULATE (+=) so micro-batches
// can be summed; activation gradients are WRITTEN (=).
// Kernels trust their contract: the bindings (csrc/python/) validate dtype, shape, layout and values
// once, at the boundary. Kernels never call into Python and never throw on data (NaN and Inf propagate
// as in NumPy).
#pragma once

#include <cstdint>

// FUSEPROP_HD marks a scalar formula that both backends compile (ops/*_math.h): host and device code
// under nvcc, plain C++ elsewhere. FUSEPROP_FORCEINLINE inlines it always: in a kernel, and in the
// CPU's per-ISA loops, where an out-of-line copy compiled with wide-vector flags must never exist for
// the linker to pick for the baseline code too (see ops/elementwise_simd.h).
#if defined(__CUDACC__)
#define FUSEPROP_HD __host__ __device__
#define FUSEPROP_FORCEINLINE __forceinline__
#else
#define FUSEPROP_HD
#if defined(__GNUC__) || defined(__clang__)
#define FUSEPROP_FORCEINLINE inline __attribute__((always_inline))
#else
#define FUSEPROP_FORCEINLINE inline
#endif
#endif

namespace fuseprop {

enum class Activation : int { identity = 0, relu, leaky_relu, sigmoid, tanh, gelu, gelu_tanh };

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace fuseprop
