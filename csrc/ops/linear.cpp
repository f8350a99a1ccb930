#include "ops/linear.h"

#include <algorithm>

#include "ops/activations.h"
#include "gemm/matmul.h"
#include "core/threads.h"

namespace fuseprop {

// On a finished tile of z: z += b, y = act(z). Runs while the tile is in cache.
template <typename T, Activation A>
struct BiasActivationEpilogue {
  const T* b;
  T* y;
  int64_t ldy;
  T slope;
  void operator()(T* z, int64_t ldz, int64_t row0, int64_t col0, int64_t rows, int64_t cols) const {
    for (int64_t r = 0; r < rows; ++r) {
      T* zr = z + r * ldz;
      T* yr = y + (row0 + r) * ldy + col0;
      for (int64_t c = 0; c < cols; ++c) {
        const T v = b ? zr[c] + b[col0 + c] : zr[c];
        zr[c] = v;
        yr[c] = act_forward<A>(v, slope);
      }
    }
  }
};

// x (B,IN), w (OUT,IN), b (OUT) or null; z, y (B,OUT): z = x w^T + b, y = act(z)
template <typename T>
void linear_forward(T* y, T* z, const T* x, const T* w, const T* b, int64_t B, int64_t IN, int64_t OUT,
                    Activation act, T slope) {
  // op(A) = x (B,IN), op(B) = w^T (IN,OUT): w is stored (OUT,IN), so trans_b with ldb = IN.
  FUSEPROP_DISPATCH_ACTIVATION(act, A, {
    const BiasActivationEpilogue<T, A> epilogue{b, y, OUT, slope};
    matmul_blocked(z, x, w, B, OUT, IN, IN, IN, OUT, false, true, T(1), T(0), epilogue);
  });
}

// One row of the backward's first pass over [0, n): dz = dy * act'(z) (not stored for the identity,
// whose dz is dy) and db += dz.
template <typename T, Activation A>
void dz_row(T* __restrict dz, T* __restrict db, const T* __restrict dy, const T* __restrict z, const T* __restrict y,
            int64_t n, T slope) {
  if (db) {
    for (int64_t o = 0; o < n; ++o) {
      const T v = A == Activation::identity ? dy[o] : dy[o] * act_derivative<A>(z[o], y[o], slope);
      if constexpr (A != Activation::identity) dz[o] = v;
      db[o] += v;
    }
  } else if constexpr (A != Activation::identity) {
    for (int64_t o = 0; o < n; ++o) dz[o] = dy[o] * act_derivative<A>(z[o], y[o], slope);
  }
}

// dy, z, y (B,OUT); x (B,IN); w (OUT,IN): dw += dz^T x, db += sum_rows dz, dx = dz w
template <typename T>
void linear_backward(T* dx, T* dw, T* db, T* workspace, const T* dy, const T* x, const T* w, const T* z,
                     const T* y, int64_t B, int64_t IN, int64_t OUT, Activation act, T slope, bool accumulate) {
  if (db && !accumulate) std::fill_n(db, OUT, T(0));
  // One pass over dy forms dz = dy * act'(z) and sums db. Threads take column blocks and each sums
  // its columns row after row: a fixed order, so db never depends on the thread count. The row loop
  // runs over restrict pointers with the derivative known at compile time, so it vectorises.
  FUSEPROP_DISPATCH_ACTIVATION(act, A, {
    parallel_for(OUT, B * 4, [&](int64_t o0, int64_t o1) {
      for (int64_t r = 0; r < B; ++r)
        dz_row<T, A>(A == Activation::identity ? nullptr : workspace + r * OUT + o0, db ? db + o0 : nullptr,
                     dy + r * OUT + o0, z ? z + r * OUT + o0 : nullptr, y ? y + r * OUT + o0 : nullptr, o1 - o0, slope);
    });
  });
  const T* dz = act == Activation::identity ? dy : workspace;
  // dw (OUT,IN) += dz^T (OUT,B) . x (B,IN): op(A) = dz^T, so trans_a with lda = OUT.
  matmul(dw, dz, x, OUT, IN, B, OUT, IN, IN, true, false, T(1), accumulate ? T(1) : T(0));
  // dx (B,IN) = dz (B,OUT) . w (OUT,IN)
  if (dx) matmul(dx, dz, w, B, IN, OUT, OUT, IN, IN, false, false, T(1), T(0));
}

#define FUSEPROP_INSTANTIATE(T)                                                                                   \
  template void linear_forward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, Activation, T); \
  template void linear_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t,    \
                                   int64_t, int64_t, Activation, T, bool);
FUSEPROP_INSTANTIATE(float)
FUSEPROP_INSTANTIATE(double)
#undef FUSEPROP_INSTANTIATE

}  // namespace fuseprop
