// Batch normalisation and layer normalisation, forward and backward side by side.
//
// Statistics (means, variances, the backward's sums) accumulate in double for both dtypes. Each
// channel's (batch norm) or row's (layer norm) reduction runs on one thread in a fixed order, and
// threads split channels, rows or columns only, so results are bitwise the same at any thread count.
// As everywhere (core/common.h): dweight, dbias ACCUMULATE (+=); dx is WRITTEN.
// float follows the CPU level (the same source, ops/norm_simd.h, compiled per instruction set, every level
// computing the same bits); double always uses the baseline copy.
#pragma once

#include <cstdint>

#include "core/common.h"
#include "ops/norm_math.h"

namespace fuseprop {

// x, y (N,C,S) row-major, S the product of the spatial dims (1 for (N,C)); weight, bias (C) or null;
// running_mean, running_var, save_mean, save_invstd (C). Statistics are over N and S for each channel.
// training: save_* = the batch mean and 1/sqrt(var + eps) (biased var); running_* (when not null) move
// toward the batch mean and the unbiased var by momentum, unless N*S == 0 (an empty batch, whose save_*
// are NaN). Otherwise: save_* = running_mean and 1/sqrt(running_var + eps), which must not be null.
// y = act(z), z = (x - save_mean) * save_invstd * weight + bias computed from the statistics in double and
// rounded to T: the activation after the normalisation runs in the same pass (Sequential's BatchNorm + ReLU).
template <typename T>
void batch_norm_forward(T* y, T* save_mean, T* save_invstd, T* running_mean, T* running_var, const T* x,
                        const T* weight, const T* bias, int64_t N, int64_t C, int64_t S, bool training,
                        double momentum, double eps, Activation act = Activation::identity, T slope = T(0));

// dy, x, y, dx (N,C,S); weight, bias (C) or null (1, 0); mean, invstd (C): the forward's save_mean,
// save_invstd; y the forward's output. g = dy * act'(z), with z recomputed from x as the forward computed
// it (y and bias are read only when act is not the identity; y may then be null), is the gradient reaching
// the normalised value: dweight (C) += sum(g * xhat), dbias (C) += sum(g), with xhat = (x - mean) * invstd;
// dx, dweight and dbias may each be null (not wanted). training: dx = invstd * w * (g - mean(g) - xhat *
// mean(g * xhat)) (the batch statistics depend on x); otherwise dx = g * w * invstd.
template <typename T>
void batch_norm_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* y, const T* weight,
                         const T* bias, const T* mean, const T* invstd, int64_t N, int64_t C, int64_t S, bool training,
                         Activation act = Activation::identity, T slope = T(0));

// x, y (M,D) row-major, each row normalised over its D values; weight, bias (D) or null; mean, rstd (M).
// y = (x - mean) * rstd * weight + bias with rstd = 1/sqrt(var + eps) (biased var); D == 0: NaN statistics.
template <typename T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t M, int64_t D,
                        double eps);

// dy, x, dx (M,D); weight (D) or null (1); mean, rstd (M) from the forward. dx (may be null) =
// rstd * (g - mean(g) - xhat * mean(g * xhat)) per row with g = dy * w; dweight (D) += sum_rows dy * xhat,
// dbias (D) += sum_rows dy (each may be null).
template <typename T>
void layer_norm_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, const T* mean,
                         const T* rstd, int64_t M, int64_t D);

}  // namespace fuseprop
