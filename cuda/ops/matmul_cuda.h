// GEMM on the device, and the linear layer built on it: plain C++ (no CUDA types). Pointers are
// device memory; every matrix is row-major with a leading dimension (csrc/core/common.h). Parameter
// gradients accumulate (+=), activation gradients are written (=).
#pragma once

#include <cstdint>

#include "core/common.h"

namespace fuseprop::cuda {

// c (M,N) = alpha op(a) op(b) + beta c; op(a) (M,K) is a (M,K), or a (K,M) transposed when trans_a;
// op(b) (K,N) is b (K,N), or b (N,K) transposed when trans_b. beta == 0: c is not read.
// tf32: tensor cores (WMMA m16n16k8, inputs rounded to TF32, float accumulation); else plain FP32 FMA.
void matmul(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
            int64_t ldc, bool trans_a, bool trans_b, float alpha, float beta, bool tf32);

// x (B,IN), w (OUT,IN) as PyTorch, b (OUT) or null; z, y (B,OUT).
// z = x w^T + b and y = act(z), both written by the GEMM's epilogue.
void linear_forward(float* y, float* z, const float* x, const float* w, const float* b, int64_t B, int64_t IN,
                    int64_t OUT, Activation act, float slope, bool tf32);

// dz (B,OUT) -> db (OUT) += sum over rows; each column is summed in row order, so the bits never vary.
void bias_backward(float* db, const float* dz, int64_t B, int64_t OUT);

// dy, z, y (B,OUT); x (B,IN); w (OUT,IN). dz = dy * act'(z) (into workspace, B*OUT floats, unused and
// may be null for identity); db (OUT) += sum_rows dz; dw (OUT,IN) += dz^T x; dx (B,IN) = dz w.
// dx and db may be null (not wanted).
void linear_backward(float* dx, float* dw, float* db, float* workspace, const float* dy, const float* x, const float* w,
                     const float* z, const float* y, int64_t B, int64_t IN, int64_t OUT, Activation act, float slope,
                     bool tf32);

// Median device time in milliseconds (CUDA events) of one matmul of device-resident (M,K) x (K,N)
// operands, over `repeats` runs after one warm-up: no host copies are timed.
double matmul_time_ms(int64_t M, int64_t N, int64_t K, bool tf32, int repeats);

}  // namespace fuseprop::cuda
