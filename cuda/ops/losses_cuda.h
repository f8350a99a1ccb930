// Losses on the device, value and gradient in one pass: plain C++ (no CUDA types). Pointers are
// device memory. The total is the sum of per-row losses in a fixed order, so it is the same bits
// on every run.
#pragma once

#include <cstdint>

namespace fuseprop::cuda {

// logits, dlogits (B,C) row-major; labels (B) in [0,C) (checked by the caller); row_loss (B) workspace;
// total (1) the UNREDUCED sum of the row losses (the caller divides for "mean").
// q = (1 - eps) onehot + eps/C; row_loss_b = -sum_c q_c log_softmax(logits)_bc; dlogits = (softmax - q) * grad_scale
void cross_entropy_forward_backward(double* total, float* dlogits, double* row_loss, const float* logits,
                                    const int64_t* labels, int64_t B, int64_t C, float label_smoothing, float grad_scale);

// logits (B,C), labels (B) -> *correct += rows whose first largest logit is at the label (numpy's argmax).
void count_correct(int64_t* correct, const float* logits, const int64_t* labels, int64_t B, int64_t C);

// logits, target (n) -> *hits += elements whose logit's sign gives the target (binary_hit, ops/loss_math.h).
void count_binary_hits(int64_t* hits, const float* logits, const float* target, int64_t n);

// pred, target, dpred (n); partial: kLossPartials doubles of workspace. total = UNREDUCED sum (pred - target)^2;
// dpred = 2 (pred - target) * grad_scale.
constexpr int kLossPartials = 1024;
void mse_forward_backward(double* total, float* dpred, double* partial, const float* pred, const float* target,
                          int64_t n, float grad_scale);

// logits, target, dlogits (n): total = UNREDUCED sum max(x,0) - x t + log1p(exp(-|x|));
// dlogits = (sigmoid(x) - t) * grad_scale
void bce_with_logits_forward_backward(double* total, float* dlogits, double* partial, const float* logits,
                                      const float* target, int64_t n, float grad_scale);

}  // namespace fuseprop::cuda
