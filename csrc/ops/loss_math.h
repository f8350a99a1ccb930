// The loss formulas, one scalar source each, compiled by both backends: the CPU losses (ops/losses.cpp),
// the CUDA losses (cuda/ops/losses_cuda.cu) and the fused MLP kernel's loss (cuda/plan/fused_mlp.cu).
// How a backend reduces rows and elements (loops, warps, fixed-order trees) stays its own; these are the
// values per row or per element. Losses are summed in double; gradients are in the data's type.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/common.h"
#include "ops/activation_math.h"

namespace fuseprop {

// ---- softmax cross-entropy with label smoothing eps over C classes: q = (1 - eps) onehot + eps/C.
template <typename T>
struct SmoothedTarget {
  T on;   // q at the label
  T off;  // q at every other class
};

template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE SmoothedTarget<T> smoothed_target(T label_smoothing, int64_t C) {
  const T off = label_smoothing / T(C);
  return {T(1) - label_smoothing + off, off};
}

// A row's loss -sum_c q_c (x_c - lse) = lse - (1-eps) x_label - (eps/C) sum_c x_c, with lse the row's
// log-sum-exp, added to acc term by term in double (the CPU adds its rows straight into one total, in
// this order). The last term is skipped at eps = 0, where 0 * (-inf) would be NaN.
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE void ce_row_loss_add(double& acc, T lse, T x_label, T sum_x, T label_smoothing,
                                                      SmoothedTarget<T> q) {
  acc += double(lse) - double(T(1) - label_smoothing) * double(x_label);
  if (label_smoothing != T(0)) acc -= double(q.off) * double(sum_x);
}

// d loss / d x_c = (softmax_c - q_c) * grad_scale, given the softmax value p of that logit.
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T ce_grad(T p, bool is_label, SmoothedTarget<T> q, T grad_scale) {
  return (p - (is_label ? q.on : q.off)) * grad_scale;
}

// ---- binary cross-entropy on a logit x with target t, the stable form: max(x,0) - x t + log1p(exp(-|x|)).
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T bce_with_logits_value(T x, T t) {
  const T relu_x = x > T(0) ? x : T(0);
  return relu_x - x * t + std::log1p(std::exp(-std::fabs(x)));
}

// d / dx = (sigmoid(x) - t) * grad_scale
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T bce_with_logits_grad(T x, T t, T grad_scale) {
  return (act_forward<Activation::sigmoid>(x, T(0)) - t) * grad_scale;
}

// A binary prediction is right when the logit's sign gives the target: x > 0 (sigmoid > 1/2) for t >= 1/2
// (keras' binary accuracy at threshold 1/2; fit and evaluate report it for BCEWithLogitsLoss).
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE bool binary_hit(T x, T t) {
  return (x > T(0)) == (t >= T(0.5));
}

// ---- squared error of d = pred - target: d^2 in double; d / dpred = 2 d * grad_scale.
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE double mse_value(T d) {
  return double(d) * double(d);
}

template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T mse_grad(T d, T grad_scale) {
  return T(2) * d * grad_scale;
}

}  // namespace fuseprop
