// The AVX-512F float GEMM kernels. This file alone is compiled with -mavx512f -mfma; its kernels
// run only after cpu_features.cpp has found AVX-512F and OS support for the ZMM and mask registers.
// The tile logic is gemm_simd.h's, shared with (and tested through) the AVX2 kernels.
#define FUSEPROP_SIMD_NS avx512
#include "gemm_simd.h"
#include "gemm_kernels.h"

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
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  // lanes [0, count) active
  static mask tail_mask(int64_t count) {
    return count <= 0 ? mask(0) : (count >= 16 ? mask(0xFFFF) : static_cast<mask>((1u << count) - 1));
  }
  static reg maskload(const float* p, mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void maskstore(float* p, mask m, reg v) { _mm512_mask_storeu_ps(p, m, v); }
  static float sum(reg v) { return _mm512_reduce_add_ps(v); }
};

// 12 x 32 tile: 24 accumulators + 2 B vectors + 1 broadcast of the 32 ZMM registers.
constexpr int MR = 12, NV = 2;
// 6 x 4 dot tile: 24 accumulators + 6 A vectors + 1 B vector.
constexpr int DM = 6, DN = 4;

}  // namespace avx512

extern const GemmKernels<float> gemm_kernels_avx512 = {
    "avx512", avx512::MR, avx512::NV * avx512::Avx512::width,
    avx512::packed_tile<avx512::Avx512, avx512::MR, avx512::NV>,
    avx512::tile<avx512::Avx512, avx512::MR, avx512::NV>,
    avx512::DM, avx512::DN, avx512::dot_tile<avx512::Avx512, avx512::DM, avx512::DN>,
    avx512::pack_a, avx512::pack_b};

}  // namespace fuseprop
