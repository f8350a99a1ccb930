#include "cuda/ops/recurrent_cuda.h"

#include <cuda_runtime.h>

#include <initializer_list>

#include "cuda/core/launch.cuh"
#include "cuda/ops/matmul_cuda.h"
#include "ops/recurrent_math.h"

namespace fuseprop::cuda {

namespace {

constexpr int64_t kRowsPerPartition = 256;  // the bias gradients: dp's rows summed per partition

// dp (recurrent_dp_width columns a row) is laid out so that the hidden side is columns [0, GH) (gru: r, z, hn,
// as w_hh's rows).

// Partitions of the B*T rows whose column sums the bias gradients add up.
int64_t partitions(const RecurrentShape& s) { return ceil_div(s.B * s.T, kRowsPerPartition); }

// The record's arrays (see recurrent_cuda.h); F is float (the forward writes) or const float (the backward reads).
template <typename F>
struct Record {
  F* acts;    // (B,T,GH): lstm, gru
  F* c_prev;  // (B,T,H): lstm
  F* tanh_c;  // (B,T,H): lstm
  F* hn;      // (B,T,H): gru
  F* h_prev;  // (B,T,H)
  F* h_last;  // (B,H)
};
template <typename F>
Record<F> record(F* saved, const RecurrentShape& s) {
  const int64_t bth = s.B * s.T * s.H;
  Record<F> r{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  F* p = saved;
  if (s.cell == RecurrentCell::lstm) {
    r.acts = p, p += 4 * bth;
    r.c_prev = p, p += bth;
    r.tanh_c = p, p += bth;
  } else if (s.cell == RecurrentCell::gru) {
    r.acts = p, p += 3 * bth;
    r.hn = p, p += bth;
  }
  r.h_prev = p;
  r.h_last = p + bth;
  return r;
}

// Step t of the forward: what the cell kernel reads and writes.
struct ForwardStep {
  float *y, *h_n, *c_n;  // y (B,T,H); h_n, c_n (B,H) (c_n: lstm), written at the last step
  Record<float> rec;
  const float *gx, *hh, *b_ih, *b_hh;  // gx (B,T,GH), hh (B,GH), biases (GH) or null
  int64_t B, T, H, t;
};

// h0, c0 (B,H) or null (zeros) -> step 0's rows of h_prev and c_prev (B,T,H) (c_prev: lstm, else null);
// one thread per (b, j)
__global__ void recurrent_initial_state_kernel(float* h_prev, float* c_prev, const float* h0, const float* c0,
                                               int64_t B, int64_t T, int64_t H) {
  const int64_t n = B * H;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t at = (e / H) * T * H + e % H;
    h_prev[at] = h0 ? h0[e] : 0.f;
    if (c_prev) c_prev[at] = c0 ? c0[e] : 0.f;
  }
}

// Step t: gx_t (B,GH) rows T*GH apart, hh (B,GH), biases (GH) -> y_t (B,H) and the record's step t, one thread
// per (b, j): unit j's pre-activations p = gx + hh + b_ih + b_hh (gru's n: a_n = gx + b_in, hn = hh + b_hn), the
// cell of recurrent_math.h, then h_t into y, into step t+1's h_prev (h_n and h_last at the last step), and c_t
// into step t+1's c_prev (c_n at the last step)
template <RecurrentCell C>
__global__ void recurrent_forward_cell_kernel(ForwardStep p) {
  const int64_t H = p.H, GH = recurrent_gates(C) * H, n = p.B * H;
  const bool last = p.t + 1 == p.T;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / H, j = e % H, bt = b * p.T + p.t;  // row (b, t) of the (B,T,*) arrays
    const float* gx = p.gx + bt * GH;
    const float* hh = p.hh + b * GH;
    auto pre = [&](int64_t k) { return p.b_ih ? gx[k] + hh[k] + (p.b_ih[k] + p.b_hh[k]) : gx[k] + hh[k]; };
    float h;
    if constexpr (C == RecurrentCell::lstm) {
      const LstmUnit<float> u = lstm_cell_forward(pre(j), pre(H + j), pre(2 * H + j), pre(3 * H + j),
                                                  p.rec.c_prev[bt * H + j]);
      float* acts = p.rec.acts + bt * GH;
      acts[j] = u.i;
      acts[H + j] = u.f;
      acts[2 * H + j] = u.g;
      acts[3 * H + j] = u.o;
      p.rec.tanh_c[bt * H + j] = u.tanh_c;
      if (last) p.c_n[e] = u.c;
      else p.rec.c_prev[(bt + 1) * H + j] = u.c;
      h = u.h;
    } else if constexpr (C == RecurrentCell::gru) {
      const int64_t kn = 2 * H + j;
      const float a_n = p.b_ih ? gx[kn] + p.b_ih[kn] : gx[kn];
      const float hn = p.b_hh ? hh[kn] + p.b_hh[kn] : hh[kn];
      const GruUnit<float> u = gru_cell_forward(pre(j), pre(H + j), a_n, hn, p.rec.h_prev[bt * H + j]);
      float* acts = p.rec.acts + bt * GH;
      acts[j] = u.r;
      acts[H + j] = u.z;
      acts[kn] = u.n;
      p.rec.hn[bt * H + j] = hn;
      h = u.h;
    } else {
      h = rnn_cell_forward(pre(j), C == RecurrentCell::rnn_relu);
    }
    p.y[bt * H + j] = h;
    if (last) {
      p.h_n[e] = h;
      p.rec.h_last[e] = h;
    } else {
      p.rec.h_prev[(bt + 1) * H + j] = h;
    }
  }
}

// Step t of the backward: what the cell derivative kernel reads and writes.
struct BackwardStep {
  float* dp;                // (B,T,DP)
  float* dc;                // (B,H): lstm
  float* dh_prev;           // (B,H)
  const float *dy, *dh;     // dy (B,T,H) or null; dh (B,H)
  Record<const float> rec;
  int64_t B, T, H, DP, t;
  bool cut;  // truncated here: nothing flows into step t-1
};

// Step t: dy_t (B,H) rows T*H apart or null, dh (B,H) the gradient reaching h_t from the steps after, the record's
// step t -> dp_t (B,DP) rows T*DP apart, one thread per (b, j): the cell's derivative of recurrent_math.h at
// g = dy + dh. lstm: dc (B,H), the gradient reaching c_t, becomes c_{t-1}'s; gru: dh_prev = the direct part dh z
// (the GEMM adds the rest); where cut, dh_prev (every cell) and dc are zeros
template <RecurrentCell C>
__global__ void recurrent_backward_cell_kernel(BackwardStep p) {
  const int64_t H = p.H, GH = recurrent_gates(C) * H, n = p.B * H;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / H, j = e % H, bt = b * p.T + p.t;
    const float g = (p.dy ? p.dy[bt * H + j] : 0.f) + p.dh[e];
    float* dp = p.dp + bt * p.DP;
    if constexpr (C == RecurrentCell::lstm) {
      const float* a = p.rec.acts + bt * GH;
      const LstmGrad<float> d = lstm_cell_backward(g, p.dc[e], a[j], a[H + j], a[2 * H + j], a[3 * H + j],
                                                   p.rec.tanh_c[bt * H + j], p.rec.c_prev[bt * H + j]);
      dp[j] = d.p_i;
      dp[H + j] = d.p_f;
      dp[2 * H + j] = d.p_g;
      dp[3 * H + j] = d.p_o;
      p.dc[e] = p.cut ? 0.f : d.c_prev;
      if (p.cut) p.dh_prev[e] = 0.f;
    } else if constexpr (C == RecurrentCell::gru) {
      const float* a = p.rec.acts + bt * GH;
      const GruGrad<float> d =
          gru_cell_backward(g, a[j], a[H + j], a[2 * H + j], p.rec.hn[bt * H + j], p.rec.h_prev[bt * H + j]);
      dp[j] = d.p_r;
      dp[H + j] = d.p_z;
      dp[2 * H + j] = d.hn;
      dp[3 * H + j] = d.a_n;
      p.dh_prev[e] = p.cut ? 0.f : d.h_prev;
    } else {
      const float h = p.t + 1 < p.T ? p.rec.h_prev[(bt + 1) * H + j] : p.rec.h_last[e];  // h_t
      dp[j] = rnn_cell_backward(g, h, C == RecurrentCell::rnn_relu);
      if (p.cut) p.dh_prev[e] = 0.f;
    }
  }
}

// dp (rows, DP) -> partial (P, DP) in double: partition q's column sums over its rows, in row order; one thread
// per (q, column), adjacent threads adjacent columns
__global__ void recurrent_column_sums_kernel(double* partial, const float* dp, int64_t rows, int64_t DP, int64_t P) {
  const int64_t total = P * DP;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = e / DP, k = e % DP;
    const int64_t r1 = (q + 1) * kRowsPerPartition < rows ? (q + 1) * kRowsPerPartition : rows;
    double sum = 0.0;
    for (int64_t r = q * kRowsPerPartition; r < r1; ++r) sum += double(dp[r * DP + k]);
    partial[e] = sum;
  }
}

// partial (P, DP) -> db_ih, db_hh (GH) (=, or += with accumulate): each gate row k's column of dp, the partitions
// added in order. db_hh's column is k; db_ih's too, but gru's n rows take a_n's (k + H); one thread per k
__global__ void recurrent_bias_backward_kernel(float* db_ih, float* db_hh, const double* partial, int64_t P,
                                               int64_t DP, int64_t H, int64_t GH, bool gru, bool accumulate) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < GH; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k_in = gru && k >= 2 * H ? k + H : k;
    double s_in = 0.0, s_hh = 0.0;
    for (int64_t q = 0; q < P; ++q) {
      s_in += partial[q * DP + k_in];
      s_hh += partial[q * DP + k];
    }
    db_ih[k] = accumulate ? db_ih[k] + float(s_in) : float(s_in);
    db_hh[k] = accumulate ? db_hh[k] + float(s_hh) : float(s_hh);
  }
}

// Turns a run-time RecurrentCell into a compile-time constant C for the body, so each kernel is specialised for
// one cell (as FUSEPROP_DISPATCH_ACTIVATION).
#define FUSEPROP_DISPATCH_CELL(cell, C, ...)                                                              \
  switch (cell) {                                                                                         \
    case RecurrentCell::rnn_tanh: { constexpr RecurrentCell C = RecurrentCell::rnn_tanh; __VA_ARGS__; break; } \
    case RecurrentCell::rnn_relu: { constexpr RecurrentCell C = RecurrentCell::rnn_relu; __VA_ARGS__; break; } \
    case RecurrentCell::lstm: { constexpr RecurrentCell C = RecurrentCell::lstm; __VA_ARGS__; break; }         \
    case RecurrentCell::gru: { constexpr RecurrentCell C = RecurrentCell::gru; __VA_ARGS__; break; }           \
  }

}  // namespace

int64_t recurrent_saved_size(const RecurrentShape& s) {
  const int64_t arrays = s.cell == RecurrentCell::lstm ? 7 : s.cell == RecurrentCell::gru ? 5 : 1;  // of (B,T,H)
  return recurrent_elements({{arrays * s.B, s.T, s.H}, {1, s.B, s.H}});
}

int64_t recurrent_saved_last_h(const RecurrentShape& s) { return cuda::recurrent_saved_size(s) - s.B * s.H; }

int64_t recurrent_forward_workspace(const RecurrentShape& s) {
  return recurrent_elements({{s.B, s.T, s.GH()}, {1, s.B, s.GH()}});  // gx, hh
}

int64_t recurrent_backward_workspace(const RecurrentShape& s) {
  // the partitions' column sums (doubles: two floats each), dp, and two (B,H) buffers for the gradient reaching h
  const int64_t DP = recurrent_dp_width(s);
  return recurrent_elements({{2, partitions(s), DP}, {s.B, s.T, DP}, {2, s.B, s.H}});
}

void recurrent_forward(float* y, float* h_n, float* c_n, float* saved, float* workspace, const float* x,
                       const float* h0, const float* c0, const float* w_ih, const float* w_hh, const float* b_ih,
                       const float* b_hh, const RecurrentShape& s, bool tf32) {
  const int64_t B = s.B, T = s.T, I = s.I, H = s.H, GH = s.GH();
  if (B == 0) return;
  const Record<float> rec = record(saved, s);
  float* gx = workspace;          // (B,T,GH): x . w_ih^T, every step at once
  float* hh = gx + B * T * GH;    // (B,GH): the step's h_{t-1} . w_hh^T
  // gx (B*T, GH) = x (B*T, I) . w_ih^T, w_ih stored (GH, I): op(b) = w_ih transposed, ldb = I
  matmul(gx, x, w_ih, B * T, GH, I, I, I, GH, false, true, 1.f, 0.f, tf32);
  recurrent_initial_state_kernel<<<grid_1d(B * H), kThreads>>>(rec.h_prev, rec.c_prev, h0, c0, B, T, H);
  FUSEPROP_CUDA_CHECK_LAUNCH();
  ForwardStep step{y, h_n, c_n, rec, gx, hh, b_ih, b_hh, B, T, H, 0};
  for (int64_t t = 0; t < T; ++t) {
    // hh (B, GH) = h_{t-1} (B, H) . w_hh^T: step t's rows of h_prev, T*H apart; w_hh stored (GH, H), ldb = H
    matmul(hh, rec.h_prev + t * H, w_hh, B, GH, H, T * H, H, GH, false, true, 1.f, 0.f, tf32);
    step.t = t;
    FUSEPROP_DISPATCH_CELL(s.cell, C, recurrent_forward_cell_kernel<C><<<grid_1d(B * H), kThreads>>>(step));
    FUSEPROP_CUDA_CHECK_LAUNCH();
  }
}

void recurrent_backward(float* dx, float* dh0, float* dc0, float* dw_ih, float* dw_hh, float* db_ih, float* db_hh,
                        float* workspace, const float* dy, const float* dh_n, const float* dc_n, const float* x,
                        const float* w_ih, const float* w_hh, const float* saved, const RecurrentShape& s,
                        int64_t bptt_steps, bool tf32, bool accumulate) {
  const int64_t B = s.B, T = s.T, I = s.I, H = s.H, GH = s.GH(), DP = recurrent_dp_width(s), rows = B * T, P = partitions(s);
  const bool gru = s.cell == RecurrentCell::gru, lstm = s.cell == RecurrentCell::lstm;
  const float beta = accumulate ? 1.f : 0.f;
  if (B == 0) {  // an empty batch: no rows, nothing to add
    if (!accumulate) {
      fill_zero(dw_ih, size_t(GH * I) * sizeof(float));
      fill_zero(dw_hh, size_t(GH * H) * sizeof(float));
      if (db_ih) fill_zero(db_ih, size_t(GH) * sizeof(float)), fill_zero(db_hh, size_t(GH) * sizeof(float));
    }
    return;
  }
  const Record<const float> rec = record(saved, s);
  double* partial = reinterpret_cast<double*>(workspace);  // (P, DP): first, so 8-byte aligned
  float* dp = workspace + 2 * P * DP;                       // (B,T,DP)
  float* dh_buf[2] = {dp + rows * DP, dp + rows * DP + B * H};
  if (lstm) {  // dc0 carries the gradient reaching c_t through the loop, and ends as c0's
    if (dc_n) copy_device_to_device(dc0, dc_n, size_t(B * H) * sizeof(float));
    else fill_zero(dc0, size_t(B * H) * sizeof(float));
  }
  if (!dh_n) fill_zero(dh_buf[1], size_t(B * H) * sizeof(float));  // step T-1 reads dh from dh_buf[1]: zeros
  BackwardStep step{dp, dc0, nullptr, dy, nullptr, rec, B, T, H, DP, 0, false};
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t q = T - 1 - t;  // steps done: the buffers take turns, never the one read as the one written
    step.t = t;
    step.cut = bptt_steps > 0 && t > 0 && t % bptt_steps == 0;  // the carried state was detached here
    step.dh = q == 0 ? (dh_n ? dh_n : dh_buf[1]) : dh_buf[(q - 1) % 2];
    step.dh_prev = t == 0 ? dh0 : dh_buf[q % 2];
    FUSEPROP_DISPATCH_CELL(s.cell, C, recurrent_backward_cell_kernel<C><<<grid_1d(B * H), kThreads>>>(step));
    FUSEPROP_CUDA_CHECK_LAUNCH();
    // dh_{t-1} (B, H) (+)= dp_t's hidden side (B, GH), rows T*DP apart, . w_hh (GH, H); gru adds to dh z
    if (!step.cut) matmul(step.dh_prev, dp + t * DP, w_hh, B, H, GH, T * DP, H, H, false, false, 1.f, gru ? 1.f : 0.f,
                          tf32);
  }

  // Every step's rows at once (b, then t: x's order). The input side of dp is its columns [0, GH), but gru's:
  // p_r, p_z in [0, 2H), then a_n in [3H, 4H) (w_ih's n rows [2H, 3H)).
  const int64_t in_rows = gru ? 2 * H : GH;
  // dx (B*T, I) = dp's input side (B*T, GH) . w_ih (GH, I)
  matmul(dx, dp, w_ih, rows, I, in_rows, DP, I, I, false, false, 1.f, 0.f, tf32);
  if (gru) matmul(dx, dp + 3 * H, w_ih + 2 * H * I, rows, I, H, DP, I, I, false, false, 1.f, 1.f, tf32);
  // dw_ih (GH, I) (+)= dp's input side^T . x (B*T, I): dp stored (B*T, DP), so trans_a with lda = DP
  matmul(dw_ih, dp, x, in_rows, I, rows, DP, I, I, true, false, 1.f, beta, tf32);
  if (gru) matmul(dw_ih + 2 * H * I, dp + 3 * H, x, H, I, rows, DP, I, I, true, false, 1.f, beta, tf32);
  // dw_hh (GH, H) (+)= dp's hidden side^T . h_prev (B*T, H)
  matmul(dw_hh, dp, rec.h_prev, GH, H, rows, DP, H, H, true, false, 1.f, beta, tf32);
  if (db_ih) {
    recurrent_column_sums_kernel<<<grid_1d(P * DP), kThreads>>>(partial, dp, rows, DP, P);
    FUSEPROP_CUDA_CHECK_LAUNCH();
    recurrent_bias_backward_kernel<<<grid_1d(GH), kThreads>>>(db_ih, db_hh, partial, P, DP, H, GH, gru, accumulate);
    FUSEPROP_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace fuseprop::cuda
