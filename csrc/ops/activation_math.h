// The activations and their derivatives, one scalar formula each, compiled by both backends: the CPU
// loops (ops/activations.cpp), the fused linear epilogues (ops/linear.cpp, cuda/ops/matmul_cuda.cu), the
// CUDA elementwise kernels and the fused MLP kernel. On the device std::exp and the others are CUDA's
// float functions (expf, ...). The forms avoid cancellation (GELU through erfc, the tanh GELU through a
// sigmoid), so float keeps full relative accuracy where the naive form would not.
#pragma once

#include <cmath>

#include "core/common.h"

namespace fuseprop {

// Turns a run-time Activation into a compile-time constant A for the body, so each loop is
// specialised (and vectorised) for one activation instead of switching per element.
#define FUSEPROP_DISPATCH_ACTIVATION(act, A, ...)                                              \
  switch (act) {                                                                               \
    case Activation::identity: { constexpr Activation A = Activation::identity; __VA_ARGS__; break; }     \
    case Activation::relu: { constexpr Activation A = Activation::relu; __VA_ARGS__; break; }             \
    case Activation::leaky_relu: { constexpr Activation A = Activation::leaky_relu; __VA_ARGS__; break; } \
    case Activation::sigmoid: { constexpr Activation A = Activation::sigmoid; __VA_ARGS__; break; }       \
    case Activation::tanh: { constexpr Activation A = Activation::tanh; __VA_ARGS__; break; }             \
    case Activation::gelu: { constexpr Activation A = Activation::gelu; __VA_ARGS__; break; }             \
    case Activation::gelu_tanh: { constexpr Activation A = Activation::gelu_tanh; __VA_ARGS__; break; }   \
  }

// u = sqrt(2/pi) (z + 0.044715 z^3), the argument of tanh in PyTorch's GELU approximation.
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T gelu_tanh_inner(T z) {
  return T(0.79788456080286535588) * (z + T(0.044715) * z * z * z);
}

// y = act(z). NaN propagates (relu(NaN) is NaN, as np.maximum).
template <Activation A, typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T act_forward(T z, T slope) {
  if constexpr (A == Activation::identity) {
    return z;
  } else if constexpr (A == Activation::relu) {
    return (z > T(0) || z != z) ? z : T(0);
  } else if constexpr (A == Activation::leaky_relu) {
    return z > T(0) ? z : slope * z;
  } else if constexpr (A == Activation::sigmoid) {
    // Two branches so exp never overflows: for z < 0 use e^z / (1 + e^z).
    if (z >= T(0)) return T(1) / (T(1) + std::exp(-z));
    const T e = std::exp(z);
    return e / (T(1) + e);
  } else if constexpr (A == Activation::tanh) {
    return std::tanh(z);
  } else if constexpr (A == Activation::gelu) {
    // z Phi(z) with Phi(z) = erfc(-z/sqrt2)/2: no cancellation in 1 + erf(.) for z < 0.
    return T(0.5) * z * std::erfc(-z * T(0.70710678118654752440));
  } else {  // gelu_tanh: 0.5 z (1 + tanh(u)), u = k (z + 0.044715 z^3), k = sqrt(2/pi), as PyTorch.
    // 0.5 (1 + tanh(u)) = sigmoid(2u), which keeps full relative accuracy where tanh(u) is near -1.
    return z * act_forward<Activation::sigmoid>(T(2) * gelu_tanh_inner(z), T(0));
  }
}

// d act(z) / dz, given the input z and the output y = act(z) (whichever is cheaper to use).
// relu and leaky_relu take the left derivative at 0, as PyTorch does.
template <Activation A, typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T act_derivative(T z, T y, T slope) {
  if constexpr (A == Activation::identity) {
    return T(1);
  } else if constexpr (A == Activation::relu) {
    return z > T(0) ? T(1) : T(0);
  } else if constexpr (A == Activation::leaky_relu) {
    return z > T(0) ? T(1) : slope;
  } else if constexpr (A == Activation::sigmoid) {
    return y * (T(1) - y);
  } else if constexpr (A == Activation::tanh) {
    return T(1) - y * y;
  } else if constexpr (A == Activation::gelu) {
    // Phi(z) + z phi(z)
    const T cdf = T(0.5) * std::erfc(-z * T(0.70710678118654752440));
    const T pdf = std::exp(T(-0.5) * z * z) * T(0.39894228040143267794);
    return cdf + z * pdf;
  } else {  // gelu_tanh: with s = sigmoid(2u) = (1 + tanh u)/2, 1 - tanh^2 u = 4 s (1 - s), so
    // d/dz [z s] = s + 2 z s (1 - s) k (1 + 3 * 0.044715 z^2)
    const T s = act_forward<Activation::sigmoid>(T(2) * gelu_tanh_inner(z), T(0));
    const T k = T(0.79788456080286535588);
    return s + T(2) * z * s * (T(1) - s) * k * (T(1) + T(3 * 0.044715) * z * z);
  }
}

// max(m, v) that lets NaN through (a NaN row stays NaN, as in NumPy): the row maximum of softmax and
// cross-entropy, on either backend.
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T max_nan(T m, T v) {
  return (v > m || v != v) ? v : m;
}

}  // namespace fuseprop
