#include "ops/activations.h"

#include <algorithm>

#include "core/threads.h"

namespace fuseprop {

// x, y (n) elementwise: y = act(x)
template <typename T>
void activation_forward(T* y, const T* x, int64_t n, Activation act, T slope) {
  FUSEPROP_DISPATCH_ACTIVATION(act, A, {
    parallel_for(n, 4, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) y[i] = act_forward<A>(x[i], slope);
    });
  });
}

// dy, x, y, dx (n) elementwise: dx = dy * act'(x)
template <typename T>
void activation_backward(T* dx, const T* dy, const T* x, const T* y, int64_t n, Activation act, T slope) {
  FUSEPROP_DISPATCH_ACTIVATION(act, A, {
    parallel_for(n, 4, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) dx[i] = dy[i] * act_derivative<A>(x[i], y[i], slope);
    });
  });
}

// Row maximum that lets NaN through (so a NaN row stays NaN, as in NumPy).
template <typename T>
static T row_max(const T* x, int64_t C) {
  T m = x[0];
  for (int64_t c = 1; c < C; ++c) m = max_nan(m, x[c]);
  return m;
}

// x, y (B, C) row-major, softmax over each row
template <typename T>
void softmax_forward(T* y, const T* x, int64_t B, int64_t C) {
  if (C == 0) return;
  for (int64_t b = 0; b < B; ++b) {
    const T* xr = x + b * C;
    T* yr = y + b * C;
    const T m = row_max(xr, C);
    T sum = 0;
    for (int64_t c = 0; c < C; ++c) {
      yr[c] = std::exp(xr[c] - m);
      sum += yr[c];
    }
    const T inv = T(1) / sum;
    for (int64_t c = 0; c < C; ++c) yr[c] *= inv;
  }
}

// dy, y, dx (B, C): dx = y * (dy - sum_c dy*y)
template <typename T>
void softmax_backward(T* dx, const T* dy, const T* y, int64_t B, int64_t C) {
  for (int64_t b = 0; b < B; ++b) {
    const T* dyr = dy + b * C;
    const T* yr = y + b * C;
    T dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += dyr[c] * yr[c];
    for (int64_t c = 0; c < C; ++c) dx[b * C + c] = yr[c] * (dyr[c] - dot);
  }
}

// x, y (B, C): y = x - logsumexp(x) per row
template <typename T>
void log_softmax_forward(T* y, const T* x, int64_t B, int64_t C) {
  if (C == 0) return;
  for (int64_t b = 0; b < B; ++b) {
    const T* xr = x + b * C;
    const T m = row_max(xr, C);
    T sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += std::exp(xr[c] - m);
    const T lse = m + std::log(sum);
    for (int64_t c = 0; c < C; ++c) y[b * C + c] = xr[c] - lse;
  }
}

// dy, y, dx (B, C): dx = dy - exp(y) * sum_c dy
template <typename T>
void log_softmax_backward(T* dx, const T* dy, const T* y, int64_t B, int64_t C) {
  for (int64_t b = 0; b < B; ++b) {
    const T* dyr = dy + b * C;
    T sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += dyr[c];
    for (int64_t c = 0; c < C; ++c) dx[b * C + c] = dyr[c] - std::exp(y[b * C + c]) * sum;
  }
}

#define FUSEPROP_INSTANTIATE(T)                                                                        \
  template void activation_forward<T>(T*, const T*, int64_t, Activation, T);                           \
  template void activation_backward<T>(T*, const T*, const T*, const T*, int64_t, Activation, T);      \
  template void softmax_forward<T>(T*, const T*, int64_t, int64_t);                                    \
  template void softmax_backward<T>(T*, const T*, const T*, int64_t, int64_t);                         \
  template void log_softmax_forward<T>(T*, const T*, int64_t, int64_t);                                \
  template void log_softmax_backward<T>(T*, const T*, const T*, int64_t, int64_t);
FUSEPROP_INSTANTIATE(float)
FUSEPROP_INSTANTIATE(double)
#undef FUSEPROP_INSTANTIATE

}  // namespace fuseprop
