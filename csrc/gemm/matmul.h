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

#include "core/common.h"
#include "gemm/gemm_kernels.h"
#include "core/threads.h"

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

// The packed path's blocking for an mr x nr register tile of elem-byte values, from the CPU's caches.
GemmBlocking gemm_blocking(int mr, int nr, int64_t elem);

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
// 64-byte aligned (a cache line, a ZMM register), so packed strips never straddle lines needlessly.
template <typename T, int Slot>
T* gemm_buffer(int64_t n) {
  constexpr int64_t kAlign = 64 / sizeof(T);
  thread_local std::vector<T> buf;
  if (static_cast<int64_t>(buf.size()) < n + kAlign) buf.resize(static_cast<size_t>(n + kAlign));
  const uintptr_t at = reinterpret_cast<uintptr_t>(buf.data());
  return buf.data() + ((64 - at % 64) % 64) / sizeof(T);
}

// op(A) rows [i0, i0+rows) x cols [p0, p0+kc) -> one strip of MR rows, zero-padded: Ap[p][r].
// Reads run along A's rows (contiguous); the writes land in the small strip, which stays in L1.
template <typename T>
void gemm_pack_a_strip(T* Ap, const T* A, int64_t lda, bool trans_a, int64_t i0, int64_t rows, int mr, int64_t p0,
                       int64_t kc) {
  if (trans_a) {  // op(A)(i, k) = A[k][i]: each k gives `rows` contiguous values
    for (int64_t p = 0; p < kc; ++p) {
      const T* src = A + (p0 + p) * lda + i0;
      for (int64_t r = 0; r < rows; ++r) Ap[p * mr + r] = src[r];
    }
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      const T* src = A + (i0 + r) * lda + p0;
      for (int64_t p = 0; p < kc; ++p) Ap[p * mr + r] = src[p];
    }
  }
  for (int64_t r = rows; r < mr; ++r)
    for (int64_t p = 0; p < kc; ++p) Ap[p * mr + r] = T(0);
}

// op(B) rows [p0, p0+kc) x cols [j0, j0+cols) -> one strip of NR columns, zero-padded: Bp[p][c].
template <typename T>
void gemm_pack_b_strip(T* Bp, const T* B, int64_t ldb, bool trans_b, int64_t p0, int64_t kc, int64_t j0, int64_t cols,
                       int nr) {
  if (trans_b) {  // op(B)(k, j) = B[j][k]: read each row of B along k
    for (int64_t c = 0; c < cols; ++c) {
      const T* src = B + (j0 + c) * ldb + p0;
      for (int64_t p = 0; p < kc; ++p) Bp[p * nr + c] = src[p];
    }
  } else {
    for (int64_t p = 0; p < kc; ++p) {
      const T* src = B + (p0 + p) * ldb + j0;
      for (int64_t c = 0; c < cols; ++c) Bp[p * nr + c] = src[c];
    }
  }
  for (int64_t c = cols; c < nr; ++c)
    for (int64_t p = 0; p < kc; ++p) Bp[p * nr + c] = T(0);
}

// The path for a shape. Packing pays for itself only where each packed element is reused often and the
// operands spill out of L2 (2 threads, Zen 5, GFLOP/s unpacked vs packed: dz·W 128x784x256 453 vs 392,
// 512x1024x10 321 vs 94; dzᵀ·x 128x256x128 427 vs 360, 16x784x512 350 vs 216; x·Wᵀ 512x16x784 306 vs
// 164; but x·Wᵀ 128x256x784 312 vs 383 and 512x64x784 326 vs 393, dzᵀ·x 128x784x512 393 vs 406).
//  - Small problems (operands and output within 256 KiB) never pack.
//  - C = A Bᵀ with A and B rows along k (x·Wᵀ): dot products when the output is narrower than a register tile
//    (SIMD levels; generic: one column), or, for a small problem at a SIMD level, when k is long enough (>= 512)
//    to pay for each dot product's final horizontal sum, or A is shorter than a register tile (1 thread, Zen 5, us dot vs packed: 200x100x64 34 vs 14,
//    200x100x10 31 vs 3.4, 32x128x128 11 vs 5.9; but 64x40x512 14 vs 19, 16x32x784 5.1 vs 5.6, 4x100x64
//    1.3 vs 1.5).
//  - op(B) rows contiguous (dz·W, dzᵀ·x): the direct tiles when both operands fit in L2, or op(A) is at
//    most 4 strips tall (each element of op(B) would be used only that often) and op(B) fits in the
//    share of L3 the packed path would use.
// The choice depends on the shape and the caches only, never on the thread count.
template <typename T>
GemmPath gemm_auto_path(const GemmKernels<T>& kern, const GemmBlocking& blk, int64_t M, int64_t N, int64_t K,
                        bool trans_a, bool trans_b) {
  const int64_t a_elements = M * K, b_elements = K * N;
  const bool small = (a_elements + b_elements + M * N) * int64_t(sizeof(T)) <= (int64_t(256) << 10);
  if (!trans_a && trans_b) {
    if (N < kern.dot_narrow || (small && kern.dot_long_k && (K >= kern.dot_long_k || M < kern.mr)))
      return GemmPath::dot;
  } else if (!trans_b) {
    if (small || a_elements + b_elements <= blk.l2_elements || (M <= 4 * kern.mr && b_elements <= blk.whole_elements))
      return GemmPath::direct;
  }
  return GemmPath::packed;
}

// The packed GEMM, in two forms that compute the same tiles in the same order, so the result never
// depends on which one runs or on the thread count. K is cut into equal slices of at most kc (784 =
// 4 x 196, not 3 x 256 + 16: a thin last slice costs a whole read and write of C for little work);
// every mr x nr tile of C sums slice after slice, each slice in k order, and row strips start at
// multiples of mr, column strips at multiples of nr from each nc panel's start.
//  - whole (op(A) no taller than one L2 block, as in a training step's products): the nc-wide panel of
//    op(B) is packed for every k slice at once, by all threads together, then the tiles are shared out
//    as ranges of column strips (or of row strips, when there are fewer column strips than threads).
//    op(A) is read in place by the direct micro-kernel, which sums in the same order as the packed one
//    (packing it cost 2-10% at these sizes: 128x128x256 x.W^T 348 -> 385 GFLOP/s on 2 threads). Two
//    waits per panel, whatever K is.
//  - blocked (taller op(A)): for each kc x nc panel of op(B), the threads pack the panel together,
//    then each task packs one mc-row block of op(A) into its own buffer and computes its tiles. The
//    row blocks are as many as fit in L2, rounded up to a multiple of the thread count and equal in
//    size, so no thread is left with the stub.
// A phase waits only for tasks already claimed, never for a thread to show up.
template <typename T, typename Epilogue>
void matmul_packed(const GemmKernels<T>& kern, const GemmBlocking& blk, T* C, const T* A, const T* B, int64_t M,
                   int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, bool trans_a, bool trans_b, T alpha,
                   T beta, const Epilogue& epilogue, int threads) {
  const int mr = kern.mr, nr = kern.nr;
  const int64_t k_slices = ceil_div(K, blk.kc), kc_even = ceil_div(K, k_slices);
  const int64_t nc_max = N < blk.nc ? N : blk.nc;
  const int64_t m_strips = ceil_div(M, mr), max_n_strips = ceil_div(nc_max, nr);
  auto slice_kc = [&](int64_t p0) { return K - p0 < kc_even ? K - p0 : kc_even; };

  const bool whole = M <= blk.mc && max_n_strips * nr * K <= blk.whole_elements;
  if (whole) {
    T* Bp = gemm_buffer<T, 0>(max_n_strips * nr * K);  // slice p0 at Bp + p0 * n_strips * nr; strip s at + s * nr * kc
    const int64_t rs_a = trans_a ? 1 : lda, cs_a = trans_a ? lda : 1;  // op(A)(i, p) = A[i * rs_a + p * cs_a]
    for (int64_t j0 = 0; j0 < N; j0 += blk.nc) {
      const int64_t nc = N - j0 < blk.nc ? N - j0 : blk.nc, n_strips = ceil_div(nc, nr);
      // Packing units: (slice, strip) pairs of op(B).
      const int64_t units = k_slices * n_strips;
      const int64_t pack_tasks = threads > 1 ? (units < 4 * int64_t(threads) ? units : 4 * int64_t(threads)) : 1;
      parallel_tasks(pack_tasks, threads, [&](int64_t t) {
        for (int64_t u = units * t / pack_tasks; u < units * (t + 1) / pack_tasks; ++u) {
          const int64_t p0 = (u / n_strips) * kc_even, s = u % n_strips;
          kern.pack_b(Bp + p0 * n_strips * nr + s * nr * slice_kc(p0), B, ldb, trans_b, p0, slice_kc(p0),
                      j0 + s * nr, nc - s * nr < nr ? nc - s * nr : nr, nr);
        }
      });
      // Tiles: ranges of column strips (each B strip stays in L1 while A's rows stream past), or of
      // row strips when the panel is too narrow to give every thread columns.
      const bool by_rows = n_strips < int64_t(threads) && m_strips > n_strips;
      const int64_t span = by_rows ? m_strips : n_strips;
      const int64_t tasks = threads > 1 ? (span < 4 * int64_t(threads) ? span : 4 * int64_t(threads)) : 1;
      parallel_tasks(tasks, threads, [&](int64_t t) {
        const int64_t lo = span * t / tasks, hi = span * (t + 1) / tasks;
        const int64_t s0 = by_rows ? 0 : lo, s1 = by_rows ? n_strips : hi;
        const int64_t i0 = by_rows ? lo : 0, i1 = by_rows ? hi : m_strips;
        for (int64_t p0 = 0; p0 < K; p0 += kc_even) {
          const int64_t kc = slice_kc(p0);
          const T beta_here = p0 == 0 ? beta : T(1);  // later k slices add to what the first wrote
          const bool last_slice = p0 + kc == K;
          for (int64_t s = s0; s < s1; ++s) {
            const int64_t cols = nc - s * nr < nr ? nc - s * nr : nr;
            for (int64_t i = i0; i < i1; ++i) {
              const int64_t rows = M - i * mr < mr ? M - i * mr : mr;
              T* Ct = C + i * mr * ldc + j0 + s * nr;
              kern.direct_tile(kc, A + i * mr * rs_a + p0 * cs_a, rs_a, cs_a, Bp + p0 * n_strips * nr + s * nr * kc,
                               nr, Ct, ldc, alpha, beta_here, rows, cols);
              if (last_slice) epilogue(Ct, ldc, i * mr, j0 + s * nr, rows, cols);
            }
          }
        }
      });
    }
    return;
  }

  T* Bp = gemm_buffer<T, 0>(blk.kc * max_n_strips * nr);  // the caller's, shared with the tasks
  int64_t m_blocks = ceil_div(M, blk.mc);
  m_blocks = ceil_div(m_blocks, threads) * threads;
  const int64_t mc_block = ceil_div(ceil_div(M, m_blocks), mr) * mr;
  m_blocks = ceil_div(M, mc_block);
  for (int64_t j0 = 0; j0 < N; j0 += blk.nc) {
    const int64_t nc = N - j0 < blk.nc ? N - j0 : blk.nc, n_strips = ceil_div(nc, nr);
    // Fewer row blocks than threads: split the columns too.
    int64_t col_chunks = ceil_div(int64_t(threads), m_blocks);
    if (col_chunks > n_strips) col_chunks = n_strips;
    for (int64_t p0 = 0; p0 < K; p0 += kc_even) {
      const int64_t kc = slice_kc(p0);
      const T beta_here = p0 == 0 ? beta : T(1);  // later k slices add to what the first wrote
      const bool last_slice = p0 + kc == K;
      const int64_t pack_tasks = threads > 1 ? (n_strips < 4 * int64_t(threads) ? n_strips : 4 * int64_t(threads)) : 1;
      parallel_tasks(pack_tasks, threads, [&](int64_t t) {
        for (int64_t s = n_strips * t / pack_tasks; s < n_strips * (t + 1) / pack_tasks; ++s)
          kern.pack_b(Bp + s * nr * kc, B, ldb, trans_b, p0, kc, j0 + s * nr, nc - s * nr < nr ? nc - s * nr : nr, nr);
      });
      parallel_tasks(m_blocks * col_chunks, threads, [&](int64_t task) {
        const int64_t i0 = (task / col_chunks) * mc_block, chunk = task % col_chunks;
        const int64_t mc = M - i0 < mc_block ? M - i0 : mc_block;
        T* Ap = gemm_buffer<T, 1>(blk.kc * ceil_div(mc_block, mr) * mr);  // this thread's own
        for (int64_t ir = 0; ir < mc; ir += mr)
          kern.pack_a(Ap + ir * kc, A, lda, trans_a, i0 + ir, mc - ir < mr ? mc - ir : mr, mr, p0, kc);
        for (int64_t s = n_strips * chunk / col_chunks; s < n_strips * (chunk + 1) / col_chunks; ++s) {
          const int64_t cols = nc - s * nr < nr ? nc - s * nr : nr;
          for (int64_t ir = 0; ir < mc; ir += mr) {
            const int64_t rows = mc - ir < mr ? mc - ir : mr;
            T* Ct = C + (i0 + ir) * ldc + j0 + s * nr;
            kern.packed_tile(kc, Ap + ir * kc, 0, 0, Bp + s * nr * kc, 0, Ct, ldc, alpha, beta_here, rows, cols);
            if (last_slice) epilogue(Ct, ldc, i0 + ir, j0 + s * nr, rows, cols);
          }
        }
      });
    }
  }
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
  const GemmBlocking blk = gemm_blocking(kern.mr, kern.nr, sizeof(T));
  const int threads = threads_for(M * N * K);
  GemmPath path = gemm_path();
  if (path == GemmPath::automatic) path = gemm_auto_path(kern, blk, M, N, K, trans_a, trans_b);
  if (path == GemmPath::dot && !(!trans_a && trans_b)) path = GemmPath::packed;      // dot needs A and B rows along k
  if (path == GemmPath::direct && trans_b) path = GemmPath::packed;                  // direct needs rows of op(B)
  if (path == GemmPath::packed) {
    matmul_packed(kern, blk, C, A, B, M, N, K, lda, ldb, ldc, trans_a, trans_b, alpha, beta, epilogue, threads);
    return;
  }
  const int tm = path == GemmPath::dot ? kern.dm : kern.mr, tn = path == GemmPath::dot ? kern.dn : kern.nr;
  const int64_t m_tiles = ceil_div(M, tm), n_tiles = ceil_div(N, tn);
  const int64_t rs_a = trans_a ? 1 : lda, cs_a = trans_a ? lda : 1;
  // Tasks are a few contiguous runs of tiles per thread (row-major over the tile grid): coarse
  // enough that claiming them costs nothing, fine enough that a late thread leaves its share.
  const int64_t tiles = m_tiles * n_tiles;
  const int64_t runs = threads <= 1 ? 1 : (tiles < 4 * int64_t(threads) ? tiles : 4 * int64_t(threads));
  parallel_tasks(runs, threads, [&](int64_t run) {
    for (int64_t t = tiles * run / runs; t < tiles * (run + 1) / runs; ++t) {
      const int64_t i0 = (t / n_tiles) * tm, j0 = (t % n_tiles) * tn;
      const int64_t rows = M - i0 < tm ? M - i0 : tm, cols = N - j0 < tn ? N - j0 : tn;
      T* Ct = C + i0 * ldc + j0;
      if (path == GemmPath::dot)
        kern.dot_tile(K, A + i0 * lda, lda, B + j0 * ldb, ldb, Ct, ldc, alpha, beta, rows, cols);
      else
        kern.direct_tile(K, A + i0 * rs_a, rs_a, cs_a, B + j0, ldb, Ct, ldc, alpha, beta, rows, cols);
      epilogue(Ct, ldc, i0, j0, rows, cols);
    }
  });
}

}  // namespace fuseprop
