// The normalisation kernel table: per instruction set, ops/norm_simd.h compiled at that level (norm.cpp,
// norm_avx2.cpp, norm_avx512.cpp). float follows the CPU level; double always uses the baseline copy.
#pragma once

#include <cstdint>

#include "core/common.h"

namespace fuseprop {

// The four kernels of ops/norm.h, with their contracts.
template <typename T>
struct NormKernels {
  const char* level;
  void (*batch_norm_forward)(T*, T*, T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, bool, double,
                             double, Activation, T);
  void (*batch_norm_backward)(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*, int64_t,
                              int64_t, int64_t, bool, Activation, T);
  void (*layer_norm_forward)(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, double);
  void (*layer_norm_backward)(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t, int64_t);
};

#define FUSEPROP_NORM_KERNELS(NS, T) \
  { #NS, NS::batch_norm_forward<T>, NS::batch_norm_backward<T>, NS::layer_norm_forward<T>, NS::layer_norm_backward<T> }

#if defined(FUSEPROP_SIMD_X86)
extern const NormKernels<float> norm_kernels_avx2;
extern const NormKernels<float> norm_kernels_avx512;
#endif

}  // namespace fuseprop
