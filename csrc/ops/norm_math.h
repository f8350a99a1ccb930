// The normalisation formulas, one scalar source each, for the CPU kernels (ops/norm.cpp) and their CUDA
// twins (cuda/ops/norm_cuda.cu). How a backend reduces a channel or a row (loops, lanes, warps) stays its
// own; these are the values per channel (batch norm), per row (layer norm) or per element. Statistics are
// in double.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/common.h"

namespace fuseprop {

// Mean and biased variance of n values from their sums s1 = sum(v - shift), s2 = sum((v - shift)^2).
// Shifting by a value near the mean (the first value, or a first estimate of the mean) keeps
// s2 - s1^2/n from cancelling when the mean is large against the spread. The variance is clamped at 0
// (rounding can make it slightly negative when every value is equal). n == 0 gives NaN for both.
struct MeanVar {
  double mean;
  double var;
};
FUSEPROP_HD FUSEPROP_FORCEINLINE MeanVar mean_var_from_shifted_sums(double s1, double s2, double shift, int64_t n) {
  const double inv_n = 1.0 / double(n);
  const double d = s1 * inv_n;
  const double var = (s2 - s1 * d) * inv_n;
  return {shift + d, var > 0.0 ? var : (var == var ? 0.0 : var)};  // NaN stays NaN
}

// invstd = 1 / sqrt(var + eps)
FUSEPROP_HD FUSEPROP_FORCEINLINE double norm_invstd(double var, double eps) { return 1.0 / std::sqrt(var + eps); }

// PyTorch's running-statistics update: running = (1 - momentum) running + momentum stat, where the
// variance's stat is the unbiased var * n / (n - 1) (n > 1: the bindings refuse n == 1 in training).
FUSEPROP_HD FUSEPROP_FORCEINLINE double running_update(double running, double stat, double momentum) {
  return (1.0 - momentum) * running + momentum * stat;
}
FUSEPROP_HD FUSEPROP_FORCEINLINE double unbiased_var(double var, int64_t n) { return var * double(n) / double(n - 1); }

// y = (x - mean) * invstd * w + b, with w and b folded into scale = invstd * w by the caller.
FUSEPROP_HD FUSEPROP_FORCEINLINE double norm_apply(double x, double mean, double scale, double b) {
  return (x - mean) * scale + b;
}

// The normalisation's backward through the batch (or row) statistics, for one element:
// dx = invstd * (g - mean(g) - xhat * mean(g * xhat)), where g = dy * w is the gradient reaching xhat,
// mean_g and mean_g_xhat are its averages over the n values that share the statistics, and
// xhat = (x - mean) * invstd. Without the statistics' dependence (batch norm in evaluation) dx = invstd * g.
FUSEPROP_HD FUSEPROP_FORCEINLINE double norm_backward_dx(double g, double xhat, double invstd, double mean_g,
                                                         double mean_g_xhat) {
  return invstd * (g - mean_g - xhat * mean_g_xhat);
}

}  // namespace fuseprop
