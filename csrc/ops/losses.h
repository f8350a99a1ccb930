// Losses: value and gradient in one pass. Each returns the UNREDUCED sum of per-element losses in
// double (a fixed summation order); the caller divides for "mean". grad_scale multiplies the
// gradient (1/N for mean, 1 for sum). A null gradient pointer computes the value only.
#pragma once

#include <cstdint>

namespace fuseprop {

// logits, dlogits (B,C); labels (B) in [0,C) (checked by the caller).
// Target q = (1 - eps) onehot + eps/C; loss_b = -sum_c q_c log_softmax(logits)_bc; dlogits = (softmax - q) * grad_scale
template <typename T>
double cross_entropy_forward_backward(T* dlogits, const T* logits, const int64_t* labels, int64_t B, int64_t C,
                                      T label_smoothing, T grad_scale);

// pred, target, dpred (n): loss = sum (pred - target)^2, dpred = 2 (pred - target) * grad_scale
template <typename T>
double mse_forward_backward(T* dpred, const T* pred, const T* target, int64_t n, T grad_scale);

// logits, target, dlogits (n): l = max(x,0) - x t + log1p(exp(-|x|)), dlogits = (sigmoid(x) - t) * grad_scale
template <typename T>
double bce_with_logits_forward_backward(T* dlogits, const T* logits, const T* target, int64_t n, T grad_scale);

}  // namespace fuseprop
