// The AVX-512F float vector (16 lanes): the one trait this instruction set's SIMD loops are written over
// (gemm/gemm_simd.h, core/fma_peak_simd.h). Only files compiled with -mavx512f -mfma include it.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace fuseprop {
namespace avx512 {

struct Avx512 {
  using reg = __m512;
  using mask = __mmask16;
  static constexpr int width = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  // lanes [0, count) active
  static mask tail_mask(int64_t count) {
    return count <= 0 ? mask(0) : (count >= 16 ? mask(0xFFFF) : static_cast<mask>((1u << count) - 1));
  }
  static reg maskload(const float* p, mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void maskstore(float* p, mask m, reg v) { _mm512_mask_storeu_ps(p, m, v); }
  static float sum(reg v) { return _mm512_reduce_add_ps(v); }
};

}  // namespace avx512
}  // namespace fuseprop
