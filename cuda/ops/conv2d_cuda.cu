#include "cuda/ops/conv2d_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/core/launch.cuh"
#include "cuda/core/warp.cuh"  // block_sum
#include "cuda/ops/matmul_cuda.h"
#include "ops/activation_math.h"

namespace fuseprop::cuda {

namespace {

// The sizes the kernels read (Conv2dShape's K() and P() are host functions).
struct Geometry {
  int64_t C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, K, P;
};
Geometry geometry(const Conv2dShape& s) {
  return {s.C, s.H, s.W, s.O, s.kh, s.kw, s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w, s.Ho, s.Wo,
          s.K(), s.P()};
}

// x (nb,C,H,W), the chunk's samples; col (K, nb*P), one thread per element:
// col[(c*kh + i)*kw + j][n*P + oh*Wo + ow] = x[n][c][oh*sh - ph + i*dh][ow*sw - pw + j*dw], 0 outside.
__global__ void im2col_kernel(float* col, const float* x, Geometry g, int64_t nb) {
  const int64_t cols = nb * g.P, total = g.K * cols;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = t / cols, q = t % cols, n = q / g.P, p = q % g.P;
    const int64_t c = k / (g.kh * g.kw), i = (k / g.kw) % g.kh, j = k % g.kw;
    const int64_t ih = (p / g.Wo) * g.sh - g.ph + i * g.dh, iw = (p % g.Wo) * g.sw - g.pw + j * g.dw;
    col[t] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) ? x[((n * g.C + c) * g.H + ih) * g.W + iw] : 0.f;
  }
}

// dcol (K, nb*P) -> dx (nb,C,H,W), one thread per input element: the sum, over the kernel offsets (i, j) in
// order, of the dcol entry that im2col took from it (at most one per offset): col2im as a gather.
__global__ void col2im_kernel(float* dx, const float* dcol, Geometry g, int64_t nb) {
  const int64_t cols = nb * g.P, total = nb * g.C * g.H * g.W;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t iw = t % g.W, ih = (t / g.W) % g.H, c = (t / (g.H * g.W)) % g.C, n = t / (g.C * g.H * g.W);
    float sum = 0.f;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t hs = ih + g.ph - i * g.dh;  // oh * sh
      if (hs < 0 || hs % g.sh != 0 || hs / g.sh >= g.Ho) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t ws = iw + g.pw - j * g.dw;  // ow * sw
        if (ws < 0 || ws % g.sw != 0 || ws / g.sw >= g.Wo) continue;
        const int64_t k = (c * g.kh + i) * g.kw + j;
        sum += dcol[k * cols + n * g.P + (hs / g.sh) * g.Wo + ws / g.sw];
      }
    }
    dx[t] = sum;
  }
}

// out (O, nb*P) -> z, y (nb,O,P) of the chunk: v = out + b[o], z = v, y = act(v); one thread per element
template <Activation A>
__global__ void conv_epilogue_kernel(float* z, float* y, const float* out, const float* b, int64_t O, int64_t P,
                                     int64_t nb, float slope) {
  const int64_t total = nb * O * P;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = t % P, o = (t / P) % O, n = t / (O * P);
    const float acc = out[o * nb * P + n * P + p];
    const float v = b ? acc + b[o] : acc;
    z[t] = v;
    y[t] = act_forward<A>(v, slope);
  }
}

// dy, z, y (nb,O,P) of the chunk -> dz (O, nb*P) = dy * act'(z); one thread per element
template <Activation A>
__global__ void conv_dz_kernel(float* dz, const float* dy, const float* z, const float* y, int64_t O, int64_t P,
                               int64_t nb, float slope) {
  const int64_t total = nb * O * P;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = t % P, o = (t / P) % O, n = t / (O * P);
    if constexpr (A == Activation::identity) {  // z and y may be null
      dz[o * nb * P + n * P + p] = dy[t];
    } else {
      dz[o * nb * P + n * P + p] = dy[t] * act_derivative<A>(z[t], y[t], slope);
    }
  }
}

// dz (O, cols) -> db (O) += each row's sum: one block per row, strided partial sums in double added in a
// fixed tree (grid-stride over rows)
__global__ void __launch_bounds__(kThreads) conv_bias_backward_kernel(float* db, const float* dz, int64_t O,
                                                                      int64_t cols) {
  __shared__ double s[kThreads];
  for (int64_t o = blockIdx.x; o < O; o += gridDim.x) {
    double acc = 0.0;
    for (int64_t q = threadIdx.x; q < cols; q += kThreads) acc += double(dz[o * cols + q]);
    s[threadIdx.x] = acc;
    __syncthreads();
    block_sum(s);
    if (threadIdx.x == 0) db[o] += float(s[0]);
    __syncthreads();
  }
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>(std::min<int64_t>(rows, 65535)); }

}  // namespace

int64_t conv2d_chunk(const Conv2dShape& s) {
  const int64_t per_sample = std::max<int64_t>(1, s.K() * s.P());
  return std::max<int64_t>(1, std::min(s.N, (int64_t(1) << 24) / per_sample));
}

int64_t conv2d_forward_workspace(const Conv2dShape& s) {
  if (s.N == 0) return 0;
  return (s.K() + s.O) * cuda::conv2d_chunk(s) * s.P();  // col, then the GEMM's out
}

int64_t conv2d_backward_workspace(const Conv2dShape& s) {
  if (s.N == 0) return 0;
  return (s.K() + s.O) * cuda::conv2d_chunk(s) * s.P();  // col (then dcol in its place), then dz
}

void conv2d_forward(float* y, float* z, float* workspace, const float* x, const float* w, const float* b,
                    const Conv2dShape& s, Activation act, float slope, bool tf32) {
  const Geometry g = geometry(s);
  const int64_t nb_max = cuda::conv2d_chunk(s);
  float* col = workspace;
  float* out = workspace + g.K * nb_max * g.P;
  for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
    const int64_t nb = std::min(nb_max, s.N - n0), cols = nb * g.P;
    if (g.K * cols > 0) {
      im2col_kernel<<<grid_1d(g.K * cols), kThreads>>>(col, x + n0 * g.C * g.H * g.W, g, nb);
      FUSEPROP_CUDA_CHECK_LAUNCH();
    }
    // out (O, nb*P) = w (O,K) . col (K, nb*P)
    matmul(out, w, col, g.O, cols, g.K, g.K, cols, cols, false, false, 1.f, 0.f, tf32);
    const int64_t n_out = nb * g.O * g.P;
    if (n_out == 0) continue;
    FUSEPROP_DISPATCH_ACTIVATION(act, A, conv_epilogue_kernel<A><<<grid_1d(n_out), kThreads>>>(
                                             z + n0 * g.O * g.P, y + n0 * g.O * g.P, out, b, g.O, g.P, nb, slope));
    FUSEPROP_CUDA_CHECK_LAUNCH();
  }
}

void conv2d_backward(float* dx, float* dw, float* db, float* workspace, const float* dy, const float* x, const float* w,
                     const float* z, const float* y, const Conv2dShape& s, Activation act, float slope, bool tf32,
                     bool accumulate) {
  const Geometry g = geometry(s);
  const int64_t nb_max = cuda::conv2d_chunk(s);
  if (!accumulate) {
    fill_zero(dw, size_t(g.O * g.K) * sizeof(float));
    if (db) fill_zero(db, size_t(g.O) * sizeof(float));
  }
  float* col = workspace;  // col (K, nb*P), then dcol in the same place
  float* dz = workspace + g.K * nb_max * g.P;
  for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
    const int64_t nb = std::min(nb_max, s.N - n0), cols = nb * g.P, n_out = nb * g.O * g.P;
    if (n_out > 0) {
      const int64_t at = n0 * g.O * g.P;
      const float* zc = z ? z + at : nullptr;
      const float* yc = y ? y + at : nullptr;
      FUSEPROP_DISPATCH_ACTIVATION(act, A, conv_dz_kernel<A><<<grid_1d(n_out), kThreads>>>(
                                               dz, dy + at, zc, yc, g.O, g.P, nb, slope));
      FUSEPROP_CUDA_CHECK_LAUNCH();
      if (db) {
        conv_bias_backward_kernel<<<row_blocks(g.O), kThreads>>>(db, dz, g.O, cols);
        FUSEPROP_CUDA_CHECK_LAUNCH();
      }
    }
    if (g.K * cols > 0) {
      im2col_kernel<<<grid_1d(g.K * cols), kThreads>>>(col, x + n0 * g.C * g.H * g.W, g, nb);
      FUSEPROP_CUDA_CHECK_LAUNCH();
    }
    // dw (O,K) += dz (O, nb*P) . col^T: op(b) = col^T, col stored (K, nb*P), so trans_b with ldb = nb*P
    matmul(dw, dz, col, g.O, g.K, cols, cols, cols, g.K, false, true, 1.f, 1.f, tf32);
    if (!dx) continue;
    // dcol (K, nb*P) = w^T (K,O) . dz (O, nb*P): w stored (O,K), so trans_a with lda = K
    matmul(col, w, dz, g.K, cols, g.O, g.K, cols, cols, true, false, 1.f, 0.f, tf32);
    const int64_t n_in = nb * g.C * g.H * g.W;
    if (n_in > 0) {
      col2im_kernel<<<grid_1d(n_in), kThreads>>>(dx + n0 * g.C * g.H * g.W, col, g, nb);
      FUSEPROP_CUDA_CHECK_LAUNCH();
    }
  }
}

}  // namespace fuseprop::cuda
