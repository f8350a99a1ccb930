// The float GEMM tile kernels, written once over a vector trait V (Avx2, Avx512) and compiled in
// one translation unit per instruction set (matmul_avx2.cpp, matmul_avx512.cpp) with that set's
// -m flags. Each unit defines FUSEPROP_SIMD_NS first, so every function here gets a distinct name
// per instruction set and the linker can never hand an AVX-512 copy of an inline function to
// generic code. For the same reason nothing here uses std:: templates.
#pragma once

#include <immintrin.h>

#include <cstdint>

#ifndef FUSEPROP_SIMD_NS
#error "define FUSEPROP_SIMD_NS before including gemm_simd.h"
#endif

// Loops over a register tile must unroll completely before the optimiser decides where the
// accumulators live: with constant indices they stay in registers instead of a stack array.
#define FUSEPROP_UNROLL _Pragma("GCC unroll 32")

namespace fuseprop {
namespace FUSEPROP_SIMD_NS {

// c (m,n) = alpha * sum_{p<k} a(i,p) b(p,j) + beta * c, row-major, for m <= MR, n <= NR = NV * width.
// Packed: a(i,p) = a[p*MR + i], b(p,j) = b[p*NR + j] (zero-padded strips from the packing routines).
// Direct: a(i,p) = a[i*rs_a + p*cs_a], b(p,j) = b[p*rs_b + j] (the caller's arrays, rows of B contiguous).
// beta == 0 never reads c. FullN (n == NR) takes the path without masks; fewer rows (m < MR) only
// skip their writes (their loads repeat row 0), since masked loads are slow on some CPUs.
template <class V, int MR, int NV, bool Packed, bool FullN>
inline void tile_body(int64_t k, const float* a, int64_t rs_a, int64_t cs_a, const float* b, int64_t rs_b, float* c,
                      int64_t ldc, float alpha, float beta, int64_t m, int64_t n) {
  constexpr int W = V::width;
  typename V::reg acc[MR][NV];
  FUSEPROP_UNROLL
  for (int i = 0; i < MR; ++i)
    FUSEPROP_UNROLL
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
  typename V::mask bmask[NV];
  FUSEPROP_UNROLL
  for (int v = 0; v < NV; ++v) bmask[v] = V::tail_mask(n - v * W);
  int64_t row[MR];  // offset of row i of A; rows past m repeat row 0 (valid memory, results discarded)
  FUSEPROP_UNROLL
  for (int i = 0; i < MR; ++i) row[i] = (i < m ? i : 0) * (Packed ? 1 : rs_a);
  const int64_t a_step = Packed ? MR : cs_a, b_step = Packed ? NV * W : rs_b;
  for (int64_t p = 0; p < k; ++p) {
    typename V::reg bv[NV];
    FUSEPROP_UNROLL
    for (int v = 0; v < NV; ++v) bv[v] = (Packed || FullN) ? V::load(b + v * W) : V::maskload(b + v * W, bmask[v]);
    FUSEPROP_UNROLL
    for (int i = 0; i < MR; ++i) {
      const typename V::reg ai = V::broadcast(a + row[i]);
      FUSEPROP_UNROLL
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(ai, bv[v], acc[i][v]);
    }
    a += a_step;
    b += b_step;
  }
  const typename V::reg va = V::set1(alpha), vb = V::set1(beta);
  FUSEPROP_UNROLL
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    FUSEPROP_UNROLL
    for (int v = 0; v < NV; ++v) {
      float* cp = c + i * ldc + v * W;
      typename V::reg r = V::mul(va, acc[i][v]);
      if (FullN) {
        if (beta != 0.0f) r = V::fma(vb, V::load(cp), r);
        V::store(cp, r);
      } else {
        if (beta != 0.0f) r = V::fma(vb, V::maskload(cp, bmask[v]), r);
        V::maskstore(cp, bmask[v], r);
      }
    }
  }
}

template <class V, int MR, int NV, bool Packed>
void tile(int64_t k, const float* a, int64_t rs_a, int64_t cs_a, const float* b, int64_t rs_b, float* c, int64_t ldc,
          float alpha, float beta, int64_t m, int64_t n) {
  if (n == NV * V::width)
    tile_body<V, MR, NV, Packed, true>(k, a, rs_a, cs_a, b, rs_b, c, ldc, alpha, beta, m, n);
  else
    tile_body<V, MR, NV, Packed, false>(k, a, rs_a, cs_a, b, rs_b, c, ldc, alpha, beta, m, n);
}

// c (m,n) = alpha * sum_{p<k} a[i*lda + p] * b[j*ldb + p] + beta * c for m <= DM, n <= DN:
// dot products of rows of A with rows of B (C = A B^T without packing), vectorised over p.
// Each (i, j) sums its lanes in a fixed order, so the result does not depend on anything but k.
template <class V, int DM, int DN>
void dot_tile(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, float alpha,
              float beta, int64_t m, int64_t n) {
  constexpr int W = V::width;
  typename V::reg acc[DM][DN];
  FUSEPROP_UNROLL
  for (int i = 0; i < DM; ++i)
    FUSEPROP_UNROLL
    for (int j = 0; j < DN; ++j) acc[i][j] = V::zero();
  const float* ar[DM];
  const float* br[DN];
  FUSEPROP_UNROLL
  for (int i = 0; i < DM; ++i) ar[i] = a + (i < m ? i : 0) * lda;
  FUSEPROP_UNROLL
  for (int j = 0; j < DN; ++j) br[j] = b + (j < n ? j : 0) * ldb;
  int64_t p = 0;
  for (; p + W <= k; p += W) {
    typename V::reg av[DM];
    FUSEPROP_UNROLL
    for (int i = 0; i < DM; ++i) av[i] = V::load(ar[i] + p);
    FUSEPROP_UNROLL
    for (int j = 0; j < DN; ++j) {
      const typename V::reg bj = V::load(br[j] + p);
      FUSEPROP_UNROLL
      for (int i = 0; i < DM; ++i) acc[i][j] = V::fma(av[i], bj, acc[i][j]);
    }
  }
  if (p < k) {  // the tail, with masked loads that read nothing past the row's end
    const typename V::mask tail = V::tail_mask(k - p);
    typename V::reg av[DM];
    FUSEPROP_UNROLL
    for (int i = 0; i < DM; ++i) av[i] = V::maskload(ar[i] + p, tail);
    FUSEPROP_UNROLL
    for (int j = 0; j < DN; ++j) {
      const typename V::reg bj = V::maskload(br[j] + p, tail);
      FUSEPROP_UNROLL
      for (int i = 0; i < DM; ++i) acc[i][j] = V::fma(av[i], bj, acc[i][j]);
    }
  }
  FUSEPROP_UNROLL
  for (int i = 0; i < DM && i < m; ++i) {
    FUSEPROP_UNROLL
    for (int j = 0; j < DN && j < n; ++j) {
      float& cij = c[i * ldc + j];
      const float s = alpha * V::sum(acc[i][j]);
      cij = beta == 0.0f ? s : s + beta * cij;
    }
  }
}

}  // namespace FUSEPROP_SIMD_NS
}  // namespace fuseprop
