// Batch normalisation and layer normalisation on the device, forward and backward: plain C++ (no CUDA
// types), the twins of csrc/ops/norm.h with the same contracts, on the same scalar formulas
// (csrc/ops/norm_math.h). Pointers are device memory. Statistics and the backward's sums are in double;
// each channel (batch norm) or row (layer norm) is reduced by one block in a fixed tree, and layer norm's
// parameter gradients by a fixed partition of the rows added in partition order, so the bits never vary
// between runs (no atomics). dweight, dbias ACCUMULATE (+=); dx is WRITTEN.
#pragma once

#include <cstdint>

#include "core/common.h"

namespace fuseprop::cuda {

// x, y (N,C,S); weight, bias (C) or null; running_mean, running_var, save_mean, save_invstd (C). One block
// per channel. training: save_* = the batch mean and 1/sqrt(var + eps) (biased var); running_* (when not
// null) move toward the batch mean and the unbiased var by momentum, unless N*S == 0. Otherwise: save_* =
// running_mean and 1/sqrt(running_var + eps) (not null). y = act(z), z = (x - mean) * invstd * weight + bias.
void batch_norm_forward(float* y, float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                        const float* x, const float* weight, const float* bias, int64_t N, int64_t C, int64_t S,
                        bool training, double momentum, double eps, Activation act, float slope);

// dy, x, y, dx (N,C,S); weight, bias (C) or null (1, 0); mean, invstd (C) from the forward; y its output (read
// unless act is the identity). One block per channel, g = dy * act'(z) with z recomputed from x:
// dweight (C) += sum(g * xhat), dbias (C) += sum(g); dx = invstd * w * (g - mean(g) - xhat * mean(g * xhat))
// in training, else g * w * invstd. dx, dweight, dbias may each be null.
void batch_norm_backward(float* dx, float* dweight, float* dbias, const float* dy, const float* x, const float* y,
                         const float* weight, const float* bias, const float* mean, const float* invstd, int64_t N,
                         int64_t C, int64_t S, bool training, Activation act, float slope);

// x, y (M,D); weight, bias (D) or null; mean, rstd (M). One block per row: y = (x - mean) * rstd * w + b.
void layer_norm_forward(float* y, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                        int64_t M, int64_t D, double eps);

// Doubles of workspace layer_norm_backward needs for dweight and dbias: two per column per partition of rows.
int64_t layer_norm_backward_workspace(int64_t M, int64_t D);

// dy, x, dx (M,D); weight (D) or null (1); mean, rstd (M). dx (may be null): one block per row,
// rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w. dweight (D) += sum_rows dy * xhat,
// dbias (D) += sum_rows dy (each may be null): each partition of rows sums its column in row order into
// workspace (layer_norm_backward_workspace(M, D) doubles), then the partitions are added in order.
void layer_norm_backward(float* dx, float* dweight, float* dbias, double* workspace, const float* dy, const float* x,
                         const float* weight, const float* mean, const float* rstd, int64_t M, int64_t D);

}  // namespace fuseprop::cuda
