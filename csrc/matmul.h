// GEMM: C = alpha * op(A) * op(B) + beta * C, row-major with leading dimensions.
//
// One driver, three paths, the same tile kernels underneath (gemm_kernels.h, chosen per CPU):
//  - packed (BLIS/GotoBLAS): op(B) is packed into kc x nr strips, op(A) into mc x kc blocks of
//    mr-row strips, and an mr x nr register tile accumulates over each kc slice. Packing makes
//    every transpose case contiguous and keeps the blocks in cache; threads share the packed
//    panels and split the tiles.
//  - direct: no packing, for small problems whose op(B) rows are contiguous (NN and TN): the tile
//    kernel reads the caller's arrays, which still fit in cache.
//  - dot: no packing, for C = A B^T with A and B row-major (the linear layer's x W^T) when the
//    output is small: each tile is a block of dot products along the contiguous k.
// Determinism: k is never split across threads and each tile sums in a fixed order, so results
// are identical whatever the thread count (they may differ between instruction sets: FMA rounds once).
// An epilogue functor runs on each finished tile while it is still in cache: that is where the
// fused linear layer adds its bias and applies its activation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common.h"
#include "gemm_kernels.h"
#include "threads.h"

namespace fuseprop {

// op(A) (M,K), op(B) (K,N), C (M,N); A is (M,K) or, with trans_a, (K,M); B is (K,N) or, with trans_b, (N,K).
// beta == 0 means C is written without being read (NaN in C does not leak through), as in BLAS.
template <typename T>
void matmul(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
            int64_t ldc, bool trans_a, bool trans_b, T alpha, T beta);

// The readable triple loop with the same contract: the reference for the fast paths.
template <typename T>
void matmul_reference(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, int64_t lda,
                      int64_t ldb, int64_t ldc, bool trans_a, bool trans_b, T alpha, T beta);

// The kernels in use: float follows the CPU level; double always uses the portable kernels.
const GemmKernels<float>& gemm_kernels(float);
const GemmKernels<double>& gemm_kernels(double);

// Which path the driver takes: auto (by shape), or forced, for tests and benchmarks.
enum class GemmPath : int { automatic = 0, packed, direct, dot };
GemmPath gemm_path();
void set_gemm_path(GemmPath path);

// Does nothing to a finished tile.
struct NoEpilogue {
  template <typename T>
  void operator()(T*, int64_t, int64_t, int64_t, int64_t, int64_t) const {}
};

// One growable buffer per calling thread and purpose: after the first call of a given size, no allocation.
template <typename T, int Slot>
T* gemm_buffer(int64_t n) {
  thread_local std::vector<T> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// op(A) rows [i0, i0+rows) x cols [p0, p0+kc) -> one strip of MR rows, zero-padded: Ap[p][r]
template <typename T>
void gemm_pack_a_strip(T* Ap, const T* A, int64_t lda, bool trans_a, int64_t i0, int64_t rows, int mr, int64_t p0,
                       int64_t kc) {
  for (int64_t p = 0; p < kc; ++p, Ap += mr) {
    int64_t r = 0;
    if (trans_a) {  // op(A)(i, k) = A[k][i]: the strip's row is contiguous in A
      const T* src = A + (p0 + p) * lda + i0;
      for (; r < rows; ++r) Ap[r] = src[r];
    } else {
      const T* src = A + i0 * lda + p0 + p;
      for (; r < rows; ++r) Ap[r] = src[r * lda];
    }
    for (; r < mr; ++r) Ap[r] = T(0);
  }
}

// op(B) rows [p0, p0+kc) x cols [j0, j0+cols) -> one strip of NR columns, zero-padded: Bp[p][c]
template <typename T>
void gemm_pack_b_strip(T* Bp, const T* B, int64_t ldb, bool trans_b, int64_t p0, int64_t kc, int64_t j0, int64_t cols,
                       int nr) {
  for (int64_t p = 0; p < kc; ++p, Bp += nr) {
    int64_t c = 0;
    if (trans_b) {  // op(B)(k, j) = B[j][k]
      const T* src = B + j0 * ldb + p0 + p;
      for (; c < cols; ++c) Bp[c] = src[c * ldb];
    } else {
      const T* src = B + (p0 + p) * ldb + j0;
      for (; c < cols; ++c) Bp[c] = src[c];
    }
    for (; c < nr; ++c) Bp[c] = T(0);
  }
}

// Problems this small, with operands that fit in L2, skip packing.
inline bool gemm_is_small(int64_t M, int64_t N, int64_t K, size_t elem) {
  return (M * K + K * N + M * N) * int64_t(elem) <= (int64_t(256) << 10);
}

// One thread's packed GEMM over all of C (M,N): the BLIS loops, no synchronisation.
template <typename T, typename Epilogue>
void matmul_packed_serial(const GemmKernels<T>& kern, T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K,
                          int64_t lda, int64_t ldb, int64_t ldc, bool trans_a, bool trans_b, T alpha, T beta,
                          const Epilogue& epilogue) {
  const int mr = kern.mr, nr = kern.nr;
  const int64_t nc_max = N < kern.nc ? N : kern.nc, mc_max = M < kern.mc ? M : kern.mc;
  T* Bp = gemm_buffer<T, 0>(kern.kc * ceil_div(nc_max, nr) * nr);
  T* Ap = gemm_buffer<T, 1>(kern.kc * ceil_div(mc_max, mr) * mr);
  for (int64_t j0 = 0; j0 < N; j0 += kern.nc) {
    const int64_t nc = N - j0 < kern.nc ? N - j0 : kern.nc;
    for (int64_t p0 = 0; p0 < K; p0 += kern.kc) {
      const int64_t kc = K - p0 < kern.kc ? K - p0 : kern.kc;
      const T beta_here = p0 == 0 ? beta : T(1);  // later k slices add to what the first wrote
      const bool last_slice = p0 + kc == K;
      for (int64_t jr = 0; jr < nc; jr += nr)
        gemm_pack_b_strip(Bp + jr * kc, B, ldb, trans_b, p0, kc, j0 + jr, nc - jr < nr ? nc - jr : nr, nr);
      for (int64_t i0 = 0; i0 < M; i0 += kern.mc) {
        const int64_t mc = M - i0 < kern.mc ? M - i0 : kern.mc;
        for (int64_t ir = 0; ir < mc; ir += mr)
          gemm_pack_a_strip(Ap + ir * kc, A, lda, trans_a, i0 + ir, mc - ir < mr ? mc - ir : mr, mr, p0, kc);
        for (int64_t jr = 0; jr < nc; jr += nr) {
          const int64_t cols = nc - jr < nr ? nc - jr : nr;
          for (int64_t ir = 0; ir < mc; ir += mr) {
            const int64_t rows = mc - ir < mr ? mc - ir : mr;
            T* Ct = C + (i0 + ir) * ldc + j0 + jr;
            kern.packed_tile(kc, Ap + ir * kc, 0, 0, Bp + jr * kc, 0, Ct, ldc, alpha, beta_here, rows, cols);
            if (last_slice) epilogue(Ct, ldc, i0 + ir, j0 + jr, rows, cols);
          }
        }
      }
    }
  }
}

// The packed GEMM on `threads` threads: C is cut into slabs, whole tiles wide, along its longer side;
// each slab is one task that packs its own panels. Each element is still summed by one thread in
// the same order as on one thread.
template <typename T, typename Epilogue>
void matmul_packed(const GemmKernels<T>& kern, T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K,
                   int64_t lda, int64_t ldb, int64_t ldc, bool trans_a, bool trans_b, T alpha, T beta,
                   const Epilogue& epilogue, int threads) {
  const bool split_n = N / kern.nr >= M / kern.mr;
  const int64_t units = split_n ? ceil_div(N, kern.nr) : ceil_div(M, kern.mr);
  // A few slabs per thread, so a thread that starts late (a busy machine) leaves its share to the others.
  const int64_t slabs = units < 2 * int64_t(threads) ? units : 2 * int64_t(threads);
  if (threads <= 1 || slabs <= 1) {
    matmul_packed_serial(kern, C, A, B, M, N, K, lda, ldb, ldc, trans_a, trans_b, alpha, beta, epilogue);
    return;
  }
  parallel_tasks(slabs, threads, [&](int64_t t) {
    const int64_t u0 = units * t / slabs, u1 = units * (t + 1) / slabs;
    if (split_n) {
      const int64_t j0 = u0 * kern.nr, j1 = u1 * kern.nr < N ? u1 * kern.nr : N;
      const auto shifted = [&](T* c, int64_t ld, int64_t r, int64_t col, int64_t rows, int64_t cols) {
        epilogue(c, ld, r, col + j0, rows, cols);
      };
      matmul_packed_serial(kern, C + j0, A, trans_b ? B + j0 * ldb : B + j0, M, j1 - j0, K, lda, ldb, ldc, trans_a,
                           trans_b, alpha, beta, shifted);
    } else {
      const int64_t i0 = u0 * kern.mr, i1 = u1 * kern.mr < M ? u1 * kern.mr : M;
      const auto shifted = [&](T* c, int64_t ld, int64_t r, int64_t col, int64_t rows, int64_t cols) {
        epilogue(c, ld, r + i0, col, rows, cols);
      };
      matmul_packed_serial(kern, C + i0 * ldc, trans_a ? A + i0 : A + i0 * lda, B, i1 - i0, N, K, lda, ldb, ldc,
                           trans_a, trans_b, alpha, beta, shifted);
    }
  });
}

// The blocked GEMM with an epilogue(C_tile, ldc, row0, col0, rows, cols) run once per finished tile.
template <typename T, typename Epilogue>
void matmul_blocked(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                    int64_t ldc, bool trans_a, bool trans_b, T alpha, T beta, const Epilogue& epilogue) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: C = beta * C, then the epilogue
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    epilogue(C, ldc, int64_t(0), int64_t(0), M, N);
    return;
  }
  const GemmKernels<T>& kern = gemm_kernels(T{});
  const int threads = threads_for(M * N * K);
  GemmPath path = gemm_path();
  if (path == GemmPath::automatic) {
    const bool small = gemm_is_small(M, N, K, sizeof(T));
    if (small && !trans_a && trans_b) path = GemmPath::dot;
    else if (small && !trans_b) path = GemmPath::direct;
    else path = GemmPath::packed;
  }
  if (path == GemmPath::dot && !(!trans_a && trans_b)) path = GemmPath::packed;      // dot needs A and B rows along k
  if (path == GemmPath::direct && trans_b) path = GemmPath::packed;                  // direct needs rows of op(B)
  if (path == GemmPath::packed) {
    matmul_packed(kern, C, A, B, M, N, K, lda, ldb, ldc, trans_a, trans_b, alpha, beta, epilogue, threads);
    return;
  }
  const int tm = path == GemmPath::dot ? kern.dm : kern.mr, tn = path == GemmPath::dot ? kern.dn : kern.nr;
  const int64_t m_tiles = ceil_div(M, tm), n_tiles = ceil_div(N, tn);
  const int64_t rs_a = trans_a ? 1 : lda, cs_a = trans_a ? lda : 1;
  // Tasks are rows of tiles (or single tiles when there are few rows): each tile is one task's.
  const int64_t row_tasks = m_tiles >= 2 * int64_t(threads) ? m_tiles : m_tiles * n_tiles;
  parallel_tasks(threads > 1 ? row_tasks : 1, threads, [&](int64_t task) {
    const bool whole = threads <= 1;
    const int64_t it0 = whole ? 0 : (row_tasks == m_tiles ? task : task / n_tiles);
    const int64_t it1 = whole ? m_tiles : it0 + 1;
    const int64_t jt0 = whole || row_tasks == m_tiles ? 0 : task % n_tiles;
    const int64_t jt1 = whole || row_tasks == m_tiles ? n_tiles : jt0 + 1;
    for (int64_t it = it0; it < it1; ++it) {
      for (int64_t jt = jt0; jt < jt1; ++jt) {
        const int64_t i0 = it * tm, j0 = jt * tn;
        const int64_t rows = M - i0 < tm ? M - i0 : tm, cols = N - j0 < tn ? N - j0 : tn;
        T* Ct = C + i0 * ldc + j0;
        if (path == GemmPath::dot)
          kern.dot_tile(K, A + i0 * lda, lda, B + j0 * ldb, ldb, Ct, ldc, alpha, beta, rows, cols);
        else
          kern.direct_tile(K, A + i0 * rs_a, rs_a, cs_a, B + j0, ldb, Ct, ldc, alpha, beta, rows, cols);
        epilogue(Ct, ldc, i0, j0, rows, cols);
      }
    }
  });
}

}  // namespace fuseprop
