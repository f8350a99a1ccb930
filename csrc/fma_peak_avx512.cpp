// The AVX-512F multiply-add loop. This file alone is compiled with -mavx512f -mfma; it runs only
// after cpu_features.cpp has found AVX-512F and OS support for the ZMM and mask registers.
#include <immintrin.h>

#define FUSEPROP_SIMD_NS avx512
#include "fma_peak.h"
#include "fma_peak_simd.h"

namespace fuseprop {
namespace avx512 {

struct Avx512Fma {
  using reg = __m512;
  static constexpr int width = 16;
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
};

// 16 chains (twice latency x pipes) + the two constants, of the 32 ZMM registers.
constexpr int kChains = 16;

}  // namespace avx512

extern const FmaLoop fma_loop_avx512 = {"avx512", 2 * avx512::kChains * avx512::Avx512Fma::width,
                                        avx512::fma_chains<avx512::Avx512Fma, avx512::kChains>};

}  // namespace fuseprop
