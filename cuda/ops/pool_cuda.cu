#include "cuda/ops/pool_cuda.h"

#include <cuda_runtime.h>

#include "cuda/core/launch.cuh"

namespace fuseprop::cuda {

namespace {

// A window's rows [h0, h1) and columns [w0, w1) clipped to the input (csrc/ops/pool.cpp's Window).
struct Window {
  int64_t h0, h1, w0, w1;
};
__device__ __forceinline__ Window window(const Pool2dShape& s, int64_t oh, int64_t ow) {
  const int64_t h = oh * s.stride_h - s.pad_h, w = ow * s.stride_w - s.pad_w;
  return {h > 0 ? h : 0, h + s.kh < s.H ? h + s.kh : s.H, w > 0 ? w : 0, w + s.kw < s.W ? w + s.kw : s.W};
}

__device__ __forceinline__ float divisor(const Pool2dShape& s, const Window& win, bool count_include_pad) {
  return count_include_pad ? float(s.kh * s.kw) : float((win.h1 - win.h0) * (win.w1 - win.w0));
}

// Output t of y (N,C,Ho,Wo) flat -> its plane and (oh, ow).
struct OutputAt {
  int64_t plane, oh, ow;
};
__device__ __forceinline__ OutputAt output_at(const Pool2dShape& s, int64_t t) {
  return {t / (s.Ho * s.Wo), (t / s.Wo) % s.Ho, t % s.Wo};
}

// x (N,C,H,W); y, indices (N,C,Ho,Wo), grid-stride over outputs
__global__ void max_pool2d_forward_kernel(float* y, int64_t* indices, const float* x, Pool2dShape s, int64_t n) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    const OutputAt o = output_at(s, t);
    const Window win = window(s, o.oh, o.ow);
    const float* xc = x + o.plane * s.H * s.W;
    float best = -INFINITY;
    int64_t at = win.h0 * s.W + win.w0;
    for (int64_t ih = win.h0; ih < win.h1; ++ih)
      for (int64_t iw = win.w0; iw < win.w1; ++iw) {
        const float v = xc[ih * s.W + iw];
        if (v > best || v != v) {  // a NaN takes the window; a later NaN takes it again
          best = v;
          at = ih * s.W + iw;
        }
      }
    y[t] = best;
    indices[t] = at;
  }
}

// dy, indices (N,C,Ho,Wo); dx (N,C,H,W) already zero: one thread per plane adds its outputs in order
__global__ void max_pool2d_backward_kernel(float* dx, const float* dy, const int64_t* indices, int64_t planes,
                                           int64_t HW, int64_t P) {
  for (int64_t pl = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; pl < planes; pl += int64_t(gridDim.x) * blockDim.x) {
    float* dxc = dx + pl * HW;
    const float* dyc = dy + pl * P;
    const int64_t* ic = indices + pl * P;
    for (int64_t p = 0; p < P; ++p) dxc[ic[p]] += dyc[p];
  }
}

// x (N,C,H,W); y (N,C,Ho,Wo), grid-stride over outputs
__global__ void avg_pool2d_forward_kernel(float* y, const float* x, Pool2dShape s, bool count_include_pad, int64_t n) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    const OutputAt o = output_at(s, t);
    const Window win = window(s, o.oh, o.ow);
    const float* xc = x + o.plane * s.H * s.W;
    float sum = 0.f;
    for (int64_t ih = win.h0; ih < win.h1; ++ih)
      for (int64_t iw = win.w0; iw < win.w1; ++iw) sum += xc[ih * s.W + iw];
    y[t] = __fdiv_rn(sum, divisor(s, win, count_include_pad));
  }
}

// The outputs [lo, hi) along one axis whose window (start o*stride - pad, extent k) covers input position i.
__device__ __forceinline__ void covering(int64_t i, int64_t k, int64_t stride, int64_t pad, int64_t out, int64_t& lo,
                                         int64_t& hi) {
  const int64_t first = i + pad - k + 1;  // o*stride >= first
  lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  hi = (i + pad) / stride + 1;  // o*stride <= i + pad
  if (hi > out) hi = out;
}

// dy (N,C,Ho,Wo); dx (N,C,H,W), grid-stride over inputs: each covering window's dy / divisor in output order
__global__ void avg_pool2d_backward_kernel(float* dx, const float* dy, Pool2dShape s, bool count_include_pad, int64_t n) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t plane = t / (s.H * s.W), ih = (t / s.W) % s.H, iw = t % s.W;
    int64_t oh0, oh1, ow0, ow1;
    covering(ih, s.kh, s.stride_h, s.pad_h, s.Ho, oh0, oh1);
    covering(iw, s.kw, s.stride_w, s.pad_w, s.Wo, ow0, ow1);
    const float* dyc = dy + plane * s.Ho * s.Wo;
    float sum = 0.f;
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = ow0; ow < ow1; ++ow)
        sum += __fdiv_rn(dyc[oh * s.Wo + ow], divisor(s, window(s, oh, ow), count_include_pad));
    dx[t] = sum;
  }
}

}  // namespace

void max_pool2d_forward(float* y, int64_t* indices, const float* x, const Pool2dShape& s) {
  const int64_t n = s.N * s.C * s.Ho * s.Wo;
  if (n == 0) return;
  max_pool2d_forward_kernel<<<grid_1d(n), kThreads>>>(y, indices, x, s, n);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void max_pool2d_backward(float* dx, const float* dy, const int64_t* indices, const Pool2dShape& s) {
  const int64_t planes = s.N * s.C, HW = s.H * s.W;
  if (planes * HW == 0) return;
  fill_zero(dx, size_t(planes * HW) * sizeof(float));
  max_pool2d_backward_kernel<<<grid_1d(planes), kThreads>>>(dx, dy, indices, planes, HW, s.Ho * s.Wo);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void avg_pool2d_forward(float* y, const float* x, const Pool2dShape& s, bool count_include_pad) {
  const int64_t n = s.N * s.C * s.Ho * s.Wo;
  if (n == 0) return;
  avg_pool2d_forward_kernel<<<grid_1d(n), kThreads>>>(y, x, s, count_include_pad, n);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void avg_pool2d_backward(float* dx, const float* dy, const Pool2dShape& s, bool count_include_pad) {
  const int64_t n = s.N * s.C * s.H * s.W;
  if (n == 0) return;
  avg_pool2d_backward_kernel<<<grid_1d(n), kThreads>>>(dx, dy, s, count_include_pad, n);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

}  // namespace fuseprop::cuda
