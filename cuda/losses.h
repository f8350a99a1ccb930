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

}  // namespace fuseprop::cuda
