// The multiply-add throughput loop, written once over a vector trait V and compiled in one
// translation unit per instruction set (fma_peak_avx2.cpp, fma_peak_avx512.cpp with their -m flags;
// fma_peak.cpp at the baseline). As in gemm/gemm_simd.h, each unit defines FUSEPROP_SIMD_NS first, so
// every function here gets a distinct name per instruction set, and nothing here uses std:: templates.
//
// V provides: reg, width, set1(float), fma(a, b, c) = a*b + c, add(a, b), store(float*, reg).
#pragma once

#include <cstdint>

#ifndef FUSEPROP_SIMD_NS
#error "define FUSEPROP_SIMD_NS before including fma_peak_simd.h"
#endif

namespace fuseprop {
namespace FUSEPROP_SIMD_NS {

// Chains independent accumulators, each updated acc = acc * a + b once per iteration. A multiply-add
// must wait for the previous one on its chain (its latency, 4 cycles on current cores), so Chains must
// cover latency x pipes (4 x 2 = 8) for every pipe to stay busy. With a < 1 every chain converges to
// b / (1 - a) = 1: no overflow, no subnormals, whatever the iteration count. Returns the sum of every
// lane of every chain, so that the caller's use of it keeps all of the work.
template <class V, int Chains>
float fma_chains(int64_t iterations) {
  typename V::reg acc[Chains];
  _Pragma("GCC unroll 32") for (int c = 0; c < Chains; ++c) acc[c] = V::set1(1.0f + 0.0625f * c);
  const typename V::reg a = V::set1(0.999f), b = V::set1(0.001f);
  for (int64_t i = 0; i < iterations; ++i) {
    _Pragma("GCC unroll 32") for (int c = 0; c < Chains; ++c) acc[c] = V::fma(acc[c], a, b);
  }
  _Pragma("GCC unroll 32") for (int c = 1; c < Chains; ++c) acc[0] = V::add(acc[0], acc[c]);
  float lanes[V::width];
  V::store(lanes, acc[0]);
  float sum = 0.0f;
  for (int l = 0; l < V::width; ++l) sum += lanes[l];
  return sum;
}

}  // namespace FUSEPROP_SIMD_NS
}  // namespace fuseprop
