#include "ops/losses.h"

#include <cmath>

#include "ops/loss_math.h"

namespace fuseprop {

// logits, dlogits (B,C); labels (B): softmax cross-entropy with label smoothing
template <typename T>
double cross_entropy_forward_backward(T* dlogits, const T* logits, const int64_t* labels, int64_t B, int64_t C,
                                      T label_smoothing, T grad_scale) {
  const SmoothedTarget<T> q = smoothed_target(label_smoothing, C);
  double total = 0;
  for (int64_t b = 0; b < B; ++b) {
    const T* x = logits + b * C;
    T m = x[0];
    for (int64_t c = 1; c < C; ++c) m = max_nan(m, x[c]);
    // exp(x_c - m) once: summed for the log-sum-exp and kept in dlogits, where dividing it by the sum
    // gives the softmax (no second exp per element).
    T sum = 0, sum_x = 0;
    T* d = dlogits ? dlogits + b * C : nullptr;
    for (int64_t c = 0; c < C; ++c) {
      const T e = std::exp(x[c] - m);
      if (d) d[c] = e;
      sum += e;
      sum_x += x[c];
    }
    const T lse = m + std::log(sum);
    const int64_t y = labels[b];
    ce_row_loss_add(total, lse, x[y], sum_x, label_smoothing, q);
    if (d)
      for (int64_t c = 0; c < C; ++c) d[c] = ce_grad(d[c] / sum, c == y, q, grad_scale);
  }
  return total;
}

// pred, target, dpred (n): squared error
template <typename T>
double mse_forward_backward(T* dpred, const T* pred, const T* target, int64_t n, T grad_scale) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T d = pred[i] - target[i];
    total += mse_value(d);
    if (dpred) dpred[i] = mse_grad(d, grad_scale);
  }
  return total;
}

// logits, target, dlogits (n): binary cross-entropy on logits, the stable form
template <typename T>
double bce_with_logits_forward_backward(T* dlogits, const T* logits, const T* target, int64_t n, T grad_scale) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T x = logits[i], t = target[i];
    total += double(bce_with_logits_value(x, t));
    if (dlogits) dlogits[i] = bce_with_logits_grad(x, t, grad_scale);
  }
  return total;
}

#define FUSEPROP_INSTANTIATE(T)                                                                                \
  template double cross_entropy_forward_backward<T>(T*, const T*, const int64_t*, int64_t, int64_t, T, T);    \
  template double mse_forward_backward<T>(T*, const T*, const T*, int64_t, T);                                 \
  template double bce_with_logits_forward_backward<T>(T*, const T*, const T*, int64_t, T);
FUSEPROP_INSTANTIATE(float)
FUSEPROP_INSTANTIATE(double)
#undef FUSEPROP_INSTANTIATE

}  // namespace fuseprop
