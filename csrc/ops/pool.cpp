#include "ops/pool.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/threads.h"

namespace fuseprop {

namespace {

// A window's rows [h0, h1) and columns [w0, w1) clipped to the input, and its divisor.
struct Window {
  int64_t h0, h1, w0, w1;
};
Window window(const Pool2dShape& s, int64_t oh, int64_t ow) {
  const int64_t h = oh * s.stride_h - s.pad_h, w = ow * s.stride_w - s.pad_w;
  return {std::max<int64_t>(h, 0), std::min(h + s.kh, s.H), std::max<int64_t>(w, 0), std::min(w + s.kw, s.W)};
}

template <typename T>
T divisor(const Pool2dShape& s, const Window& win, bool count_include_pad) {
  return count_include_pad ? T(s.kh * s.kw) : T((win.h1 - win.h0) * (win.w1 - win.w0));
}

// body(plane) for every (n, c) plane, ranges of planes per thread.
template <typename F>
void for_planes(const Pool2dShape& s, int64_t cost, F&& body) {
  parallel_for(s.N * s.C, cost, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) body(p);
  });
}

}  // namespace

// x (N,C,H,W); y, indices (N,C,Ho,Wo): max over each window, and where it was
template <typename T>
void max_pool2d_forward(T* y, int64_t* indices, const T* x, const Pool2dShape& s) {
  const int64_t HW = s.H * s.W, P = s.Ho * s.Wo;
  for_planes(s, P * s.kh * s.kw, [&](int64_t plane) {
    const T* xc = x + plane * HW;
    T* yc = y + plane * P;
    int64_t* ic = indices + plane * P;
    for (int64_t oh = 0; oh < s.Ho; ++oh)
      for (int64_t ow = 0; ow < s.Wo; ++ow) {
        const Window win = window(s, oh, ow);
        T best = -std::numeric_limits<T>::infinity();
        int64_t at = win.h0 * s.W + win.w0;
        for (int64_t ih = win.h0; ih < win.h1; ++ih)
          for (int64_t iw = win.w0; iw < win.w1; ++iw) {
            const T v = xc[ih * s.W + iw];
            if (v > best || std::isnan(v)) {
              best = v;
              at = ih * s.W + iw;
            }
          }
        yc[oh * s.Wo + ow] = best;
        ic[oh * s.Wo + ow] = at;
      }
  });
}

// dy, indices (N,C,Ho,Wo); dx (N,C,H,W): dx = 0, dx[indices] += dy
template <typename T>
void max_pool2d_backward(T* dx, const T* dy, const int64_t* indices, const Pool2dShape& s) {
  const int64_t HW = s.H * s.W, P = s.Ho * s.Wo;
  for_planes(s, P + HW, [&](int64_t plane) {
    T* dxc = dx + plane * HW;
    const T* dyc = dy + plane * P;
    const int64_t* ic = indices + plane * P;
    std::fill_n(dxc, HW, T(0));
    for (int64_t p = 0; p < P; ++p) dxc[ic[p]] += dyc[p];
  });
}

// x (N,C,H,W); y (N,C,Ho,Wo): the mean of each window
template <typename T>
void avg_pool2d_forward(T* y, const T* x, const Pool2dShape& s, bool count_include_pad) {
  const int64_t HW = s.H * s.W, P = s.Ho * s.Wo;
  for_planes(s, P * s.kh * s.kw, [&](int64_t plane) {
    const T* xc = x + plane * HW;
    T* yc = y + plane * P;
    for (int64_t oh = 0; oh < s.Ho; ++oh)
      for (int64_t ow = 0; ow < s.Wo; ++ow) {
        const Window win = window(s, oh, ow);
        T sum = 0;
        for (int64_t ih = win.h0; ih < win.h1; ++ih)
          for (int64_t iw = win.w0; iw < win.w1; ++iw) sum += xc[ih * s.W + iw];
        yc[oh * s.Wo + ow] = sum / divisor<T>(s, win, count_include_pad);
      }
  });
}

// dy (N,C,Ho,Wo); dx (N,C,H,W): dx = 0, then every window's dy / divisor added over the window
template <typename T>
void avg_pool2d_backward(T* dx, const T* dy, const Pool2dShape& s, bool count_include_pad) {
  const int64_t HW = s.H * s.W, P = s.Ho * s.Wo;
  for_planes(s, P * s.kh * s.kw + HW, [&](int64_t plane) {
    T* dxc = dx + plane * HW;
    const T* dyc = dy + plane * P;
    std::fill_n(dxc, HW, T(0));
    for (int64_t oh = 0; oh < s.Ho; ++oh)
      for (int64_t ow = 0; ow < s.Wo; ++ow) {
        const Window win = window(s, oh, ow);
        const T g = dyc[oh * s.Wo + ow] / divisor<T>(s, win, count_include_pad);
        for (int64_t ih = win.h0; ih < win.h1; ++ih)
          for (int64_t iw = win.w0; iw < win.w1; ++iw) dxc[ih * s.W + iw] += g;
      }
  });
}

#define FUSEPROP_INSTANTIATE(T)                                                                     \
  template void max_pool2d_forward<T>(T*, int64_t*, const T*, const Pool2dShape&);                  \
  template void max_pool2d_backward<T>(T*, const T*, const int64_t*, const Pool2dShape&);           \
  template void avg_pool2d_forward<T>(T*, const T*, const Pool2dShape&, bool);                      \
  template void avg_pool2d_backward<T>(T*, const T*, const Pool2dShape&, bool);
FUSEPROP_INSTANTIATE(float)
FUSEPROP_INSTANTIATE(double)
#undef FUSEPROP_INSTANTIATE

}  // namespace fuseprop
