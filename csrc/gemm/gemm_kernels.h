// The GEMM kernel table: per instruction set, the tile kernels the driver (matmul.h) calls and
// the blocking that suits them. The generic table is portable C++; the SIMD tables live in the
// files compiled with their own flags. Nothing here includes intrinsics.
#pragma once

#include <cstdint>

namespace fuseprop {

// c (m,n) = alpha * sum_{p<k} a(i,p) b(p,j) + beta * c for m <= mr, n <= nr, row-major with ldc.
// Packed form: a(i,p) = a[p*mr + i], b(p,j) = b[p*nr + j]; direct form: a(i,p) = a[i*rs_a + p*cs_a],
// b(p,j) = b[p*rs_b + j]. beta == 0 never reads c.
template <typename T>
using TileFn = void (*)(int64_t k, const T* a, int64_t rs_a, int64_t cs_a, const T* b, int64_t rs_b, T* c,
                        int64_t ldc, T alpha, T beta, int64_t m, int64_t n);
// c (m,n) = alpha * sum_{p<k} a[i*lda + p] b[j*ldb + p] + beta * c for m <= dm, n <= dn (C = A B^T, unpacked).
template <typename T>
using DotTileFn = void (*)(int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, T alpha,
                           T beta, int64_t m, int64_t n);

// Packing of the packed path (see gemm_pack_a_strip / gemm_pack_b_strip in matmul.h, the portable forms).
template <typename T>
using PackAFn = void (*)(T* ap, const T* a, int64_t lda, bool trans_a, int64_t i0, int64_t rows, int mr, int64_t p0,
                         int64_t kc);
template <typename T>
using PackBFn = void (*)(T* bp, const T* b, int64_t ldb, bool trans_b, int64_t p0, int64_t kc, int64_t j0, int64_t cols,
                         int nr);

template <typename T>
struct GemmKernels {
  const char* level;
  int mr, nr;
  TileFn<T> packed_tile;
  TileFn<T> direct_tile;
  int dm, dn;
  DotTileFn<T> dot_tile;
  PackAFn<T> pack_a;
  PackBFn<T> pack_b;
  // When x·Wᵀ runs as dot products (gemm_auto_path): outputs narrower than dot_narrow always; small problems
  // also when k >= dot_long_k or A is shorter than mr (dot_long_k 0: never, where the dot tile has no
  // vector horizontal sum to amortise and loses to the packed tiles).
  int dot_narrow;
  int64_t dot_long_k;
};

// The cache blocking of the packed path: op(A) blocks mc x kc, op(B) panels kc x nc (see gemm_blocking).
// whole_elements: the most elements of one op(B) panel over all of K packed at once;
// l2_elements: the elements one core's L2 holds (the unpacked paths' operands should fit in it).
struct GemmBlocking {
  int64_t mc, kc, nc, whole_elements, l2_elements;
};

#if defined(FUSEPROP_SIMD_X86)
extern const GemmKernels<float> gemm_kernels_avx2;
extern const GemmKernels<float> gemm_kernels_avx512;
#endif

}  // namespace fuseprop
