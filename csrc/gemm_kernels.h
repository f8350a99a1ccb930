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

template <typename T>
struct GemmKernels {
  const char* level;
  int mr, nr;
  TileFn<T> packed_tile;
  TileFn<T> direct_tile;
  int dm, dn;
  DotTileFn<T> dot_tile;
  int64_t mc, kc, nc;  // cache blocking of the packed path: A blocks mc x kc, B panels kc x nc
};

#if defined(FUSEPROP_SIMD_X86)
extern const GemmKernels<float> gemm_kernels_avx2;
extern const GemmKernels<float> gemm_kernels_avx512;
#endif

}  // namespace fuseprop
