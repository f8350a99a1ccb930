// act_forward / act_derivative on the device: the formulas of csrc/activations.h (the
// cancellation-free GELU forms included) in float, written with CUDA's device math functions.
#pragma once

#include "core/common.h"

namespace fuseprop::cuda {

// u = sqrt(2/pi) (z + 0.044715 z^3), the argument of tanh in PyTorch's GELU approximation.
__device__ __forceinline__ float gelu_tanh_inner(float z) { return 0.79788456080286535588f * (z + 0.044715f * z * z * z); }

__device__ __forceinline__ float sigmoid(float z) {
  // Two branches so exp never overflows: for z < 0 use e^z / (1 + e^z).
  if (z >= 0.f) return 1.f / (1.f + expf(-z));
  const float e = expf(z);
  return e / (1.f + e);
}

// y = act(z). NaN propagates (relu(NaN) is NaN, as np.maximum).
template <Activation A>
__device__ __forceinline__ float act_forward(float z, float slope) {
  if constexpr (A == Activation::identity) {
    return z;
  } else if constexpr (A == Activation::relu) {
    return (z > 0.f || z != z) ? z : 0.f;
  } else if constexpr (A == Activation::leaky_relu) {
    return z > 0.f ? z : slope * z;
  } else if constexpr (A == Activation::sigmoid) {
    return sigmoid(z);
  } else if constexpr (A == Activation::tanh) {
    return tanhf(z);
  } else if constexpr (A == Activation::gelu) {
    return 0.5f * z * erfcf(-z * 0.70710678118654752440f);  // z Phi(z), Phi(z) = erfc(-z/sqrt2)/2
  } else {  // gelu_tanh: 0.5 z (1 + tanh u) = z sigmoid(2u)
    return z * sigmoid(2.f * gelu_tanh_inner(z));
  }
}

// d act(z) / dz from the input z and the output y = act(z); relu and leaky_relu take the left derivative at 0.
template <Activation A>
__device__ __forceinline__ float act_derivative(float z, float y, float slope) {
  if constexpr (A == Activation::identity) {
    return 1.f;
  } else if constexpr (A == Activation::relu) {
    return z > 0.f ? 1.f : 0.f;
  } else if constexpr (A == Activation::leaky_relu) {
    return z > 0.f ? 1.f : slope;
  } else if constexpr (A == Activation::sigmoid) {
    return y * (1.f - y);
  } else if constexpr (A == Activation::tanh) {
    return 1.f - y * y;
  } else if constexpr (A == Activation::gelu) {  // Phi(z) + z phi(z)
    const float cdf = 0.5f * erfcf(-z * 0.70710678118654752440f);
    const float pdf = expf(-0.5f * z * z) * 0.39894228040143267794f;
    return cdf + z * pdf;
  } else {  // gelu_tanh: s = sigmoid(2u); d/dz [z s] = s + 2 z s (1 - s) k (1 + 3 * 0.044715 z^2)
    const float s = sigmoid(2.f * gelu_tanh_inner(z));
    return s + 2.f * z * s * (1.f - s) * 0.79788456080286535588f * (1.f + float(3 * 0.044715) * z * z);
  }
}

}  // namespace fuseprop::cuda
