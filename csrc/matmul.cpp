#include "matmul.h"

namespace fuseprop {

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
