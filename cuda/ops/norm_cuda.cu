#include "cuda/ops/norm_cuda.h"

#include <cuda_runtime.h>

#include "cuda/core/launch.cuh"
#include "cuda/core/warp.cuh"  // block_sum
#include "ops/activation_math.h"
#include "ops/norm_math.h"

namespace fuseprop::cuda {

namespace {

constexpr unsigned kMaxBlocks = 65535;  // blocks of the per-channel and per-row kernels (each loops past it)
constexpr int64_t kRowsPerPartition = 256;  // layer norm's parameter gradients: rows summed per partition

// The sums of a block's kThreads threads, a and b, in a fixed tree; every thread gets both.
__device__ __forceinline__ void block_sum2(double* s, double& a, double& b) {
  s[threadIdx.x] = a;
  __syncthreads();
  block_sum(s);
  a = s[0];
  __syncthreads();
  s[threadIdx.x] = b;
  __syncthreads();
  block_sum(s);
  b = s[0];
  __syncthreads();  // s is free again
}

// Element i of channel c of x (N,C,S): row i / S of the channel's N runs of S values.
__device__ __forceinline__ int64_t channel_at(int64_t i, int64_t c, int64_t C, int64_t S) {
  return ((i / S) * C + c) * S + i % S;
}

// x, y (N,C,S), one block per channel c (grid-stride over channels): the shifted sums in double (the shift
// is the channel's first value, as the CPU's float32 pass), the statistics, then y = act(z).
template <Activation A>
__global__ void __launch_bounds__(kThreads) batch_norm_forward_kernel(
    float* y, float* save_mean, float* save_invstd, float* running_mean, float* running_var, const float* x,
    const float* weight, const float* bias, int64_t N, int64_t C, int64_t S, bool training, double momentum, double eps,
    float slope) {
  __shared__ double s[kThreads];
  __shared__ double affine[3];  // mean, scale, bias
  const int64_t n = N * S;
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    MeanVar mv{0.0, 0.0};
    if (training) {
      const double shift = n ? double(x[c * S]) : 0.0;
      double s1 = 0.0, s2 = 0.0;
      for (int64_t i = threadIdx.x; i < n; i += kThreads) {
        const double d = double(x[channel_at(i, c, C, S)]) - shift;
        s1 += d;
        s2 += d * d;
      }
      block_sum2(s, s1, s2);
      mv = mean_var_from_shifted_sums(s1, s2, shift, n);
    }
    if (threadIdx.x == 0) {
      double mean, invstd;
      if (training) {
        mean = mv.mean;
        invstd = norm_invstd(mv.var, eps);
        if (running_mean && n > 0) {
          running_mean[c] = float(running_update(double(running_mean[c]), mv.mean, momentum));
          running_var[c] = float(running_update(double(running_var[c]), unbiased_var(mv.var, n), momentum));
        }
      } else {
        mean = double(running_mean[c]);
        invstd = norm_invstd(double(running_var[c]), eps);
      }
      save_mean[c] = float(mean);
      save_invstd[c] = float(invstd);
      affine[0] = mean;
      affine[1] = weight ? invstd * double(weight[c]) : invstd;
      affine[2] = bias ? double(bias[c]) : 0.0;
    }
    __syncthreads();
    const double mean = affine[0], scale = affine[1], b = affine[2];
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const int64_t at = channel_at(i, c, C, S);
      y[at] = act_forward<A>(float(norm_apply(double(x[at]), mean, scale, b)), slope);
    }
    __syncthreads();  // affine is rewritten by the next channel
  }
}

// The gradient reaching the normalised value: dy * act'(z), z recomputed from x as the forward computed it.
template <Activation A>
__device__ __forceinline__ double grad_at_norm(const float* dy, const float* x, const float* y, int64_t at, double m,
                                               double scale, double b, float slope) {
  if constexpr (A == Activation::identity) {
    return double(dy[at]);
  } else {
    const float z = float(norm_apply(double(x[at]), m, scale, b));
    return double(dy[at]) * double(act_derivative<A>(z, y[at], slope));
  }
}

// dy, x, y, dx (N,C,S), one block per channel: sum(g) and sum(g * (x - mean)) in double, g = dy * act'(z),
// then dx
template <Activation A>
__global__ void __launch_bounds__(kThreads) batch_norm_backward_kernel(
    float* dx, float* dweight, float* dbias, const float* dy, const float* x, const float* y, const float* weight,
    const float* bias, const float* mean, const float* invstd, int64_t N, int64_t C, int64_t S, bool training,
    float slope) {
  __shared__ double s[kThreads];
  const int64_t n = N * S;
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    const double m = double(mean[c]), is = double(invstd[c]), w = weight ? double(weight[c]) : 1.0;
    const double scale = weight ? is * double(weight[c]) : is, b = bias ? double(bias[c]) : 0.0;
    double sdy = 0.0, sdyx = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const int64_t at = channel_at(i, c, C, S);
      const double g = grad_at_norm<A>(dy, x, y, at, m, scale, b, slope);
      sdy += g;
      sdyx += g * (double(x[at]) - m);
    }
    block_sum2(s, sdy, sdyx);
    const double sdy_xhat = n ? sdyx * is : 0.0;  // never 0 * a NaN invstd of an empty batch
    if (threadIdx.x == 0) {
      if (dbias) dbias[c] += float(sdy);
      if (dweight) dweight[c] += float(sdy_xhat);
    }
    if (!dx) continue;
    const bool stats = training && n > 0;
    const double mean_g = stats ? w * sdy / double(n) : 0.0, mean_g_xhat = stats ? w * sdy_xhat / double(n) : 0.0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const int64_t at = channel_at(i, c, C, S);
      const double g = grad_at_norm<A>(dy, x, y, at, m, scale, b, slope);
      dx[at] = float(norm_backward_dx(g * w, (double(x[at]) - m) * is, is, mean_g, mean_g_xhat));
    }
  }
}

// x, y (M,D), one block per row (grid-stride over rows): shifted sums in double, then the row
__global__ void __launch_bounds__(kThreads) layer_norm_forward_kernel(float* y, float* mean, float* rstd, const float* x,
                                                                      const float* weight, const float* bias, int64_t M,
                                                                      int64_t D, double eps) {
  __shared__ double s[kThreads];
  for (int64_t r = blockIdx.x; r < M; r += gridDim.x) {
    const float* xr = x + r * D;
    const double shift = D ? double(xr[0]) : 0.0;
    double s1 = 0.0, s2 = 0.0;
    for (int64_t j = threadIdx.x; j < D; j += kThreads) {
      const double d = double(xr[j]) - shift;
      s1 += d;
      s2 += d * d;
    }
    block_sum2(s, s1, s2);
    const MeanVar mv = mean_var_from_shifted_sums(s1, s2, shift, D);
    const double rs = norm_invstd(mv.var, eps);
    if (threadIdx.x == 0) {
      mean[r] = float(mv.mean);
      rstd[r] = float(rs);
    }
    for (int64_t j = threadIdx.x; j < D; j += kThreads)
      y[r * D + j] = float(norm_apply(double(xr[j]), mv.mean, weight ? rs * double(weight[j]) : rs,
                                      bias ? double(bias[j]) : 0.0));
  }
}

// dy, x, dx (M,D), one block per row: sum(g) and sum(g * (x - mean)) with g = dy * w, then the row
__global__ void __launch_bounds__(kThreads) layer_norm_backward_dx_kernel(float* dx, const float* dy, const float* x,
                                                                          const float* weight, const float* mean,
                                                                          const float* rstd, int64_t M, int64_t D) {
  __shared__ double s[kThreads];
  for (int64_t r = blockIdx.x; r < M; r += gridDim.x) {
    const float *dyr = dy + r * D, *xr = x + r * D;
    const double m = double(mean[r]), rs = double(rstd[r]);
    double sg = 0.0, sgx = 0.0;
    for (int64_t j = threadIdx.x; j < D; j += kThreads) {
      const double g = weight ? double(dyr[j]) * double(weight[j]) : double(dyr[j]);
      sg += g;
      sgx += g * (double(xr[j]) - m);
    }
    block_sum2(s, sg, sgx);
    const double mean_g = sg / double(D), mean_g_xhat = sgx * rs / double(D);
    for (int64_t j = threadIdx.x; j < D; j += kThreads) {
      const double g = weight ? double(dyr[j]) * double(weight[j]) : double(dyr[j]);
      dx[r * D + j] = float(norm_backward_dx(g, (double(xr[j]) - m) * rs, rs, mean_g, mean_g_xhat));
    }
  }
}

// dy, x (M,D); partial (2, partitions, D): partition p's column sums of dy * xhat and dy over its rows,
// in row order; one thread per (partition, column), adjacent threads adjacent columns
__global__ void layer_norm_param_partial_kernel(double* partial, const float* dy, const float* x, const float* mean,
                                                const float* rstd, int64_t M, int64_t D, int64_t partitions) {
  const int64_t total = partitions * D;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = t / D, j = t % D;
    const int64_t r1 = (p + 1) * kRowsPerPartition < M ? (p + 1) * kRowsPerPartition : M;
    double sw = 0.0, sb = 0.0;
    for (int64_t r = p * kRowsPerPartition; r < r1; ++r) {
      const double g = double(dy[r * D + j]);
      sb += g;
      sw += g * ((double(x[r * D + j]) - double(mean[r])) * double(rstd[r]));
    }
    partial[t] = sw;
    partial[total + t] = sb;
  }
}

// partial (2, partitions, D) -> dweight, dbias (D) += the partitions' sums in partition order
__global__ void layer_norm_param_finish_kernel(float* dweight, float* dbias, const double* partial, int64_t D,
                                               int64_t partitions) {
  const int64_t total = partitions * D;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < D; j += int64_t(gridDim.x) * blockDim.x) {
    double sw = 0.0, sb = 0.0;
    for (int64_t p = 0; p < partitions; ++p) {
      sw += partial[p * D + j];
      sb += partial[total + p * D + j];
    }
    if (dweight) dweight[j] += float(sw);
    if (dbias) dbias[j] += float(sb);
  }
}

unsigned blocks_for(int64_t items) { return static_cast<unsigned>(items < kMaxBlocks ? items : kMaxBlocks); }

}  // namespace

void batch_norm_forward(float* y, float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                        const float* x, const float* weight, const float* bias, int64_t N, int64_t C, int64_t S,
                        bool training, double momentum, double eps, Activation act, float slope) {
  if (C == 0) return;
  FUSEPROP_DISPATCH_ACTIVATION(act, A, {
    batch_norm_forward_kernel<A><<<blocks_for(C), kThreads>>>(y, save_mean, save_invstd, running_mean, running_var, x,
                                                              weight, bias, N, C, S, training, momentum, eps, slope);
  });
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void batch_norm_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x, const float* y,
                         const float* weight, const float* bias, const float* mean, const float* invstd, int64_t N,
                         int64_t C, int64_t S, bool training, Activation act, float slope) {
  if (C == 0 || (!dx && !dweight && !dbias)) return;
  FUSEPROP_DISPATCH_ACTIVATION(act, A, {
    batch_norm_backward_kernel<A><<<blocks_for(C), kThreads>>>(dx, dweight, dbias, dy, x, y, weight, bias, mean, invstd,
                                                               N, C, S, training, slope);
  });
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void layer_norm_forward(float* y, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                        int64_t M, int64_t D, double eps) {
  if (M == 0) return;
  layer_norm_forward_kernel<<<blocks_for(M), kThreads>>>(y, mean, rstd, x, weight, bias, M, D, eps);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

int64_t layer_norm_backward_workspace(int64_t M, int64_t D) { return 2 * ceil_div(M, kRowsPerPartition) * D; }

void layer_norm_backward(float* dx, float* dweight, float* dbias, double* workspace, const float* dy, const float* x,
                         const float* weight, const float* mean, const float* rstd, int64_t M, int64_t D) {
  if (dx && M > 0) {
    layer_norm_backward_dx_kernel<<<blocks_for(M), kThreads>>>(dx, dy, x, weight, mean, rstd, M, D);
    FUSEPROP_CUDA_CHECK_LAUNCH();
  }
  if ((!dweight && !dbias) || D == 0 || M == 0) return;
  const int64_t partitions = ceil_div(M, kRowsPerPartition);
  layer_norm_param_partial_kernel<<<grid_1d(partitions * D), kThreads>>>(workspace, dy, x, mean, rstd, M, D, partitions);
  FUSEPROP_CUDA_CHECK_LAUNCH();
  layer_norm_param_finish_kernel<<<grid_1d(D), kThreads>>>(dweight, dbias, workspace, D, partitions);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

}  // namespace fuseprop::cuda
