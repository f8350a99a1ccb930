// Recurrent layers on the device, one layer and one direction, batch-first, forward and backward through time:
// plain C++ (no CUDA types), the twins of csrc/ops/recurrent.h with the same shapes (RecurrentShape), cells,
// gate order and contracts, on the same scalar formulas (csrc/ops/recurrent_math.h). Pointers are device memory,
// float32 only.
//
// Forward: the input projection of every step as one GEMM (cuda/ops/matmul_cuda.h), gx (B*T, G*H) = x (B*T, I) .
// w_ih^T, then per step t two launches: the recurrent GEMM hh (B, G*H) = h_{t-1} . w_hh^T, and the cell kernel,
// one thread per (batch row, hidden unit), which adds gx_t, hh and the biases, applies the cell and writes y_t, the
// next step's h_{t-1} (and c_{t-1}) and the backward's record.
// Backward: per step t from the last, the cell's derivative kernel writes the pre-activations' gradients dp_t
// (and, with the gru's direct part dh z and the lstm's dc_{t-1}, what reaches the step before), then the GEMM
// dh_{t-1} (+)= dp_t's hidden side . w_hh; after the loop, GEMMs over all B*T rows at once: dx = dp . w_ih,
// dw_ih = dp^T x, dw_hh = dp^T h_prev, and the bias gradients as dp's column sums (fixed partitions of rows in
// double, then the partitions in order). Every element is written by one thread with its reduction in a fixed
// order (the GEMM's k loop, a partition's rows, the partitions): the same bits on every run, no atomics.
//
// The saved record (the forward's, for this backward only; another layout than the CPU's), arrays one after the
// other, all batch-first so that step t's rows of an array of width w sit at t*w with rows T*w apart:
//   lstm  acts (B,T,4H): i, f, g, o after their nonlinearities; c_prev (B,T,H): c_{t-1} (c0 at t = 0);
//         tanh_c (B,T,H) = tanh(c_t)
//   gru   acts (B,T,3H): r, z, n; hn (B,T,H) = W_hn h_{t-1} + b_hn
//   every cell, last: h_prev (B,T,H): h_{t-1} (h0 at t = 0); h_last (B,H) = h_n
#pragma once

#include <cstdint>

#include "core/common.h"
#include "ops/recurrent.h"  // RecurrentShape, RecurrentCell

namespace fuseprop::cuda {

// Floats of the saved record; -1 when a size overflows (the bindings refuse the shape).
int64_t recurrent_saved_size(const RecurrentShape& s);
// Where h_last (B,H), the last step's h, starts in the record: the bindings compare it with y's last step.
int64_t recurrent_saved_last_h(const RecurrentShape& s);
// Floats of device workspace the forward and the backward need (-1 on overflow).
int64_t recurrent_forward_workspace(const RecurrentShape& s);
int64_t recurrent_backward_workspace(const RecurrentShape& s);

// x (B,T,I); h0, c0 (B,H) or null (zeros; c0 for lstm only); w_ih (GH,I); w_hh (GH,H); b_ih, b_hh (GH) or both
// null -> y (B,T,H) every step's h, h_n (B,H) the last, c_n (B,H) the last c (lstm; null otherwise), saved
// (recurrent_saved_size floats). tf32: the GEMMs on TF32 tensor cores.
void recurrent_forward(float* y, float* h_n, float* c_n, float* saved, float* workspace, const float* x,
                       const float* h0, const float* c0, const float* w_ih, const float* w_hh, const float* b_ih,
                       const float* b_hh, const RecurrentShape& s, bool tf32);

// dy (B,T,H) or null (zeros), dh_n, dc_n (B,H) or null (zeros; dc_n lstm only); x, w_ih, w_hh as the forward's;
// saved: this forward's. Writes dx (B,T,I), dh0 (B,H), dc0 (B,H) (lstm; null otherwise); accumulates dw_ih (GH,I),
// dw_hh (GH,H), db_ih, db_hh (GH) (null: no biases), or writes them when accumulate is false.
// bptt_steps k > 0: truncated as the CPU's (ops/recurrent.h): nothing flows from step t into h_{t-1} (and c_{t-1})
// when t > 0 is a multiple of k. workspace: recurrent_backward_workspace floats (its start holds doubles).
void recurrent_backward(float* dx, float* dh0, float* dc0, float* dw_ih, float* dw_hh, float* db_ih, float* db_hh,
                        float* workspace, const float* dy, const float* dh_n, const float* dc_n, const float* x,
                        const float* w_ih, const float* w_hh, const float* saved, const RecurrentShape& s,
                        int64_t bptt_steps, bool tf32, bool accumulate = true);

}  // namespace fuseprop::cuda
