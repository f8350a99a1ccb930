#include "gemm/matmul.h"

#include <atomic>

#include "core/cpu_features.h"

namespace fuseprop {

namespace {

// Portable tiles: the generic level for float, and every level for double. The j loops vectorise
// at the baseline instruction set; no reassociation is needed, so no -ffast-math.
constexpr int kGenericMR = 4, kGenericNR = 8, kGenericDM = 4, kGenericDN = 4;

// c (m,n) = alpha * sum_p a(i,p) b(p,j) + beta * c; see TileFn. Packed strides when rs_a == 0.
template <typename T, bool Packed>
void generic_tile(int64_t k, const T* a, int64_t rs_a, int64_t cs_a, const T* b, int64_t rs_b, T* c, int64_t ldc,
                  T alpha, T beta, int64_t m, int64_t n) {
  constexpr int MR = kGenericMR, NR = kGenericNR;
  T acc[MR][NR] = {};
  const int64_t row_step = Packed ? 1 : rs_a, a_step = Packed ? MR : cs_a, b_step = Packed ? NR : rs_b;
  for (int64_t p = 0; p < k; ++p, a += a_step, b += b_step) {
    for (int i = 0; i < MR; ++i) {
      const T ai = (Packed || i < m) ? a[i * row_step] : T(0);
      if (Packed || n == NR) {
        for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[j];
      } else {
        for (int j = 0; j < n; ++j) acc[i][j] += ai * b[j];
      }
    }
  }
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T& cij = c[i * ldc + j];
      cij = beta == T(0) ? alpha * acc[i][j] : alpha * acc[i][j] + beta * cij;
    }
}

// c (m,n) = alpha * sum_p a[i*lda + p] b[j*ldb + p] + beta * c; see DotTileFn.
template <typename T>
void generic_dot_tile(int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, T alpha, T beta,
                      int64_t m, int64_t n) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T sum = 0;
      for (int64_t p = 0; p < k; ++p) sum += a[i * lda + p] * b[j * ldb + p];
      T& cij = c[i * ldc + j];
      cij = beta == T(0) ? alpha * sum : alpha * sum + beta * cij;
    }
}

template <typename T>
const GemmKernels<T> generic_kernels = {
    "generic", kGenericMR, kGenericNR, generic_tile<T, true>, generic_tile<T, false>,
    kGenericDM, kGenericDN, generic_dot_tile<T>, gemm_pack_a_strip<T>, gemm_pack_b_strip<T>,
    2, 0};  // float64, 1 thread, Zen 5, us dot vs packed: 128x1x256 13 vs 36, but 32x7x784 79 vs 39

std::atomic<int> forced_path{static_cast<int>(GemmPath::automatic)};

}  // namespace

const GemmKernels<float>& gemm_kernels(float) {
#if defined(FUSEPROP_SIMD_X86)
  switch (cpu_level_active()) {
    case CpuLevel::avx512: return gemm_kernels_avx512;
    case CpuLevel::avx2: return gemm_kernels_avx2;
    default: break;
  }
#endif
  return generic_kernels<float>;
}

const GemmKernels<double>& gemm_kernels(double) { return generic_kernels<double>; }

// The cache blocking of the packed path, from the caches found at run time (core/cpu_features.h), as BLIS
// derives its blocksizes: a kc x nr strip of op(B) stays in L1 while the mr-row strips of A stream
// past it (two thirds of L1, leaving room for those and for C: on a Zen 5 core, kc 256 ran 3% faster
// than kc 192, half of L1), an mc x kc block of op(A) stays in L2
// (half of it), and a kc x nc panel of op(B) stays in the core's share of L3. The whole-K form packs
// a panel of op(B) over all of K when it fits in half of L3, and 16 MiB at most.
GemmBlocking gemm_blocking(int mr, int nr, int64_t elem) {
  const CacheSizes& cache = cpu_cache_sizes();
  auto clamp = [](int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); };
  const int64_t kc = clamp(cache.l1d * 2 / 3 / (nr * elem) / 32 * 32, 64, 512);
  const int64_t mc = clamp(cache.l2 / 2 / (kc * elem) / mr * mr, 4 * mr, 120 * mr);
  const int64_t nc = clamp(cache.l3 / 4 / (kc * elem) / nr * nr, 16 * nr, 256 * nr);
  // The whole-K form keeps its op(B) panel (per calling thread, for reuse) in at most 16 MiB.
  const int64_t whole_bytes = cache.l3 / 2 < (int64_t(16) << 20) ? cache.l3 / 2 : (int64_t(16) << 20);
  return {mc, kc, nc, whole_bytes / elem, cache.l2 / elem};
}

GemmPath gemm_path() { return static_cast<GemmPath>(forced_path.load(std::memory_order_relaxed)); }
void set_gemm_path(GemmPath path) { forced_path.store(static_cast<int>(path), std::memory_order_relaxed); }

// op(A) (M,K), op(B) (K,N), C (M,N): C = alpha op(A) op(B) + beta C
template <typename T>
void matmul(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
            int64_t ldc, bool trans_a, bool trans_b, T alpha, T beta) {
  matmul_blocked(C, A, B, M, N, K, lda, ldb, ldc, trans_a, trans_b, alpha, beta, NoEpilogue{});
}

// op(A) (M,K), op(B) (K,N), C (M,N): the plain triple loop
template <typename T>
void matmul_reference(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, int64_t lda,
                      int64_t ldb, int64_t ldc, bool trans_a, bool trans_b, T alpha, T beta) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      T sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        const T a = trans_a ? A[k * lda + i] : A[i * lda + k];
        const T b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
        sum += a * b;
      }
      T& c = C[i * ldc + j];
      c = beta == T(0) ? alpha * sum : alpha * sum + beta * c;
    }
  }
}

#define FUSEPROP_INSTANTIATE(T)                                                                                \
  template void matmul<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, \
                          bool, T, T);                                                                         \
  template void matmul_reference<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t,      \
                                    int64_t, bool, bool, T, T);
FUSEPROP_INSTANTIATE(float)
FUSEPROP_INSTANTIATE(double)
#undef FUSEPROP_INSTANTIATE

}  // namespace fuseprop
