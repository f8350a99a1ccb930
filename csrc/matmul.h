// GEMM: C = alpha * op(A) * op(B) + beta * C, row-major with leading dimensions.
//
// The blocked driver follows the BLIS/GotoBLAS structure: op(B) is packed into KC x NR column
// strips, op(A) into MC x KC row strips of height MR, and a register-blocked MR x NR micro-kernel
// accumulates each tile over one KC slice. Packing makes every transpose case read contiguous
// memory in the inner loop, so one micro-kernel serves all four (trans_a, trans_b) combinations.
// An epilogue functor runs on each finished tile while it is still in cache: that is where the
// fused linear layer adds its bias and applies its activation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common.h"

namespace fuseprop {

// op(A) (M,K), op(B) (K,N), C (M,N); A is (M,K) or, with trans_a, (K,M); B is (K,N) or, with trans_b, (N,K).
// beta == 0 means C is written without being read (NaN in C does not leak through), as in BLAS.
template <typename T>
void matmul(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
            int64_t ldc, bool trans_a, bool trans_b, T alpha, T beta);

// The readable triple loop with the same contract: the reference for the blocked version.
template <typename T>
void matmul_reference(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, int64_t lda,
                      int64_t ldb, int64_t ldc, bool trans_a, bool trans_b, T alpha, T beta);

// ---- blocked driver (a template so fused callers can pass their own epilogue) ----

template <typename T>
struct GemmBlocking;
template <>
struct GemmBlocking<float> {
  static constexpr int MR = 4, NR = 16;
  static constexpr int64_t MC = 96, KC = 256, NC = 2048;
};
template <>
struct GemmBlocking<double> {
  static constexpr int MR = 4, NR = 8;
  static constexpr int64_t MC = 96, KC = 256, NC = 1024;
};

// Does nothing to a finished tile.
struct NoEpilogue {
  template <typename T>
  void operator()(T*, int64_t, int64_t, int64_t, int64_t, int64_t) const {}
};

// One growable buffer per thread and purpose: after the first call of a given size, no allocation.
template <typename T, int Slot>
T* gemm_pack_buffer(int64_t n) {
  thread_local std::vector<T> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// op(A) rows [i0, i0+mc) x cols [p0, p0+kc) -> Ap, strips of MR rows, zero-padded: Ap[s][p][r]
template <typename T, int MR>
void gemm_pack_a(T* Ap, const T* A, int64_t lda, bool trans_a, int64_t i0, int64_t mc, int64_t p0, int64_t kc) {
  for (int64_t s = 0; s < mc; s += MR) {
    const int64_t rows = mc - s < MR ? mc - s : MR;
    for (int64_t p = 0; p < kc; ++p) {
      for (int64_t r = 0; r < MR; ++r) {
        const int64_t i = i0 + s + r, k = p0 + p;
        *Ap++ = r < rows ? (trans_a ? A[k * lda + i] : A[i * lda + k]) : T(0);
      }
    }
  }
}

// op(B) rows [p0, p0+kc) x cols [j0, j0+nc) -> Bp, strips of NR columns, zero-padded: Bp[s][p][c]
template <typename T, int NR>
void gemm_pack_b(T* Bp, const T* B, int64_t ldb, bool trans_b, int64_t p0, int64_t kc, int64_t j0, int64_t nc) {
  for (int64_t s = 0; s < nc; s += NR) {
    const int64_t cols = nc - s < NR ? nc - s : NR;
    for (int64_t p = 0; p < kc; ++p) {
      for (int64_t c = 0; c < NR; ++c) {
        const int64_t j = j0 + s + c, k = p0 + p;
        *Bp++ = c < cols ? (trans_b ? B[j * ldb + k] : B[k * ldb + j]) : T(0);
      }
    }
  }
}

// acc (MR,NR) = sum over p < kc of Ap[p][:] outer Bp[p][:]; the j loop vectorises at any ISA.
template <typename T, int MR, int NR>
inline void gemm_micro_kernel(T (&acc)[MR][NR], int64_t kc, const T* Ap, const T* Bp) {
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) acc[r][c] = T(0);
  for (int64_t p = 0; p < kc; ++p) {
    const T* a = Ap + p * MR;
    const T* b = Bp + p * NR;
    for (int r = 0; r < MR; ++r) {
      const T ar = a[r];
      for (int c = 0; c < NR; ++c) acc[r][c] += ar * b[c];
    }
  }
}

// C tile (rows, cols) = alpha * acc + beta * C tile; beta == 0 never reads C.
template <typename T, int MR, int NR>
inline void gemm_write_tile(T* C, int64_t ldc, const T (&acc)[MR][NR], int64_t rows, int64_t cols, T alpha, T beta) {
  for (int64_t r = 0; r < rows; ++r) {
    T* c = C + r * ldc;
    if (beta == T(0)) {
      for (int64_t j = 0; j < cols; ++j) c[j] = alpha * acc[r][j];
    } else {
      for (int64_t j = 0; j < cols; ++j) c[j] = alpha * acc[r][j] + beta * c[j];
    }
  }
}

// The blocked GEMM; epilogue(C_tile, ldc, row0, col0, rows, cols) runs once per finished tile.
template <typename T, typename Epilogue>
void matmul_blocked(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                    int64_t ldc, bool trans_a, bool trans_b, T alpha, T beta, const Epilogue& epilogue) {
  using Blk = GemmBlocking<T>;
  constexpr int MR = Blk::MR, NR = Blk::NR;
  if (M == 0 || N == 0) return;
  if (K == 0) {  // empty sum: C = beta * C, then the epilogue
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    epilogue(C, ldc, int64_t(0), int64_t(0), M, N);
    return;
  }
  T* Bp = gemm_pack_buffer<T, 0>(Blk::KC * ceil_div(N < Blk::NC ? N : Blk::NC, NR) * NR);
  T* Ap = gemm_pack_buffer<T, 1>(Blk::KC * ceil_div(M < Blk::MC ? M : Blk::MC, MR) * MR);
  T acc[MR][NR];
  for (int64_t j0 = 0; j0 < N; j0 += Blk::NC) {
    const int64_t nc = N - j0 < Blk::NC ? N - j0 : Blk::NC;
    for (int64_t p0 = 0; p0 < K; p0 += Blk::KC) {
      const int64_t kc = K - p0 < Blk::KC ? K - p0 : Blk::KC;
      const T beta_here = p0 == 0 ? beta : T(1);  // later K slices add to what the first wrote
      const bool last_slice = p0 + kc == K;
      gemm_pack_b<T, NR>(Bp, B, ldb, trans_b, p0, kc, j0, nc);
      for (int64_t i0 = 0; i0 < M; i0 += Blk::MC) {
        const int64_t mc = M - i0 < Blk::MC ? M - i0 : Blk::MC;
        gemm_pack_a<T, MR>(Ap, A, lda, trans_a, i0, mc, p0, kc);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t cols = nc - jr < NR ? nc - jr : NR;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t rows = mc - ir < MR ? mc - ir : MR;
            gemm_micro_kernel<T, MR, NR>(acc, kc, Ap + ir * kc, Bp + jr * kc);
            T* Ctile = C + (i0 + ir) * ldc + (j0 + jr);
            gemm_write_tile<T, MR, NR>(Ctile, ldc, acc, rows, cols, alpha, beta_here);
            if (last_slice) epilogue(Ctile, ldc, i0 + ir, j0 + jr, rows, cols);
          }
        }
      }
    }
  }
}

}  // namespace fuseprop
