// The recurrent cells' formulas, one scalar source each, for the CPU loops (ops/recurrent_simd.h, compiled
// once per instruction set) and a CUDA twin: each cell's forward for one hidden unit of one row, and its
// derivative right beside it. PyTorch's cells and gate order:
//   rnn   h' = act(p)                  p = W_ih x + b_ih + W_hh h + b_hh; act tanh or relu
//   lstm  i, f, g, o = sig(p_i), sig(p_f), tanh(p_g), sig(p_o)   (p: 4H pre-activations, that order)
//         c' = f c + i g,  h' = o tanh(c')
//   gru   r, z = sig(p_r), sig(p_z);  n = tanh(a_n + r hn),  a_n = W_in x + b_in,  hn = W_hn h + b_hn
//         h' = n + z (h - n)           (PyTorch's form of (1 - z) n + z h)
// float's sigmoid and tanh are written out (exp by Cody-Waite reduction and a polynomial, tanh of small
// arguments by a polynomial) with no call and no branch, so the loops over hidden units vectorise; they are
// within 1 ulp (exp), 1.5 ulp (tanh) and 3 ulp (sigmoid) of the correctly rounded values (a sweep of every 97th
// float). double calls std::exp and std::tanh.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/common.h"

namespace fuseprop {

enum class RecurrentCell : int { rnn_tanh = 0, rnn_relu, lstm, gru };

// Gates per hidden unit: the rows of w_ih and w_hh are G*H.
FUSEPROP_HD FUSEPROP_FORCEINLINE int64_t recurrent_gates(RecurrentCell cell) {
  return cell == RecurrentCell::lstm ? 4 : cell == RecurrentCell::gru ? 3 : 1;
}

// exp(x) for x <= 0, in float: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so n ln2 is exact), then
// Cephes' expf polynomial for e^r and 2^n from the exponent bits. Below -87.33, where e^x is no longer a
// normal float (< 1.18e-38), the result is 0. NaN stays NaN.
FUSEPROP_HD FUSEPROP_FORCEINLINE float exp_nonpositive(float x_in) {
  const float lowest = -87.33f;  // n stays >= -126 here, so 2^n is a normal float
  const float x = x_in < lowest ? lowest : x_in;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer, kept in the low bits
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;  // round(x / ln2), in [-126, 0]
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  uint32_t bits;
  std::memcpy(&bits, &t, sizeof bits);
  const uint32_t scale_bits = (bits - 0x4B400000u + 127u) << 23;  // 2^n: n + 127 in the exponent field
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return x_in < lowest ? 0.0f : p * scale;
}

// sigmoid(z) = 1 / (1 + e^-z) from e = e^-|z| <= 1, which never overflows: sigmoid(|z|) = 1 / (1 + e) and
// sigmoid(-|z|) = e / (1 + e).
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T gate_sigmoid(T z) {
  const T minus_abs = z < T(0) ? z : -z;
  T e;
  if constexpr (std::is_same<T, float>::value) e = exp_nonpositive(minus_abs);
  else e = std::exp(minus_abs);
  const T s = T(1) / (T(1) + e);
  return z >= T(0) ? s : e * s;
}

// tanh(x). float: for |x| < 0.625 Cephes' tanhf polynomial; otherwise (1 - e) / (1 + e) with e = e^-2|x|
// (no cancellation there, e <= 0.29), and the sign of x.
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T gate_tanh(T x) {
  if constexpr (std::is_same<T, float>::value) {
    const float minus_abs = x < 0.0f ? x : -x;
    const float e = exp_nonpositive(2.0f * minus_abs);
    const float large = (1.0f - e) / (1.0f + e);
    const float x2 = x * x;
    float p = -5.70498872745e-3f;
    p = p * x2 + 2.06390887954e-2f;
    p = p * x2 - 5.37397155531e-2f;
    p = p * x2 + 1.33314422036e-1f;
    p = p * x2 - 3.33332819422e-1f;
    const float small = p * x2 * x + x;
    return minus_abs > -0.625f ? small : (x < 0.0f ? -large : large);
  } else {
    return std::tanh(x);
  }
}

// -- rnn: h' = act(p); the derivative from the output (tanh' = 1 - h'^2; relu' = 1 where h' > 0, 0 at 0 as
// PyTorch's). relu lets NaN through, as activation_math.h's.
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T rnn_cell_forward(T p, bool relu) {
  return relu ? ((p > T(0) || p != p) ? p : T(0)) : gate_tanh(p);
}
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE T rnn_cell_backward(T dh, T h, bool relu) {
  return relu ? (h > T(0) ? dh : T(0)) : dh * (T(1) - h * h);
}

// -- lstm: pre-activations p_i, p_f, p_g, p_o and c of the step before -> the gates, c', tanh(c'), h'.
template <typename T>
struct LstmUnit {
  T i, f, g, o, c, tanh_c, h;
};
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE LstmUnit<T> lstm_cell_forward(T p_i, T p_f, T p_g, T p_o, T c_prev) {
  LstmUnit<T> u;
  u.i = gate_sigmoid(p_i);
  u.f = gate_sigmoid(p_f);
  u.g = gate_tanh(p_g);
  u.o = gate_sigmoid(p_o);
  u.c = u.f * c_prev + u.i * u.g;
  u.tanh_c = gate_tanh(u.c);
  u.h = u.o * u.tanh_c;
  return u;
}
// dh, dc: the gradients reaching h' and c' (from the loss and from the next step) -> the pre-activations'
// gradients and the gradient reaching c (dc_prev). sig' = s (1 - s), tanh' = 1 - t^2.
template <typename T>
struct LstmGrad {
  T p_i, p_f, p_g, p_o, c_prev;
};
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE LstmGrad<T> lstm_cell_backward(T dh, T dc, T i, T f, T g, T o, T tanh_c, T c_prev) {
  const T dc_total = dc + dh * o * (T(1) - tanh_c * tanh_c);  // c' reaches h' through o tanh(c')
  LstmGrad<T> d;
  d.p_i = dc_total * g * (i * (T(1) - i));
  d.p_f = dc_total * c_prev * (f * (T(1) - f));
  d.p_g = dc_total * i * (T(1) - g * g);
  d.p_o = dh * tanh_c * (o * (T(1) - o));
  d.c_prev = dc_total * f;
  return d;
}

// -- gru: p_r, p_z (input and hidden parts with both biases), a_n = W_in x + b_in, hn = W_hn h + b_hn and h
// of the step before -> r, z, n, h'.
template <typename T>
struct GruUnit {
  T r, z, n, h;
};
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE GruUnit<T> gru_cell_forward(T p_r, T p_z, T a_n, T hn, T h_prev) {
  GruUnit<T> u;
  u.r = gate_sigmoid(p_r);
  u.z = gate_sigmoid(p_z);
  u.n = gate_tanh(a_n + u.r * hn);
  u.h = u.n + u.z * (h_prev - u.n);
  return u;
}
// dh: the gradient reaching h' -> the gradients of p_r and p_z (both sides), of a_n (the input side of n:
// n's pre-activation), of hn (the hidden side of n: r times that), and the part reaching h directly (dh z);
// the rest reaches h through W_hh.
template <typename T>
struct GruGrad {
  T p_r, p_z, a_n, hn, h_prev;
};
template <typename T>
FUSEPROP_HD FUSEPROP_FORCEINLINE GruGrad<T> gru_cell_backward(T dh, T r, T z, T n, T hn, T h_prev) {
  GruGrad<T> d;
  d.a_n = dh * (T(1) - z) * (T(1) - n * n);
  d.hn = d.a_n * r;
  d.p_r = d.a_n * hn * (r * (T(1) - r));
  d.p_z = dh * (h_prev - n) * (z * (T(1) - z));
  d.h_prev = dh * z;
  return d;
}

}  // namespace fuseprop
