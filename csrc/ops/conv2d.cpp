#include "ops/conv2d.h"

#include <algorithm>
#include <atomic>

#include "core/threads.h"
#include "gemm/matmul.h"
#include "ops/activation_math.h"

namespace fuseprop {

namespace {

std::atomic<int64_t> chunk_override{0};

// The valid output columns [lo, hi) of kernel column j: those whose input column ow*sw + off lies in [0, W).
struct ColumnRange {
  int64_t off, lo, hi;
};
ColumnRange column_range(const Conv2dShape& s, int64_t j) {
  const int64_t off = j * s.dil_w - s.pad_w;
  const int64_t hi = s.W - 1 - off < 0 ? 0 : std::min(s.Wo, (s.W - 1 - off) / s.stride_w + 1);
  const int64_t lo = std::min(hi, off >= 0 ? int64_t(0) : ceil_div(-off, s.stride_w));
  return {off, lo, hi};
}

// xc (H,W), one input plane; dst (Ho,Wo): dst[oh][ow] = xc[oh*sh - ph + i*dh][ow*sw - pw + j*dw], 0 outside.
template <typename T>
void im2col_plane(T* __restrict dst, const T* __restrict xc, const Conv2dShape& s, int64_t i, int64_t j) {
  const ColumnRange cr = column_range(s, j);
  for (int64_t oh = 0; oh < s.Ho; ++oh) {
    T* d = dst + oh * s.Wo;
    const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
    if (ih < 0 || ih >= s.H) {
      std::fill_n(d, s.Wo, T(0));
      continue;
    }
    const T* xr = xc + ih * s.W + cr.off;  // xr[ow * sw] is input column ow*sw + off
    std::fill_n(d, cr.lo, T(0));
    if (s.stride_w == 1) {
      for (int64_t ow = cr.lo; ow < cr.hi; ++ow) d[ow] = xr[ow];
    } else {
      for (int64_t ow = cr.lo; ow < cr.hi; ++ow) d[ow] = xr[ow * s.stride_w];
    }
    std::fill_n(d + cr.hi, s.Wo - cr.hi, T(0));
  }
}

// x (nb,C,H,W), the chunk's samples; col (K, nb*P): col[(c*kh + i)*kw + j][n*P + p]. Rows of (k, n) are
// independent tasks.
template <typename T>
void im2col(T* col, const T* x, int64_t nb, const Conv2dShape& s) {
  const int64_t P = s.P(), rows = s.K() * nb;
  parallel_for(rows, P, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t k = t / nb, n = t % nb;
      const int64_t c = k / (s.kh * s.kw), i = (k / s.kw) % s.kh, j = k % s.kw;
      im2col_plane(col + k * nb * P + n * P, x + (n * s.C + c) * s.H * s.W, s, i, j);
    }
  });
}

// dcol (K, nb*P) -> dx (nb,C,H,W) = the sum, over kernel offsets, of each dcol row put back where im2col
// took it from. One task per input plane (n, c), which alone reads its rows: a fixed order per element.
template <typename T>
void col2im(T* dx, const T* dcol, int64_t nb, const Conv2dShape& s) {
  const int64_t P = s.P(), HW = s.H * s.W;
  parallel_for(nb * s.C, s.kh * s.kw * P, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / s.C, c = t % s.C;
      T* __restrict dxc = dx + (n * s.C + c) * HW;
      std::fill_n(dxc, HW, T(0));
      for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t j = 0; j < s.kw; ++j) {
          const ColumnRange cr = column_range(s, j);
          const T* __restrict src = dcol + ((c * s.kh + i) * s.kw + j) * nb * P + n * P;
          for (int64_t oh = 0; oh < s.Ho; ++oh) {
            const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
            if (ih < 0 || ih >= s.H) continue;
            T* __restrict xr = dxc + ih * s.W + cr.off;
            const T* d = src + oh * s.Wo;
            if (s.stride_w == 1) {
              for (int64_t ow = cr.lo; ow < cr.hi; ++ow) xr[ow] += d[ow];
            } else {
              for (int64_t ow = cr.lo; ow < cr.hi; ++ow) xr[ow * s.stride_w] += d[ow];
            }
          }
        }
    }
  });
}

// On a finished tile of the chunk's z (O, nb*P) (rows o, columns n*P + p): v = tile + b[o], written to
// z and y = act(v) at their NCHW places (n, o, p). With one sample per chunk the tile is z itself.
template <typename T, Activation A>
struct ConvEpilogue {
  T* z;  // the chunk's first sample, (nb,O,P)
  T* y;
  const T* b;
  int64_t O, P;
  T slope;
  void operator()(T* tile, int64_t ldt, int64_t row0, int64_t col0, int64_t rows, int64_t cols) const {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t o = row0 + r;
      const T* src = tile + r * ldt;
      for (int64_t q = col0; q < col0 + cols;) {
        const int64_t n = q / P, p = q % P, len = std::min(col0 + cols - q, P - p);
        T* zd = z + (n * O + o) * P + p;
        T* yd = y + (n * O + o) * P + p;
        const T* sq = src + (q - col0);
        if (b) {
          const T bo = b[o];
          for (int64_t e = 0; e < len; ++e) {
            const T v = sq[e] + bo;
            zd[e] = v;
            yd[e] = act_forward<A>(v, slope);
          }
        } else {
          for (int64_t e = 0; e < len; ++e) {
            const T v = sq[e];
            zd[e] = v;
            yd[e] = act_forward<A>(v, slope);
          }
        }
        q += len;
      }
    }
  }
};

// The sum of v[0, n) in 16 fixed lanes, added in a fixed tree: it vectorises, and its order depends on n alone.
template <typename T>
T lane_sum(const T* __restrict v, int64_t n) {
  constexpr int L = 16;
  T acc[L] = {};
  int64_t p0 = 0;
  for (; p0 + L <= n; p0 += L)
    for (int l = 0; l < L; ++l) acc[l] += v[p0 + l];
  for (int64_t p = p0; p < n; ++p) acc[p - p0] += v[p];
  for (int w = L / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// One (sample, channel) row of the backward's first pass over [0, P): dz = dy * act'(z) written to dst.
template <typename T, Activation A>
void dz_row(T* __restrict dst, const T* __restrict dy, const T* __restrict z, const T* __restrict y, int64_t P,
            T slope) {
  if constexpr (A == Activation::identity) {
    std::copy_n(dy, P, dst);
  } else {
    for (int64_t p = 0; p < P; ++p) dst[p] = dy[p] * act_derivative<A>(z[p], y[p], slope);
  }
}

template <typename T>
const T* offset_or_null(const T* p, int64_t at) {
  return p ? p + at : nullptr;
}

}  // namespace

void set_conv2d_chunk_override(int64_t n) { chunk_override.store(n < 0 ? 0 : n); }

// Up to 16 samples per GEMM, fewer where their patch matrix would pass 2^20 elements (4 MiB of float).
//
// Measured on the Fashion-MNIST network's convolutions (batch 128, 3x3, padding 1, ReLU, bias; float32,
// AVX-512, 2 threads of a 2-core Zen 5 whose fma_peak is ~510 GFLOP/s), median ms (GFLOP/s); L1 is 1->32 on
// 28x28 (57.8 MFLOP forward; its backward forms dW and db only), L2 is 32->64 on 14x14 (925 MFLOP forward;
// backward dx, dW, db: 1.85 GFLOP):
//   samples per GEMM   L1 forward    L1 backward   L2 forward     L2 backward
//   1 (per sample)     1.39 (41)     1.57 (37)     5.2 (178)      10.1 (182)
//   8                  0.96 (60)     2.1  (27)     4.22 (219)     8.05 (230)
//   16 (chosen)        0.99 (58)     1.3  (45)     4.21 (219)     8.25 (224)
//   128 (whole batch)  1.9  (30)     2.1  (28)     23.7 (39)      28 (65)
//   torch 2.13, own process, same shapes: L1 forward 7.6-11 ms (5-8 GFLOP/s; forward + backward 3.8-5.5 ms
//   against our 2.3), L2 forward 2.2-2.3 ms (400-420 GFLOP/s, ~80% of peak), backward 5.2-5.5 ms (340-360).
// L2 at 16: 43% of peak forward and 44% backward; its GEMMs alone run at ~400 GFLOP/s (forward 2.3 ms, dW 2.6,
// dcol 2.0), the rest is the lowering's memory passes (im2col ~1.2 ms a pass, col2im ~2, the dz pass ~1),
// which is the gap to torch's direct (oneDNN) convolution. One sample per GEMM leaves the GEMMs too small
// (L1's is 32x784x9); the whole batch spills the patch matrix (7 M elements for L2) out of the caches.
// The GEMM's own packing would have to read x directly to remove im2col (an implicit GEMM): not done, as it
// needs a packing hook in the GEMM driver. 1x1 convolutions take the same path (im2col is then a copy).
int64_t conv2d_chunk(const Conv2dShape& s) {
  const int64_t forced = chunk_override.load();
  if (forced > 0) return std::max<int64_t>(1, std::min(forced, s.N));
  const int64_t per_sample = std::max<int64_t>(1, s.K() * s.P());
  return std::max<int64_t>(1, std::min({s.N, int64_t(16), (int64_t(1) << 20) / per_sample}));
}

int64_t conv2d_forward_workspace(const Conv2dShape& s) {
  if (s.N == 0) return 0;
  const int64_t nb = conv2d_chunk(s);
  return s.K() * nb * s.P() + (nb > 1 ? s.O * nb * s.P() : 0);
}

int64_t conv2d_backward_workspace(const Conv2dShape& s, Activation act) {
  if (s.N == 0) return 0;
  const int64_t nb = conv2d_chunk(s);
  const bool dz_copy = nb > 1 || act != Activation::identity;
  return s.K() * nb * s.P() + (dz_copy ? s.O * nb * s.P() : 0);
}

// x (N,C,H,W), w (O,C,kh,kw), b (O) or null; z, y (N,O,Ho,Wo): z = conv(x, w) + b, y = act(z)
template <typename T>
void conv2d_forward(T* y, T* z, T* workspace, const T* x, const T* w, const T* b, const Conv2dShape& s,
                    Activation act, T slope) {
  const int64_t nb_max = conv2d_chunk(s), K = s.K(), P = s.P();
  T* col = workspace;
  T* out = workspace + K * nb_max * P;  // the GEMM's tile buffer (O, nb*P) when a chunk has several samples
  FUSEPROP_DISPATCH_ACTIVATION(act, A, {
    for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
      const int64_t nb = std::min(nb_max, s.N - n0);
      im2col(col, x + n0 * s.C * s.H * s.W, nb, s);
      const ConvEpilogue<T, A> epilogue{z + n0 * s.O * P, y + n0 * s.O * P, b, s.O, P, slope};
      // z (O, nb*P) = w (O,K) . col (K, nb*P); one sample's (O,P) is its NCHW block, so it lands in z directly.
      T* C = nb == 1 ? z + n0 * s.O * P : out;
      matmul_blocked(C, w, col, s.O, nb * P, K, K, nb * P, nb * P, false, false, T(1), T(0), epilogue);
    }
  });
}

// dy, z, y (N,O,Ho,Wo); x (N,C,H,W); w (O,C,kh,kw): dw += dz . col^T, db += sum dz, dx = col2im(w^T dz)
template <typename T>
void conv2d_backward(T* dx, T* dw, T* db, T* workspace, const T* dy, const T* x, const T* w, const T* z,
                     const T* y, const Conv2dShape& s, Activation act, T slope, bool accumulate) {
  const int64_t nb_max = conv2d_chunk(s), K = s.K(), P = s.P(), O = s.O;
  if (!accumulate) {
    std::fill_n(dw, O * K, T(0));
    if (db) std::fill_n(db, O, T(0));
  }
  T* col = workspace;  // col (K, nb*P), then dcol in the same place
  T* dz_buf = workspace + K * nb_max * P;
  FUSEPROP_DISPATCH_ACTIVATION(act, A, {
    for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
      const int64_t nb = std::min(nb_max, s.N - n0), cols = nb * P;
      // dz (O, nb*P) from NCHW, and db. Threads take ranges of channels; each channel sums its rows in
      // sample order, so db never depends on the thread count. The identity on one sample needs no copy.
      const bool copy = nb > 1 || A != Activation::identity;
      const T* dz = copy ? dz_buf : dy + n0 * O * P;
      if (copy || db) {
        parallel_for(O, nb * P, [&](int64_t o0, int64_t o1) {
          for (int64_t o = o0; o < o1; ++o)
            for (int64_t n = 0; n < nb; ++n) {
              const int64_t at = ((n0 + n) * O + o) * P;
              T* dst = dz_buf + o * cols + n * P;
              if (copy) dz_row<T, A>(dst, dy + at, offset_or_null(z, at), offset_or_null(y, at), P, slope);
              if (db) db[o] += lane_sum(copy ? dst : dy + at, P);
            }
        });
      }
      im2col(col, x + n0 * s.C * s.H * s.W, nb, s);
      // dw (O,K) += dz (O, nb*P) . col^T: op(B) = col^T, col stored (K, nb*P), so trans_b with ldb = nb*P.
      matmul(dw, dz, col, O, K, cols, cols, cols, K, false, true, T(1), accumulate || n0 > 0 ? T(1) : T(0));
      if (dx) {
        // dcol (K, nb*P) = w^T (K,O) . dz (O, nb*P): w stored (O,K), so trans_a with lda = K.
        matmul(col, w, dz, K, cols, O, K, cols, cols, true, false, T(1), T(0));
        col2im(dx + n0 * s.C * s.H * s.W, col, nb, s);
      }
    }
  });
}

// x (N,C,H,W), w (O,C,kh,kw), b (O) or null; z, y (N,O,Ho,Wo): one output element at a time
template <typename T>
void conv2d_forward_reference(T* y, T* z, const T* x, const T* w, const T* b, const Conv2dShape& s,
                              Activation act, T slope) {
  FUSEPROP_DISPATCH_ACTIVATION(act, A, {
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t o = 0; o < s.O; ++o)
        for (int64_t oh = 0; oh < s.Ho; ++oh)
          for (int64_t ow = 0; ow < s.Wo; ++ow) {
            T acc = 0;
            for (int64_t c = 0; c < s.C; ++c)
              for (int64_t i = 0; i < s.kh; ++i)
                for (int64_t j = 0; j < s.kw; ++j) {
                  const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
                  const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dil_w;
                  if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W)
                    acc += x[((n * s.C + c) * s.H + ih) * s.W + iw] * w[((o * s.C + c) * s.kh + i) * s.kw + j];
                }
            const int64_t at = ((n * s.O + o) * s.Ho + oh) * s.Wo + ow;
            z[at] = b ? acc + b[o] : acc;
            y[at] = act_forward<A>(z[at], slope);
          }
  });
}

// dy, z, y (N,O,Ho,Wo); x (N,C,H,W); w (O,C,kh,kw): each output's dz spread over what it read
template <typename T>
void conv2d_backward_reference(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const T* z, const T* y,
                               const Conv2dShape& s, Activation act, T slope, bool accumulate) {
  if (!accumulate) {
    std::fill_n(dw, s.O * s.K(), T(0));
    if (db) std::fill_n(db, s.O, T(0));
  }
  if (dx) std::fill_n(dx, s.N * s.C * s.H * s.W, T(0));
  FUSEPROP_DISPATCH_ACTIVATION(act, A, {
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t o = 0; o < s.O; ++o)
        for (int64_t oh = 0; oh < s.Ho; ++oh)
          for (int64_t ow = 0; ow < s.Wo; ++ow) {
            const int64_t at = ((n * s.O + o) * s.Ho + oh) * s.Wo + ow;
            const T g = A == Activation::identity ? dy[at] : dy[at] * act_derivative<A>(z[at], y[at], slope);
            if (db) db[o] += g;
            for (int64_t c = 0; c < s.C; ++c)
              for (int64_t i = 0; i < s.kh; ++i)
                for (int64_t j = 0; j < s.kw; ++j) {
                  const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
                  const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dil_w;
                  if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
                  const int64_t xi = ((n * s.C + c) * s.H + ih) * s.W + iw, wi = ((o * s.C + c) * s.kh + i) * s.kw + j;
                  dw[wi] += g * x[xi];
                  if (dx) dx[xi] += g * w[wi];
                }
          }
  });
}

#define FUSEPROP_INSTANTIATE(T)                                                                                     \
  template void conv2d_forward<T>(T*, T*, T*, const T*, const T*, const T*, const Conv2dShape&, Activation, T);     \
  template void conv2d_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*, const T*, const T*,               \
                                   const Conv2dShape&, Activation, T, bool);                                         \
  template void conv2d_forward_reference<T>(T*, T*, const T*, const T*, const T*, const Conv2dShape&, Activation, T); \
  template void conv2d_backward_reference<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*,          \
                                             const Conv2dShape&, Activation, T, bool);
FUSEPROP_INSTANTIATE(float)
FUSEPROP_INSTANTIATE(double)
#undef FUSEPROP_INSTANTIATE

}  // namespace fuseprop
