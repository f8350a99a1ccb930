// 2-D convolution on the device, NCHW, forward and backward: plain C++ (no CUDA types), the twin of
// csrc/ops/conv2d.h with the same shapes (Conv2dShape) and contracts. Pointers are device memory.
//
// Lowering, as the CPU's: over a chunk of nb samples (conv2d_chunk, a function of the shape only), im2col
// writes the patch matrix col (K, nb*P), K = C*kh*kw, P = Ho*Wo, into the workspace, and the device GEMM
// (cuda/ops/matmul_cuda.h) does the products:
//   forward   out (O, nb*P) = w (O,K) . col;  an epilogue kernel adds b[o] and writes z, y = act(z) in NCHW
//   backward  dz (O, nb*P) = dy * act'(z), gathered from NCHW; db (O) += its rows (one block per channel)
//             dw (O,K) += dz . col^T;  dcol (K, nb*P) = w^T (K,O) . dz;  col2im gathers dcol into dx
// Every element is written by one thread with its reduction in a fixed order (the GEMM's k loop, a block's
// fixed tree, col2im's kernel offsets in order) and chunks run in order: the same bits on every run.
#pragma once

#include <cstdint>

#include "core/common.h"
#include "ops/conv2d.h"  // Conv2dShape

namespace fuseprop::cuda {

// Samples per GEMM: up to the batch, fewer where col would pass 2^24 elements (64 MiB).
int64_t conv2d_chunk(const Conv2dShape& s);
// Floats of device workspace the forward and backward need.
int64_t conv2d_forward_workspace(const Conv2dShape& s);
int64_t conv2d_backward_workspace(const Conv2dShape& s);

// x (N,C,H,W), w (O,C,kh,kw), b (O) or null; z, y (N,O,Ho,Wo): z = conv(x, w) + b, y = act(z). z and y may
// be the same buffer when act is identity. tf32: the GEMM on TF32 tensor cores.
void conv2d_forward(float* y, float* z, float* workspace, const float* x, const float* w, const float* b,
                    const Conv2dShape& s, Activation act, float slope, bool tf32);

// dy, z, y (N,O,Ho,Wo); x (N,C,H,W); w (O,C,kh,kw). dz = dy * act'(z); dw (O,C,kh,kw) += sum_n dz_n . col_n^T,
// db (O) += sum of dz over N, Ho, Wo; dx (N,C,H,W) = col2im(w^T dz) written. dx and db may be null; z and y
// may be null when act is identity. accumulate false writes dw and db instead of adding to them.
void conv2d_backward(float* dx, float* dw, float* db, float* workspace, const float* dy, const float* x, const float* w,
                     const float* z, const float* y, const Conv2dShape& s, Activation act, float slope, bool tf32,
                     bool accumulate = true);

}  // namespace fuseprop::cuda
