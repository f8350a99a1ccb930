// The recurrent cells' row loops (see recurrent_kernels.h): plain loops over restrict pointers that call the
// force-inlined formulas of recurrent_math.h, so the compiler vectorises them at the instruction set of the
// unit that includes this file. Each unit defines FUSEPROP_SIMD_NS first, so each copy has its own names
// (see gemm/gemm_simd.h for why).
#pragma once

#include <cstdint>

#include "ops/recurrent_math.h"

#ifndef FUSEPROP_SIMD_NS
#error "define FUSEPROP_SIMD_NS before including recurrent_simd.h"
#endif

namespace fuseprop {
namespace FUSEPROP_SIMD_NS {

template <typename T, bool Relu>
void rnn_forward_loop(T* __restrict h, T* __restrict y, const T* __restrict bias, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T v = rnn_cell_forward(h[j] + bias[j], Relu);
    h[j] = v;
    y[j] = v;
  }
}
template <typename T>
void rnn_forward_row(T* h, T* y, const T* bias, int64_t H, bool relu) {
  if (relu) rnn_forward_loop<T, true>(h, y, bias, H);
  else rnn_forward_loop<T, false>(h, y, bias, H);
}

template <typename T>
void lstm_forward_row(T* __restrict a, T* __restrict c, T* __restrict tanh_c, T* __restrict h, T* __restrict y,
                      const T* __restrict bias, const T* __restrict c_prev, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const LstmUnit<T> u = lstm_cell_forward(a[j] + bias[j], a[H + j] + bias[H + j], a[2 * H + j] + bias[2 * H + j],
                                            a[3 * H + j] + bias[3 * H + j], c_prev[j]);
    a[j] = u.i;
    a[H + j] = u.f;
    a[2 * H + j] = u.g;
    a[3 * H + j] = u.o;
    c[j] = u.c;
    tanh_c[j] = u.tanh_c;
    h[j] = u.h;
    y[j] = u.h;
  }
}

template <typename T>
void gru_forward_row(T* __restrict a, T* __restrict hn, T* __restrict h, T* __restrict y,
                     const T* __restrict bias, const T* __restrict b_hn, const T* __restrict h_prev, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T hn_j = hn[j] + b_hn[j];
    const GruUnit<T> u = gru_cell_forward(a[j] + bias[j], a[H + j] + bias[H + j], a[2 * H + j] + bias[2 * H + j], hn_j,
                                          h_prev[j]);
    a[j] = u.r;
    a[H + j] = u.z;
    a[2 * H + j] = u.n;
    hn[j] = hn_j;
    h[j] = u.h;
    y[j] = u.h;
  }
}

template <typename T, bool Relu>
void rnn_backward_loop(T* __restrict dp, const T* __restrict dy, const T* __restrict dh, const T* __restrict h,
                       int64_t H) {
  for (int64_t j = 0; j < H; ++j) dp[j] = rnn_cell_backward(dy[j] + dh[j], h[j], Relu);
}
template <typename T>
void rnn_backward_row(T* dp, const T* dy, const T* dh, const T* h, int64_t H, bool relu) {
  if (relu) rnn_backward_loop<T, true>(dp, dy, dh, h, H);
  else rnn_backward_loop<T, false>(dp, dy, dh, h, H);
}

template <typename T>
void lstm_backward_row(T* __restrict dp, T* __restrict dc, const T* __restrict dy, const T* __restrict dh,
                       const T* __restrict a, const T* __restrict tanh_c, const T* __restrict c_prev, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const LstmGrad<T> d = lstm_cell_backward(dy[j] + dh[j], dc[j], a[j], a[H + j], a[2 * H + j], a[3 * H + j],
                                             tanh_c[j], c_prev[j]);
    dp[j] = d.p_i;
    dp[H + j] = d.p_f;
    dp[2 * H + j] = d.p_g;
    dp[3 * H + j] = d.p_o;
    dc[j] = d.c_prev;
  }
}

template <typename T>
void gru_backward_row(T* __restrict dp, T* __restrict dh_prev, const T* __restrict dy, const T* __restrict dh,
                      const T* __restrict a, const T* __restrict hn, const T* __restrict h_prev, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const GruGrad<T> d = gru_cell_backward(dy[j] + dh[j], a[j], a[H + j], a[2 * H + j], hn[j], h_prev[j]);
    dp[j] = d.p_r;
    dp[H + j] = d.p_z;
    dp[2 * H + j] = d.hn;
    dp[3 * H + j] = d.a_n;
    dh_prev[j] = d.h_prev;
  }
}

// The table of this instruction set's loops.
template <typename T>
constexpr RecurrentRowKernels<T> row_kernels(const char* level) {
  return {level, rnn_forward_row<T>, lstm_forward_row<T>, gru_forward_row<T>, rnn_backward_row<T>,
          lstm_backward_row<T>, gru_backward_row<T>};
}

}  // namespace FUSEPROP_SIMD_NS
}  // namespace fuseprop
