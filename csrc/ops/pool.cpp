#include "ops/pool.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/common.h"
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

// One window position of a max: v at flat place i. Branch-free (on real data "v > best" is a coin toss);
// a NaN takes the window, the last NaN wins, as PyTorch's kernel does.
// (gcc turns "take ? v : best" on floats into two branches; the select is spelled out as bit masks.)
template <typename T>
FUSEPROP_FORCEINLINE void max_step(T v, int64_t i, T& best, int64_t& at) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  const bool take = (v > best) | (v != v);
  const Bits mask = Bits(0) - Bits(take);
  Bits vb, bb;
  std::memcpy(&vb, &v, sizeof(T));
  std::memcpy(&bb, &best, sizeof(T));
  bb = (vb & mask) | (bb & ~mask);
  std::memcpy(&best, &bb, sizeof(T));
  const int64_t imask = -int64_t(take);
  at = (i & imask) | (at & ~imask);
}

// The 2x2, stride 2, unpadded window (every CNN's pooling) of one plane's output row oh, columns [0, Wo):
// the four values in registers, no clipping and no index arithmetic per position but the row's.
// 128x32x28x28 float32, 1 thread, Zen 5: 12.6 ms through the general loop, this: see max_pool2d_forward.
template <typename T>
void max_pool_row_2x2(T* yr, int64_t* ir, const T* xc, int64_t W, int64_t oh, int64_t Wo) {
  const int64_t top = 2 * oh * W;
  const T* r0 = xc + top;
  const T* r1 = r0 + W;
  for (int64_t ow = 0; ow < Wo; ++ow) {
    const int64_t c = 2 * ow;
    T best = r0[c];  // the first position always starts the window (a NaN here is overtaken by a later one)
    int64_t at = top + c;
    max_step(r0[c + 1], top + c + 1, best, at);
    max_step(r1[c], top + W + c, best, at);
    max_step(r1[c + 1], top + W + c + 1, best, at);
    yr[ow] = best;
    ir[ow] = at;
  }
}

// x (N,C,H,W); y, indices (N,C,Ho,Wo): max over each window, and where it was
template <typename T>
void max_pool2d_forward(T* y, int64_t* indices, const T* x, const Pool2dShape& s) {
  const int64_t HW = s.H * s.W, P = s.Ho * s.Wo;
  const bool two_by_two = s.kh == 2 && s.kw == 2 && s.stride_h == 2 && s.stride_w == 2 && s.pad_h == 0 && s.pad_w == 0;
  for_planes(s, P * s.kh * s.kw, [&](int64_t plane) {
    const T* xc = x + plane * HW;
    T* yc = y + plane * P;
    int64_t* ic = indices + plane * P;
    if (two_by_two) {
      for (int64_t oh = 0; oh < s.Ho; ++oh) max_pool_row_2x2(yc + oh * s.Wo, ic + oh * s.Wo, xc, s.W, oh, s.Wo);
      return;
    }
    for (int64_t oh = 0; oh < s.Ho; ++oh)
      for (int64_t ow = 0; ow < s.Wo; ++ow) {
        const Window win = window(s, oh, ow);
        T best = -std::numeric_limits<T>::infinity();
        int64_t at = win.h0 * s.W + win.w0;
        for (int64_t ih = win.h0; ih < win.h1; ++ih)
          for (int64_t iw = win.w0; iw < win.w1; ++iw) {
            max_step(xc[ih * s.W + iw], ih * s.W + iw, best, at);
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
