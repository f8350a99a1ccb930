// Recurrent layers, one layer and one direction, batch-first, forward and backward through time side by side:
// PyTorch's RNN (tanh or relu), LSTM and GRU cells (formulas and gate order in recurrent_math.h), weights
// w_ih (G*H, I), w_hh (G*H, H), biases (G*H) or none, G = recurrent_gates(cell).
//
// Forward: step by step, the step's gates x_t . w_ih^T + h_{t-1} . w_hh^T (the input projection as the first
// k-block of the same tiles: one GEMM over every step up front wrote B*T*G*H values to memory and read them back
// scattered: 4.8 ms against 3.7 for the LSTM step's forward on one thread), and right after it, while the gates
// are in L1, the cell's pass over them with the biases (recurrent_kernels.h).
// Backward: step by step from the last, the cell's derivative gives the pre-activations' gradients dp_t, then
// dh_{t-1} = dp_t . w_hh and dx_t = dp_t . w_ih (GEMMs); then the weight gradients over every step at once,
// dw_ih = dp^T x and dw_hh = dp^T h_prev (GEMMs over the steps' rows), db = the column sums of dp.
//
// Strips: every batch row's recurrence is independent of the other rows', so the loops over time run for a strip
// of at most kRecurrentStrip rows at a time, one strip per task, with no wait between steps (the strips' heights
// are a function of B alone, see strip_at in recurrent.cpp). A strip's products run by tiles of up to mr rows (the
// GEMM's register tile) through the GEMM's direct micro-kernel, which sums every element over k in order whatever
// the tile's height, so a row's values never depend on which thread ran it. The saved record is laid out strip
// by strip, each strip's steps one after the other, so a strip's steps are contiguous in both passes. The backward
// computes each strip's weight gradients right after its loop over time, while its dp is in L2 (a GEMM over the
// strip's T*rows rows, in a scratch slot of the thread's own), and adds them up in a fixed order: strips in order
// within each of at most kRecurrentGroups groups (a function of B alone), then the groups in order. So the results
// are bitwise the same whatever the thread count.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "core/common.h"
#include "ops/recurrent_math.h"

namespace fuseprop {

// x (B,T,I) batch-first, H hidden units, cell.
struct RecurrentShape {
  int64_t B, T, I, H;
  RecurrentCell cell;
  int64_t G() const { return recurrent_gates(cell); }
  int64_t GH() const { return G() * H; }
};

// The sum of the products a*b*c of sizes, or -1 when it passes 2^60 (a double estimate first: it cannot wrap).
// Both backends size their saved records and workspaces with it.
struct RecurrentTerm {
  int64_t a, b, c;
};
inline int64_t recurrent_elements(std::initializer_list<RecurrentTerm> terms) {
  double estimate = 0;
  for (const RecurrentTerm& t : terms) estimate += double(t.a) * double(t.b) * double(t.c);
  if (estimate > double(int64_t(1) << 60)) return -1;
  int64_t n = 0;
  for (const RecurrentTerm& t : terms) n += t.a * t.b * t.c;
  return n;
}

// Pre-activation gradients per row in the backward: G*H, and 4H for gru (r, z, hn, a_n: n has two sides).
inline int64_t recurrent_dp_width(const RecurrentShape& s) { return s.cell == RecurrentCell::gru ? 4 * s.H : s.GH(); }

// The most batch rows per strip: a multiple of every GEMM kernel's mr (4, 6, 12). The strips are the units of the
// saved layout, and their heights depend on B alone, never on the CPU level or the thread count.
constexpr int64_t kRecurrentStrip = 12;
// The most groups the backward sums its strips' weight gradients in.
constexpr int64_t kRecurrentGroups = 16;

// Elements of the record recurrent_forward saves for recurrent_backward. Each array runs strip after strip; a strip
// of rows [b0, b0 + m) holds its steps in order, each step's m rows together, so row (t, b) of an array of `len`
// steps per row sits at len*b0 + t*m + (b - b0):
//   rnn   hs (T+1 steps of H): hs_0 = h0, hs_{t+1} = h_t
//   lstm  acts (T steps of 4H): i, f, g, o after their nonlinearities; cs (T+1 steps of H): cs_0 = c0,
//         cs_{t+1} = c_t; tanh_c (T steps of H) = tanh(c_t); hs
//   gru   acts (T steps of 3H): r, z, n; hn (T steps of H) = W_hn h_{t-1} + b_hn; hs
// -1 when a size overflows (the bindings refuse the shape).
int64_t recurrent_saved_size(const RecurrentShape& s);
// Workspace elements of the forward and of the backward on up to `threads` threads (-1 on overflow).
int64_t recurrent_forward_workspace(const RecurrentShape& s);
int64_t recurrent_backward_workspace(const RecurrentShape& s, int threads);

// x (B,T,I); h0, c0 (B,H) or null (zeros; c0 for lstm only); w_ih (GH,I); w_hh (GH,H); b_ih, b_hh (GH) or both
// null -> y (B,T,H) every step's h, h_n (B,H) the last, c_n (B,H) the last c (lstm; null otherwise), saved
// (recurrent_saved_size elements). workspace: recurrent_forward_workspace elements.
template <typename T>
void recurrent_forward(T* y, T* h_n, T* c_n, T* saved, T* workspace, const T* x, const T* h0, const T* c0,
                       const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh, const RecurrentShape& s);

// dy (B,T,H) or null (zeros), dh_n, dc_n (B,H) or null (zeros; dc_n lstm only); x, w_ih, w_hh as the forward's;
// saved: the forward's. Writes dx (B,T,I), dh0 (B,H), dc0 (B,H) (lstm; null otherwise); accumulates dw_ih (GH,I),
// dw_hh (GH,H), db_ih, db_hh (GH) (null: no biases), or writes them when accumulate is false.
// bptt_steps k > 0: truncated backpropagation through time, as a PyTorch loop that detaches the carried state
// every k steps: nothing flows from step t into h_{t-1} (and c_{t-1}) when t > 0 is a multiple of k, so dh0
// and dc0 come from the first k steps alone; every step's own terms of dx and the weight gradients stay.
// workspace: recurrent_backward_workspace(s, threads) elements; at most `threads` threads run.
template <typename T>
void recurrent_backward(T* dx, T* dh0, T* dc0, T* dw_ih, T* dw_hh, T* db_ih, T* db_hh, T* workspace, const T* dy,
                        const T* dh_n, const T* dc_n, const T* x, const T* w_ih, const T* w_hh, const T* saved,
                        const RecurrentShape& s, int64_t bptt_steps, int threads, bool accumulate = true);

// h_t of batch row b in saved (hs_{t}: t = 0 is h0, t = T the last step's): the bindings check the last one
// against y's last step, so that a backward never runs on another forward's record.
template <typename T>
const T* recurrent_saved_h(const T* saved, const RecurrentShape& s, int64_t t, int64_t b);

}  // namespace fuseprop
