// 2-D max and average pooling, NCHW, forward and backward side by side, as PyTorch's max_pool2d (with
// return_indices) and avg_pool2d (ceil_mode False, no dilation, no divisor override).
// Each (n, c) plane is independent: threads take ranges of planes, and every output and every input
// gradient is computed by one thread in a fixed order, so results never depend on the thread count.
#pragma once

#include <cstdint>

namespace fuseprop {

// Sizes of one pooling: x (N,C,H,W), a kh x kw window, y (N,C,Ho,Wo), Ho = (H + 2 pad_h - kh) / stride_h + 1.
struct Pool2dShape {
  int64_t N, C, H, W;
  int64_t kh, kw, stride_h, stride_w, pad_h, pad_w;
  int64_t Ho, Wo;
};

// x (N,C,H,W); y, indices (N,C,Ho,Wo): y = the window's max over its positions inside the input (padding
// is -inf), indices = its flat place ih*W + iw in the input plane. As PyTorch: the first max on ties in
// row-major window order, a NaN wins (the last NaN of the window), a window of -inf points at its first
// position inside the input.
template <typename T>
void max_pool2d_forward(T* y, int64_t* indices, const T* x, const Pool2dShape& s);

// dy, indices (N,C,Ho,Wo); dx (N,C,H,W) written: dx = 0, then dx[indices] += dy, plane by plane, in output
// order. Every index is in [0, H*W) (the bindings check).
template <typename T>
void max_pool2d_backward(T* dx, const T* dy, const int64_t* indices, const Pool2dShape& s);

// x (N,C,H,W); y (N,C,Ho,Wo) = the window's sum (row-major order) / its divisor: kh*kw with
// count_include_pad, else the number of the window's positions inside the input.
template <typename T>
void avg_pool2d_forward(T* y, const T* x, const Pool2dShape& s, bool count_include_pad);

// dy (N,C,Ho,Wo); dx (N,C,H,W) written: each dy / divisor added to every input position of its window.
template <typename T>
void avg_pool2d_backward(T* dx, const T* dy, const Pool2dShape& s, bool count_include_pad);

}  // namespace fuseprop
