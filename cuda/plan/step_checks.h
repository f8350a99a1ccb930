// What a training step checks and reduces on the device between backward and update, so the host
// never waits in the middle of a step: non-finite flags, the global gradient norm, clipping.
// Plain C++ (no CUDA types); pointers are device memory; everything is queued on the default stream.
#pragma once

#include <cstdint>

namespace fuseprop::cuda {

// The flags a step keeps on the device; one copy to the host at the end of the step reads them all.
struct StepFlags {
  double loss_total;     // the loss's unreduced sum
  int64_t correct;       // cross-entropy: rows whose first largest logit is at the label
  double grad_norm;      // the global L2 norm before clipping (written only when clipping)
  int32_t skip;          // 1: the loss or a gradient is not finite; the update kernels do nothing
  int32_t bad_grad;      // the first parameter slot whose gradient is not finite (INT32_MAX: none)
  int32_t bad_param;     // the first parameter slot the update made non-finite (INT32_MAX: none)
  int32_t pad;
  uint64_t bad_label;    // the first row whose label is outside [0, C) (UINT64_MAX: none); it sets skip too
};

// flags: loss_total = correct = grad_norm = 0, skip = 0, bad_grad = bad_param = INT32_MAX.
void reset_flags(StepFlags* flags);
// labels (B): the first row whose label is outside [0, C) -> bad_label, skip = 1; clean (B) gets the labels
// with each bad one replaced by 0, so no kernel after it can read outside a row.
void check_labels(StepFlags* flags, int64_t* clean, const int64_t* labels, int64_t B, int64_t C);
// flags->loss_total not finite -> skip = 1.
void flag_nonfinite_loss(StepFlags* flags);
// x (n): any element not finite -> bad_grad = min(bad_grad, slot), skip = 1 (as_param: bad_param, no skip).
void flag_nonfinite(StepFlags* flags, const float* x, int64_t n, int32_t slot, bool as_param);
// x (n) -> *out = sum x in one block, the same order on every run (n may be 0: *out = 0).
void sum_fixed_order(double* out, const double* x, int64_t n);
// x (n) -> *out = sum x^2 in double, the same order on every run (partial: kMaxPartials doubles of workspace).
constexpr int kMaxPartials = 1024;
void sum_squares(double* out, double* partial, const float* x, int64_t n);
// parts (n_parts): the squared norms of every gradient. norm = sqrt(sum parts) in slot order, written to
// flags->grad_norm; unless flags->skip, every x (n) is scaled by max_norm / (norm + 1e-6) when that is below 1.
void write_grad_norm(StepFlags* flags, const double* parts, int n_parts);
void clip_by_norm(float* x, int64_t n, const StepFlags* flags, double max_norm);

}  // namespace fuseprop::cuda
