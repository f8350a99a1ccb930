// 2-D convolution, NCHW, forward and backward side by side: y = act(conv(x, w) + b), PyTorch's Conv2d
// (cross-correlation, weight (O,C,kh,kw), zero padding, stride, dilation; no groups).
//
// Lowering (chosen by measurement: see conv2d.cpp, above conv2d_chunk): im2col over a chunk of samples,
// then the GEMM (gemm/matmul.h). For a chunk of nb samples the patch matrix col (K, nb*P), K = C*kh*kw,
// P = Ho*Wo, holds col[(c*kh + i)*kw + j][n*P + oh*Wo + ow] =
// x[n][c][oh*sh - ph + i*dh][ow*sw - pw + j*dw] (0 outside the input), and
//   forward   z (O, nb*P) = w (O,K) . col             (bias and activation on each finished tile)
//   backward  dw (O,K)   += dz (O, nb*P) . col^T      (dz gathered from NCHW into (O, nb*P) as it is formed)
//             dcol (K, nb*P) = w^T (K,O) . dz, then col2im scatter-adds dcol into dx.
// The chunk size is a function of the shape only (conv2d_chunk), never of the thread count, and chunks
// are summed in order, so results are bitwise identical whatever the thread count.
#pragma once

#include <cstdint>

#include "core/common.h"

namespace fuseprop {

// Sizes of one convolution: x (N,C,H,W), w (O,C,kh,kw), y and z (N,O,Ho,Wo).
struct Conv2dShape {
  int64_t N, C, H, W;
  int64_t O, kh, kw;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t Ho, Wo;  // conv2d_out_size of H and W
  int64_t K() const { return C * kh * kw; }
  int64_t P() const { return Ho * Wo; }
};

// PyTorch's output extent: (in + 2 pad - dil (k - 1) - 1) / stride + 1; < 1 when the kernel is larger than
// the padded input (the bindings reject that before any kernel runs).
inline int64_t conv2d_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  const int64_t span = in + 2 * pad - dil * (k - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

// Samples per GEMM: a function of the shape alone.
int64_t conv2d_chunk(const Conv2dShape& s);
// Workspace elements the fast kernels need (the scalar reference needs none).
int64_t conv2d_forward_workspace(const Conv2dShape& s);
int64_t conv2d_backward_workspace(const Conv2dShape& s, Activation act);

// x (N,C,H,W), w (O,C,kh,kw), b (O) or null; z, y (N,O,Ho,Wo): z = conv(x, w) + b (kept for backward),
// y = act(z), both written from each GEMM tile while it is in cache. z and y may be the same buffer when
// act is identity. workspace holds conv2d_forward_workspace(s) elements.
template <typename T>
void conv2d_forward(T* y, T* z, T* workspace, const T* x, const T* w, const T* b, const Conv2dShape& s,
                    Activation act, T slope);

// dy, z, y (N,O,Ho,Wo); x (N,C,H,W); w (O,C,kh,kw). dz = dy * act'(z); accumulates dw (O,C,kh,kw) +=
// sum_n dz_n . col_n^T and db (O) += sum over N, Ho, Wo of dz; writes dx (N,C,H,W) = col2im(w^T dz).
// dx and db may be null (not wanted); z and y may be null when act is identity. workspace holds
// conv2d_backward_workspace(s, act) elements. accumulate false writes dw and db instead of adding to them.
template <typename T>
void conv2d_backward(T* dx, T* dw, T* db, T* workspace, const T* dy, const T* x, const T* w, const T* z,
                     const T* y, const Conv2dShape& s, Activation act, T slope, bool accumulate = true);

// The readable loops with the same contracts (no workspace): the reference the fast kernels are checked
// against, one output element at a time.
template <typename T>
void conv2d_forward_reference(T* y, T* z, const T* x, const T* w, const T* b, const Conv2dShape& s,
                              Activation act, T slope);
template <typename T>
void conv2d_backward_reference(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const T* z, const T* y,
                               const Conv2dShape& s, Activation act, T slope, bool accumulate = true);

// Tests and benchmarks: samples per GEMM forced to n (0: conv2d_chunk's choice).
void set_conv2d_chunk_override(int64_t n);

}  // namespace fuseprop
