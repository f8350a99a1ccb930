// The AVX2+FMA float vector (8 lanes): the one trait this instruction set's SIMD loops are written over
// (gemm/gemm_simd.h, core/fma_peak_simd.h). Only files compiled with -mavx2 -mfma include it.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace fuseprop {
namespace avx2 {

struct Avx2 {
  using reg = __m256;
  using mask = __m256i;
  static constexpr int width = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  // lanes [0, count) active
  static mask tail_mask(int64_t count) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int c = count < 0 ? 0 : (count > 8 ? 8 : static_cast<int>(count));
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), lanes);
  }
  static reg maskload(const float* p, mask m) { return _mm256_maskload_ps(p, m); }
  static void maskstore(float* p, mask m, reg v) { _mm256_maskstore_ps(p, m, v); }
  // ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)): a fixed order
  static float sum(reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

}  // namespace avx2
}  // namespace fuseprop
