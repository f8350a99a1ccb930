// The AVX2+FMA multiply-add loop. This file alone is compiled with -mavx2 -mfma; it runs only after
// cpu_features.cpp has found AVX2, FMA and OS support for the YMM registers.
#include <immintrin.h>

#define FUSEPROP_SIMD_NS avx2
#include "fma_peak.h"
#include "fma_peak_simd.h"

namespace fuseprop {
namespace avx2 {

struct Avx2Fma {
  using reg = __m256;
  static constexpr int width = 8;
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
};

// 12 chains + the two constants fit the 16 YMM registers, with no spill to the stack.
constexpr int kChains = 12;

}  // namespace avx2

extern const FmaLoop fma_loop_avx2 = {"avx2", 2 * avx2::kChains * avx2::Avx2Fma::width,
                                      avx2::fma_chains<avx2::Avx2Fma, avx2::kChains>};

}  // namespace fuseprop
