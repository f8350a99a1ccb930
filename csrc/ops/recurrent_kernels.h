// The recurrent cells' row loops, per instruction set: one row's pass over its H hidden units after the step's
// GEMM (forward: gates, state and output; backward: the pre-activations' gradients and the state's). Written
// once in recurrent_simd.h over the formulas of recurrent_math.h and compiled once per instruction set
// (recurrent.cpp at the baseline, recurrent_avx2.cpp, recurrent_avx512.cpp); float follows the CPU level, double
// always uses the baseline copy. The SIMD copies contract multiply-adds into FMAs (a quarter faster; the step's
// GEMMs already round differently per level, as FMA rounds once), so levels differ in the last bits.
#pragma once

#include <cstdint>

namespace fuseprop {

template <typename T>
struct RecurrentRowKernels {
  const char* level;
  // h (H) in: W_ih x + W_hh h_prev, out: h' = act(h + bias); y (H) = h'. bias (H): b_ih + b_hh.
  void (*rnn_forward)(T* h, T* y, const T* bias, int64_t H, bool relu);
  // a (4H) in: W_ih x + W_hh h_prev, out: i, f, g, o; bias (4H): b_ih + b_hh; c_prev (H) -> c, tanh_c, h, y (H).
  void (*lstm_forward)(T* a, T* c, T* tanh_c, T* h, T* y, const T* bias, const T* c_prev, int64_t H);
  // a (3H) in: W_ir x + W_hr h_prev, W_iz x + W_hz h_prev, W_in x; out: r, z, n. bias (3H): b_ir + b_hr,
  // b_iz + b_hz, b_in. hn (H) in: W_hn h_prev, out: + b_hn. h_prev (H) -> h, y (H).
  void (*gru_forward)(T* a, T* hn, T* h, T* y, const T* bias, const T* b_hn, const T* h_prev, int64_t H);
  // The gradient reaching h' is dy + dh (the loss's and the next step's). dp (H): the pre-activation's.
  void (*rnn_backward)(T* dp, const T* dy, const T* dh, const T* h, int64_t H, bool relu);
  // dp (4H): the pre-activations' (i, f, g, o); dc (H) in: the gradient reaching c', out: reaching c.
  void (*lstm_backward)(T* dp, T* dc, const T* dy, const T* dh, const T* a, const T* tanh_c, const T* c_prev,
                        int64_t H);
  // dp (4H): p_r, p_z, hn (the hidden side of n), a_n (the input side); dh_prev (H): the part reaching h directly.
  void (*gru_backward)(T* dp, T* dh_prev, const T* dy, const T* dh, const T* a, const T* hn, const T* h_prev,
                       int64_t H);
};

const RecurrentRowKernels<float>& recurrent_row_kernels(float);
const RecurrentRowKernels<double>& recurrent_row_kernels(double);

#if defined(FUSEPROP_SIMD_X86)
extern const RecurrentRowKernels<float> recurrent_row_kernels_avx2;
extern const RecurrentRowKernels<float> recurrent_row_kernels_avx512;
#endif

}  // namespace fuseprop
