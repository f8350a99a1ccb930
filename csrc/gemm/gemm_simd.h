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

// c (m, NV*width) = alpha * acc + beta * c for the first m <= ROWS rows; columns past the masks are
// left alone unless FullN. beta == 0 never reads c. The write-back of every micro-kernel.
template <class V, int ROWS, int NV, bool FullN>
__attribute__((always_inline)) inline void store_tile(const typename V::reg (&acc)[ROWS][NV],
                                                      const typename V::mask (&bmask)[NV], float* c, int64_t ldc,
                                                      float alpha, float beta, int64_t m) {
  constexpr int W = V::width;
  const typename V::reg va = V::set1(alpha), vb = V::set1(beta);
  FUSEPROP_UNROLL
  for (int i = 0; i < ROWS; ++i) {
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

// The direct micro-kernel: c (m,n) = alpha * sum_{p<k} a(i,p) b(p,j) + beta * c, row-major, for
// m <= MR, n <= NR = NV * width, with a(i,p) = a[i*rs_a + p*cs_a], b(p,j) = b[p*rs_b + j] (the
// caller's arrays, rows of B contiguous). beta == 0 never reads c. FullN (n == NR) takes the path
// without masks; fewer rows (m < MR) only skip their writes (their loads repeat row 0), since masked
// loads are slow on some CPUs. tile() picks the smallest MR that covers m.
template <class V, int MR, int NV, bool FullN>
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
  for (int i = 0; i < MR; ++i) row[i] = (i < m ? i : 0) * rs_a;
  const int64_t a_step = cs_a, b_step = rs_b;
  for (int64_t p = 0; p < k; ++p) {
    typename V::reg bv[NV];
    FUSEPROP_UNROLL
    for (int v = 0; v < NV; ++v) bv[v] = FullN ? V::load(b + v * W) : V::maskload(b + v * W, bmask[v]);
    FUSEPROP_UNROLL
    for (int i = 0; i < MR; ++i) {
      const typename V::reg ai = V::broadcast(a + row[i]);
      FUSEPROP_UNROLL
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(ai, bv[v], acc[i][v]);
    }
    a += a_step;
    b += b_step;
  }
  store_tile<V, MR, NV, FullN>(acc, bmask, c, ldc, alpha, beta, m);
}

// The packed micro-kernel: c (m,n) = alpha * sum_{p<k} a[p*MR + i] * b[p*NR + j] + beta * c, for
// m <= ROWS <= MR, n <= NR = NV * width. The strips are zero-padded to MR rows and NR columns, so every
// row and column is read at a constant offset (no per-row pointers to keep in general registers) and
// only the writes are cut to m x n. ROWS < MR serves the last, short strip of a matrix whose height is
// not a multiple of MR, without computing rows that are thrown away. k runs unrolled by 4; the A strip, which streams from L2, is prefetched a few
// k-steps ahead, and the C tile is prefetched before the loop so that its read-modify-write does not
// wait on memory. The sum over p runs in order, one FMA per product: the same bits as tile_body's.
template <class V, int MR, int ROWS, int NV, bool FullN>
inline void packed_body(int64_t k, const float* a, const float* b, float* c, int64_t ldc, float alpha, float beta,
                        int64_t m, int64_t n) {
  constexpr int W = V::width, NR = NV * W;
  constexpr int kUnroll = 4, kPrefetchA = 8 * MR;  // floats ahead: about 8 k-steps of A
  typename V::reg acc[ROWS][NV];
  FUSEPROP_UNROLL
  for (int i = 0; i < ROWS; ++i)
    FUSEPROP_UNROLL
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
  for (int64_t i = 0; i < m; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + NR - 1), _MM_HINT_T0);
  }
  int64_t p = 0;
  for (; p + kUnroll <= k; p += kUnroll) {
    FUSEPROP_UNROLL
    for (int u = 0; u < kUnroll; ++u) {
      typename V::reg bv[NV];
      FUSEPROP_UNROLL
      for (int v = 0; v < NV; ++v) bv[v] = V::load(b + u * NR + v * W);
      if (u * MR % 16 < MR) _mm_prefetch(reinterpret_cast<const char*>(a + kPrefetchA + u * MR), _MM_HINT_T0);
      FUSEPROP_UNROLL
      for (int i = 0; i < ROWS; ++i) {
        const typename V::reg ai = V::broadcast(a + u * MR + i);
        FUSEPROP_UNROLL
        for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(ai, bv[v], acc[i][v]);
      }
    }
    a += kUnroll * MR;
    b += kUnroll * NR;
  }
  for (; p < k; ++p) {
    typename V::reg bv[NV];
    FUSEPROP_UNROLL
    for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * W);
    FUSEPROP_UNROLL
    for (int i = 0; i < ROWS; ++i) {
      const typename V::reg ai = V::broadcast(a + i);
      FUSEPROP_UNROLL
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(ai, bv[v], acc[i][v]);
    }
    a += MR;
    b += NR;
  }
  typename V::mask bmask[NV];
  FUSEPROP_UNROLL
  for (int v = 0; v < NV; ++v) bmask[v] = V::tail_mask(n - v * W);
  store_tile<V, ROWS, NV, FullN>(acc, bmask, c, ldc, alpha, beta, m);
}

template <class V, int MR, int ROWS, int NV>
inline void packed_rows(int64_t k, const float* a, const float* b, float* c, int64_t ldc, float alpha, float beta,
                        int64_t m, int64_t n) {
  if (n == NV * V::width)
    packed_body<V, MR, ROWS, NV, true>(k, a, b, c, ldc, alpha, beta, m, n);
  else
    packed_body<V, MR, ROWS, NV, false>(k, a, b, c, ldc, alpha, beta, m, n);
}

// The TileFn of the packed path (the strides are implied by the packing: rs_a, cs_a and rs_b are unused).
// A short strip runs a third or two thirds of the rows (MR is a multiple of 3).
template <class V, int MR, int NV>
void packed_tile(int64_t k, const float* a, int64_t, int64_t, const float* b, int64_t, float* c, int64_t ldc,
                 float alpha, float beta, int64_t m, int64_t n) {
  static_assert(MR % 3 == 0, "short strips run MR/3 or 2MR/3 rows");
  if (m <= MR / 3) packed_rows<V, MR, MR / 3, NV>(k, a, b, c, ldc, alpha, beta, m, n);
  else if (m <= 2 * MR / 3) packed_rows<V, MR, 2 * MR / 3, NV>(k, a, b, c, ldc, alpha, beta, m, n);
  else packed_rows<V, MR, MR, NV>(k, a, b, c, ldc, alpha, beta, m, n);
}

template <class V, int MR, int NV>
inline void tile_rows(int64_t k, const float* a, int64_t rs_a, int64_t cs_a, const float* b, int64_t rs_b, float* c,
                      int64_t ldc, float alpha, float beta, int64_t m, int64_t n) {
  if (n == NV * V::width)
    tile_body<V, MR, NV, true>(k, a, rs_a, cs_a, b, rs_b, c, ldc, alpha, beta, m, n);
  else
    tile_body<V, MR, NV, false>(k, a, rs_a, cs_a, b, rs_b, c, ldc, alpha, beta, m, n);
}

// The TileFn of the direct path; a short tile runs a third or two thirds of the rows, as packed_tile.
template <class V, int MR, int NV>
void tile(int64_t k, const float* a, int64_t rs_a, int64_t cs_a, const float* b, int64_t rs_b, float* c, int64_t ldc,
          float alpha, float beta, int64_t m, int64_t n) {
  static_assert(MR % 3 == 0, "short tiles run MR/3 or 2MR/3 rows");
  if (m <= MR / 3) tile_rows<V, MR / 3, NV>(k, a, rs_a, cs_a, b, rs_b, c, ldc, alpha, beta, m, n);
  else if (m <= 2 * MR / 3) tile_rows<V, 2 * MR / 3, NV>(k, a, rs_a, cs_a, b, rs_b, c, ldc, alpha, beta, m, n);
  else tile_rows<V, MR, NV>(k, a, rs_a, cs_a, b, rs_b, c, ldc, alpha, beta, m, n);
}

// Packing the transposing cases with vector transposes. op(B) from B stored (N,K) and op(A) from A
// stored (M,K) both turn rows that run along k into strips that run across it: a transpose of each
// 8 x 8 (or 4 x 4) block, where the scalar loop would move one element per load and store.

// dst[c*ldd + r] = src[r*lds + c] for r, c < 8
inline void transpose_8x8(float* dst, int64_t ldd, const float* src, int64_t lds) {
  __m256 r[8], t[8], u[8];
  FUSEPROP_UNROLL
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  FUSEPROP_UNROLL
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  FUSEPROP_UNROLL
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  FUSEPROP_UNROLL
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
  }
}

// dst[c*ldd + r] = src[r*lds + c] for r, c < 4
inline void transpose_4x4(float* dst, int64_t ldd, const float* src, int64_t lds) {
  __m128 r0 = _mm_loadu_ps(src), r1 = _mm_loadu_ps(src + lds), r2 = _mm_loadu_ps(src + 2 * lds),
         r3 = _mm_loadu_ps(src + 3 * lds);
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  _mm_storeu_ps(dst, r0);
  _mm_storeu_ps(dst + ldd, r1);
  _mm_storeu_ps(dst + 2 * ldd, r2);
  _mm_storeu_ps(dst + 3 * ldd, r3);
}

// dst[p*ldd + r] = src[r*lds + p] for r < rows, p < k: rows that run along k become a k x rows block
// of a strip whose rows are ldd apart. 8-row and 4-row groups go through vector transposes.
inline void transpose_rows(float* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows, int64_t k) {
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) {
    int64_t p = 0;
    for (; p + 8 <= k; p += 8) transpose_8x8(dst + p * ldd + r, ldd, src + r * lds + p, lds);
    for (; p < k; ++p)
      for (int64_t i = 0; i < 8; ++i) dst[p * ldd + r + i] = src[(r + i) * lds + p];
  }
  for (; r + 4 <= rows; r += 4) {
    int64_t p = 0;
    for (; p + 4 <= k; p += 4) transpose_4x4(dst + p * ldd + r, ldd, src + r * lds + p, lds);
    for (; p < k; ++p)
      for (int64_t i = 0; i < 4; ++i) dst[p * ldd + r + i] = src[(r + i) * lds + p];
  }
  for (; r < rows; ++r)
    for (int64_t p = 0; p < k; ++p) dst[p * ldd + r] = src[r * lds + p];
}

// The PackAFn: op(A) rows [i0, i0+rows) x cols [p0, p0+kc) -> Ap[p*mr + r], zero-padded to mr rows.
inline void pack_a(float* ap, const float* a, int64_t lda, bool trans_a, int64_t i0, int64_t rows, int mr, int64_t p0,
                   int64_t kc) {
  if (trans_a) {  // op(A)(i, p) = A[p][i]: already along the strip's rows
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = a + (p0 + p) * lda + i0;
      for (int64_t r = 0; r < rows; ++r) ap[p * mr + r] = src[r];
    }
  } else {
    transpose_rows(ap, mr, a + i0 * lda + p0, lda, rows, kc);
  }
  for (int64_t p = 0; p < kc; ++p)
    for (int64_t r = rows; r < mr; ++r) ap[p * mr + r] = 0.0f;
}

// The PackBFn: op(B) rows [p0, p0+kc) x cols [j0, j0+cols) -> Bp[p*nr + c], zero-padded to nr columns.
inline void pack_b(float* bp, const float* b, int64_t ldb, bool trans_b, int64_t p0, int64_t kc, int64_t j0,
                   int64_t cols, int nr) {
  if (trans_b) {  // op(B)(p, j) = B[j][p]: B's rows run along k
    transpose_rows(bp, nr, b + j0 * ldb + p0, ldb, cols, kc);
  } else {
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = b + (p0 + p) * ldb + j0;
      for (int64_t c = 0; c < cols; ++c) bp[p * nr + c] = src[c];
    }
  }
  for (int64_t p = 0; p < kc; ++p)
    for (int64_t c = cols; c < nr; ++c) bp[p * nr + c] = 0.0f;
}

// c (m,n) = alpha * sum_{p<k} a[i*lda + p] * b[j*ldb + p] + beta * c for m <= DM, n <= DN:
// dot products of rows of A with rows of B (C = A B^T without packing), vectorised over p.
// Each (i, j) sums its lanes in a fixed order, so the result does not depend on anything but k.
template <class V, int DM, int DN>
inline void dot_body(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, float alpha,
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

// The DotTileFn; a short tile runs a third or two thirds of the rows, as packed_tile.
template <class V, int DM, int DN>
void dot_tile(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, float alpha,
              float beta, int64_t m, int64_t n) {
  static_assert(DM % 3 == 0, "short tiles run DM/3 or 2DM/3 rows");
  if (m <= DM / 3) dot_body<V, DM / 3, DN>(k, a, lda, b, ldb, c, ldc, alpha, beta, m, n);
  else if (m <= 2 * DM / 3) dot_body<V, 2 * DM / 3, DN>(k, a, lda, b, ldb, c, ldc, alpha, beta, m, n);
  else dot_body<V, DM, DN>(k, a, lda, b, ldb, c, ldc, alpha, beta, m, n);
}

}  // namespace FUSEPROP_SIMD_NS
}  // namespace fuseprop
