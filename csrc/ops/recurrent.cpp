#include "ops/recurrent.h"

#include <algorithm>
#include <initializer_list>
#include <utility>

#include "core/cpu_features.h"
#include "core/threads.h"
#include "gemm/matmul.h"
#include "ops/recurrent_kernels.h"
#define FUSEPROP_SIMD_NS baseline
#include "ops/recurrent_simd.h"

namespace fuseprop {

// -- the row loops' table: the baseline copy (every level for double, the generic level for float) ------------

namespace {
template <typename T>
constexpr RecurrentRowKernels<T> baseline_row_kernels = baseline::row_kernels<T>("generic");
}  // namespace

const RecurrentRowKernels<float>& recurrent_row_kernels(float) {
#if defined(FUSEPROP_SIMD_X86)
  switch (cpu_level_active()) {
    case CpuLevel::avx512: return recurrent_row_kernels_avx512;
    case CpuLevel::avx2: return recurrent_row_kernels_avx2;
    default: break;
  }
#endif
  return baseline_row_kernels<float>;
}

const RecurrentRowKernels<double>& recurrent_row_kernels(double) { return baseline_row_kernels<double>; }

namespace {

// -- sizes and the saved array's layout ----------------------------------------------------------------------

// The sum of the products a*b*c of sizes, or -1 when it passes 2^60 (a double estimate first: it cannot wrap).
struct Term {
  int64_t a, b, c;
};
int64_t elements(std::initializer_list<Term> terms) {
  double estimate = 0;
  for (const Term& t : terms) estimate += double(t.a) * double(t.b) * double(t.c);
  if (estimate > double(int64_t(1) << 60)) return -1;
  int64_t n = 0;
  for (const Term& t : terms) n += t.a * t.b * t.c;
  return n;
}

// Pre-activation gradients per row in the backward: G*H, and 4H for gru (r, z, hn, a_n: n has two sides).
int64_t dp_width(const RecurrentShape& s) { return s.cell == RecurrentCell::gru ? 4 * s.H : s.GH(); }

int64_t strips(const RecurrentShape& s) { return ceil_div(s.B, kRecurrentStrip); }
int64_t groups(const RecurrentShape& s) { return std::min(strips(s), kRecurrentGroups); }

// Strip `strip`'s first row and height.
struct Strip {
  int64_t b0, m;
};
Strip strip_at(const RecurrentShape& s, int64_t strip) {
  const int64_t b0 = strip * kRecurrentStrip;
  return {b0, std::min(kRecurrentStrip, s.B - b0)};
}

template <typename T>
struct SavedViews {
  T* acts = nullptr;    // T steps of GH: lstm, gru
  T* cs = nullptr;      // T+1 steps of H: lstm
  T* tanh_c = nullptr;  // T steps of H: lstm
  T* hn = nullptr;      // T steps of H: gru
  T* hs = nullptr;      // T+1 steps of H
};
template <typename T>
SavedViews<T> saved_views(T* saved, const RecurrentShape& s) {
  const int64_t tbh = s.T * s.B * s.H, bh = s.B * s.H;
  SavedViews<T> v;
  T* p = saved;
  if (s.cell == RecurrentCell::lstm) {
    v.acts = p, p += 4 * tbh;
    v.cs = p, p += tbh + bh;
    v.tanh_c = p, p += tbh;
  } else if (s.cell == RecurrentCell::gru) {
    v.acts = p, p += 3 * tbh;
    v.hn = p, p += tbh;
  }
  v.hs = p;
  return v;
}

// A strip's rows in the saved arrays: step t's first row of an array of T steps (at) and of T+1 steps (at1).
struct StripRows {
  int64_t steps, b0, m;
  int64_t at(int64_t t) const { return steps * b0 + t * m; }
  int64_t at1(int64_t t) const { return (steps + 1) * b0 + t * m; }
};

// -- the steps' products -------------------------------------------------------------------------------------

// c (m,n) = a (m,k) . b (k,n) + beta c for m <= mr, by the GEMM's direct micro-kernel on the caller's arrays:
// a(i,p) = a[i*rs_a + p*cs_a], rows of b ldb apart, of c ldc apart. Every element sums over k in order, whatever m.
template <typename T>
void tile_row(const GemmKernels<T>& kern, T* c, int64_t ldc, const T* a, int64_t rs_a, int64_t cs_a, const T* b,
              int64_t ldb, int64_t m, int64_t n, int64_t k, T beta) {
  for (int64_t j = 0; j < n; j += kern.nr)
    kern.direct_tile(k, a, rs_a, cs_a, b + j, ldb, c + j, ldc, T(1), beta, m, n - j < kern.nr ? n - j : kern.nr);
}

// The same for any m, by rows of mr: c (m,n) = a (m,k) . b (k,n) + beta c, rows of a lda apart.
template <typename T>
void small_gemm(const GemmKernels<T>& kern, T* c, int64_t ldc, const T* a, int64_t lda, const T* b, int64_t ldb,
                int64_t m, int64_t n, int64_t k, T beta) {
  for (int64_t i = 0; i < m; i += kern.mr)
    tile_row(kern, c + i * ldc, ldc, a + i * lda, lda, int64_t(1), b, ldb, std::min<int64_t>(kern.mr, m - i), n, k,
             beta);
}

// c (m,n) = a^T (m,k) . b (k,n) + beta c, a stored (k,m) with rows lda apart: the weight gradients' form.
template <typename T>
void small_gemm_tn(const GemmKernels<T>& kern, T* c, int64_t ldc, const T* a, int64_t lda, const T* b, int64_t ldb,
                   int64_t m, int64_t n, int64_t k, T beta) {
  for (int64_t i = 0; i < m; i += kern.mr)
    tile_row(kern, c + i * ldc, ldc, a + i, int64_t(1), lda, b, ldb, std::min<int64_t>(kern.mr, m - i), n, k, beta);
}

// body(task) for task in [0, tasks) on the threads the recurrent products' work (B*T*GH*k multiply-adds) is
// worth. A row's values do not depend on which task or thread computes it (see recurrent.h).
template <typename F>
void for_tasks(const RecurrentShape& s, int64_t k, int64_t tasks, F&& body) {
  const double work = double(s.B) * double(s.T) * double(s.GH()) * double(k);
  parallel_tasks(tasks, threads_for(work < 1e18 ? int64_t(work) : int64_t(1e18)), [&](int64_t task) { body(task); });
}

// dst (cols, rows) = src (rows, cols)^T, by 16 x 16 blocks (each block's reads and writes stay in a few lines)
template <typename T>
void transpose(T* dst, const T* src, int64_t rows, int64_t cols) {
  constexpr int64_t kBlock = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock)
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock)
      for (int64_t r = r0; r < std::min(rows, r0 + kBlock); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + kBlock); ++c) dst[c * rows + r] = src[r * cols + c];
}

// Prefetches n elements from p into the cache, a line at a time.
template <typename T>
void prefetch(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t i = 0; i < n * int64_t(sizeof(T)); i += 64) __builtin_prefetch(c + i);
}

// The backward's scratch for one group: the strip's dp (T*strip rows of dp_width), its x rows in dp's order
// (T*strip rows of I), the gradients reaching h (twice: this step's and the one passed back) and c (strip rows
// of H); then the group's sums: [dw_ih | dw_hh]^T ((I+H) x GH), gru's dw_ih^T of a_n (I x H), db (dp_width).
struct GroupLayout {
  int64_t dp, xs, dh_a, dh_b, dc, dw_t, dw_t2, db, size;
};
GroupLayout group_layout(const RecurrentShape& s) {
  const int64_t rows = s.T * kRecurrentStrip, DP = dp_width(s), IH = s.I + s.H;
  GroupLayout g;
  g.dp = 0;
  g.xs = g.dp + rows * DP;
  g.dh_a = g.xs + rows * s.I;
  g.dh_b = g.dh_a + kRecurrentStrip * s.H;
  g.dc = g.dh_b + kRecurrentStrip * s.H;
  g.dw_t = g.dc + kRecurrentStrip * s.H;
  g.dw_t2 = g.dw_t + IH * s.GH();
  g.db = g.dw_t2 + (s.cell == RecurrentCell::gru ? s.I * s.H : 0);
  g.size = g.db + DP;
  return g;
}

}  // namespace

int64_t recurrent_saved_size(const RecurrentShape& s) {
  const int64_t T1 = s.T + 1, B = s.B, H = s.H;
  switch (s.cell) {
    case RecurrentCell::lstm: return elements({{s.T, B, 4 * H}, {T1, B, H}, {s.T, B, H}, {T1, B, H}});
    case RecurrentCell::gru: return elements({{s.T, B, 3 * H}, {s.T, B, H}, {T1, B, H}});
    default: return elements({{T1, B, H}});
  }
}

int64_t recurrent_forward_workspace(const RecurrentShape& s) {
  // w_hh^T (H, GH), w_ih^T (I, GH), the summed bias (GH), b_hn (H)
  return elements({{1, s.H, s.GH()}, {1, s.I, s.GH()}, {1, 1, s.GH()}, {1, 1, s.H}});
}

int64_t recurrent_backward_workspace(const RecurrentShape& s) {
  // each group's scratch and sums (group_layout), a row of zeros (H)
  const int64_t rows = s.T * kRecurrentStrip, DP = dp_width(s), IH = s.I + s.H;
  const int64_t gru = s.cell == RecurrentCell::gru;
  return elements({{groups(s), rows, DP + s.I}, {groups(s), 3 * kRecurrentStrip, s.H}, {groups(s), IH, s.GH()},
                   {groups(s), gru * s.I, s.H}, {groups(s), 1, DP}, {1, 1, s.H}});
}

template <typename T>
const T* recurrent_saved_h(const T* saved, const RecurrentShape& s, int64_t t, int64_t b) {
  const Strip st = strip_at(s, b / kRecurrentStrip);
  const StripRows at{s.T, st.b0, st.m};
  return saved_views(const_cast<T*>(saved), s).hs + (at.at1(t) + b - st.b0) * s.H;
}

// x (B,T,I), w_ih (GH,I), w_hh (GH,H) -> y (B,T,H), h_n, c_n (B,H), saved (strip by strip, see recurrent.h)
template <typename T>
void recurrent_forward(T* y, T* h_n, T* c_n, T* saved, T* workspace, const T* x, const T* h0, const T* c0,
                       const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh, const RecurrentShape& s) {
  const int64_t steps = s.T, I = s.I, H = s.H, GH = s.GH();
  const RecurrentCell cell = s.cell;
  const SavedViews<T> sv = saved_views(saved, s);
  T* whh_t = workspace;       // (H, GH): w_hh^T, so the step's products read rows of it in place
  T* wih_t = whh_t + H * GH;  // (I, GH): w_ih^T
  T* bias = wih_t + I * GH;   // (GH): b_ih + b_hh, but for gru's b_hn, which sits inside r * (W_hn h + b_hn)
  T* b_hn = bias + GH;        // (H): gru's b_hn (zeros without biases)
  for (int64_t j = 0; j < GH; ++j) {
    const bool inside = cell == RecurrentCell::gru && j >= 2 * H;
    bias[j] = b_ih ? (inside ? b_ih[j] : b_ih[j] + b_hh[j]) : T(0);
  }
  for (int64_t j = 0; j < H; ++j) b_hn[j] = b_hh && cell == RecurrentCell::gru ? b_hh[2 * H + j] : T(0);
  transpose(whh_t, w_hh, GH, H);
  transpose(wih_t, w_ih, GH, I);

  const GemmKernels<T>& kern = gemm_kernels(T{});
  const RecurrentRowKernels<T>& rows = recurrent_row_kernels(T{});
  const bool relu = cell == RecurrentCell::rnn_relu, rnn = relu || cell == RecurrentCell::rnn_tanh;
  for_tasks(s, I + H, strips(s), [&](int64_t strip) {
    const Strip st = strip_at(s, strip);
    const StripRows at{steps, st.b0, st.m};
    const int64_t m = st.m;
    T* hs0 = sv.hs + at.at1(0) * H;
    if (h0) std::copy_n(h0 + st.b0 * H, m * H, hs0);
    else std::fill_n(hs0, m * H, T(0));
    if (cell == RecurrentCell::lstm) {
      T* cs0 = sv.cs + at.at1(0) * H;
      if (c0) std::copy_n(c0 + st.b0 * H, m * H, cs0);
      else std::fill_n(cs0, m * H, T(0));
    }
    for (int64_t t = 0; t < steps; ++t) {
      const T* x_t = x + (st.b0 * steps + t) * I;  // the strip's rows of x_t, steps * I apart
      const T* h_prev = sv.hs + at.at1(t) * H;
      T* h = sv.hs + at.at1(t + 1) * H;
      // The step's gates (m, GH) = x_t (m, I) . w_ih^T (I, GH) + h_prev (m, H) . w_hh^T (H, GH): the input
      // projection is the first k-block of the same tiles. rnn's single gate goes straight into h; gru keeps n's
      // hidden side W_hn h_prev apart, in hn (r multiplies it).
      T* a = rnn ? h : sv.acts + at.at(t) * GH;
      small_gemm(kern, a, GH, x_t, steps * I, wih_t, GH, m, GH, I, T(0));
      if (cell == RecurrentCell::gru) {
        small_gemm(kern, a, GH, h_prev, H, whh_t, GH, m, 2 * H, H, T(1));
        small_gemm(kern, sv.hn + at.at(t) * H, H, h_prev, H, whh_t + 2 * H, GH, m, H, H, T(0));
      } else {
        small_gemm(kern, a, GH, h_prev, H, whh_t, GH, m, GH, H, T(1));
      }
      for (int64_t r = 0; r < m; ++r) {
        T* y_row = y + ((st.b0 + r) * steps + t) * H;
        switch (cell) {
          case RecurrentCell::lstm:
            rows.lstm_forward(a + r * GH, sv.cs + (at.at1(t + 1) + r) * H, sv.tanh_c + (at.at(t) + r) * H, h + r * H,
                              y_row, bias, sv.cs + (at.at1(t) + r) * H, H);
            break;
          case RecurrentCell::gru:
            rows.gru_forward(a + r * GH, sv.hn + (at.at(t) + r) * H, h + r * H, y_row, bias, b_hn, h_prev + r * H, H);
            break;
          default:
            rows.rnn_forward(h + r * H, y_row, bias, H, relu);
        }
      }
    }
    std::copy_n(sv.hs + at.at1(steps) * H, m * H, h_n + st.b0 * H);
    if (cell == RecurrentCell::lstm) std::copy_n(sv.cs + at.at1(steps) * H, m * H, c_n + st.b0 * H);
  });
}

// dy (B,T,H), saved -> dx (B,T,I), dh0, dc0 (B,H); dw_ih (GH,I), dw_hh (GH,H), db_ih, db_hh (GH) accumulated
template <typename T>
void recurrent_backward(T* dx, T* dh0, T* dc0, T* dw_ih, T* dw_hh, T* db_ih, T* db_hh, T* workspace, const T* dy,
                        const T* dh_n, const T* dc_n, const T* x, const T* w_ih, const T* w_hh, const T* saved,
                        const RecurrentShape& s, int64_t bptt_steps, bool accumulate) {
  const int64_t steps = s.T, I = s.I, H = s.H, GH = s.GH(), IH = I + H, DP = dp_width(s);
  const RecurrentCell cell = s.cell;
  const bool relu = cell == RecurrentCell::rnn_relu, gru = cell == RecurrentCell::gru,
             lstm = cell == RecurrentCell::lstm;
  const SavedViews<T> sv = saved_views(const_cast<T*>(saved), s);
  const GroupLayout gl = group_layout(s);
  const int64_t n_strips = strips(s), n_groups = groups(s);
  T* zeros = workspace + n_groups * gl.size;  // (H): dy's row when dy is null
  std::fill_n(zeros, H, T(0));

  const GemmKernels<T>& kern = gemm_kernels(T{});
  const RecurrentRowKernels<T>& rows = recurrent_row_kernels(T{});
  for_tasks(s, 2 * H + I, n_groups, [&](int64_t group) {
    T* g = workspace + group * gl.size;
    T *dp = g + gl.dp, *xs = g + gl.xs, *dc = g + gl.dc;
    const int64_t first = n_strips * group / n_groups, last = n_strips * (group + 1) / n_groups;
    for (int64_t strip = first; strip < last; ++strip) {
      const Strip st = strip_at(s, strip);
      const StripRows at{steps, st.b0, st.m};
      const int64_t m = st.m, b0 = st.b0;
      T* dh_in = g + gl.dh_a;   // the strip's gradient reaching h_t ...
      T* dh_out = g + gl.dh_b;  // ... and the one reaching h_{t-1}
      if (dh_n) std::copy_n(dh_n + b0 * H, m * H, dh_in);
      else std::fill_n(dh_in, m * H, T(0));
      if (lstm) {
        if (dc_n) std::copy_n(dc_n + b0 * H, m * H, dc);
        else std::fill_n(dc, m * H, T(0));
      }
      for (int64_t t = steps - 1; t >= 0; --t) {
        const bool cut = bptt_steps > 0 && t > 0 && t % bptt_steps == 0;  // the carried state was detached here
        T* dp_t = dp + t * m * DP;  // the strip's dp runs t, then r: the order of its saved rows
        T* target = t == 0 ? dh0 + b0 * H : dh_out;  // dh_{t-1}; at t = 0 that is dh0
        for (int64_t r = 0; r < m; ++r) {
          const int64_t b = b0 + r;
          const T* dy_row = dy ? dy + (b * steps + t) * H : zeros;
          switch (cell) {
            case RecurrentCell::lstm:
              rows.lstm_backward(dp_t + r * DP, dc + r * H, dy_row, dh_in + r * H, sv.acts + (at.at(t) + r) * GH,
                                 sv.tanh_c + (at.at(t) + r) * H, sv.cs + (at.at1(t) + r) * H, H);
              break;
            case RecurrentCell::gru:
              rows.gru_backward(dp_t + r * DP, target + r * H, dy_row, dh_in + r * H, sv.acts + (at.at(t) + r) * GH,
                                sv.hn + (at.at(t) + r) * H, sv.hs + (at.at1(t) + r) * H, H);
              break;
            default:
              rows.rnn_backward(dp_t + r * DP, dy_row, dh_in + r * H, sv.hs + (at.at1(t + 1) + r) * H, H, relu);
          }
        }
        if (t > 0) {  // step t-1's saved rows, for its pass after this step's products
          const int64_t prev = at.at(t - 1);
          if (lstm) {
            prefetch(sv.acts + prev * GH, m * GH);
            prefetch(sv.tanh_c + prev * H, m * H);
            prefetch(sv.cs + at.at1(t - 1) * H, m * H);
          } else if (gru) {
            prefetch(sv.acts + prev * GH, m * GH);
            prefetch(sv.hn + prev * H, m * H);
          }
          prefetch(sv.hs + at.at1(t - 1) * H, 2 * m * H);
        }
        if (cut) {
          std::fill_n(target, m * H, T(0));
          if (lstm) std::fill_n(dc, m * H, T(0));
        } else {
          // dh_{t-1} (m, H) (+)= dp_t's hidden side (m, GH) . w_hh (GH, H); gru adds to its direct part dh z
          small_gemm(kern, target, H, dp_t, DP, w_hh, H, m, H, GH, gru ? T(1) : T(0));
        }
        // dx_t (m, I) = dp_t's input side . w_ih (GH, I); gru's input side is p_r, p_z, then a_n
        T* dx_t = dx + (b0 * steps + t) * I;
        if (gru) {
          small_gemm(kern, dx_t, steps * I, dp_t, DP, w_ih, I, m, I, 2 * H, T(0));
          small_gemm(kern, dx_t, steps * I, dp_t + 3 * H, DP, w_ih + 2 * H * I, I, m, I, H, T(1));
        } else {
          small_gemm(kern, dx_t, steps * I, dp_t, DP, w_ih, I, m, I, GH, T(0));
        }
        std::swap(dh_in, dh_out);
      }
      if (lstm) std::copy_n(dc, m * H, dc0 + b0 * H);

      // The strip's weight gradients over its T*m rows (t, then r), added to the group's sums:
      // [dw_ih | dw_hh]^T (I+H, GH) += [x | h_prev]^T . dp (dp's hidden side: gru's [0, 3H), which also holds the
      // input side's p_r, p_z), gru's a_n: dw_ih^T (I, H) += x^T . dp[3H, 4H); db += the column sums of dp.
      const int64_t K = steps * m;
      const T beta = strip == first ? T(0) : T(1);
      for (int64_t t = 0; t < steps; ++t)
        for (int64_t r = 0; r < m; ++r) std::copy_n(x + ((b0 + r) * steps + t) * I, I, xs + (t * m + r) * I);
      small_gemm_tn(kern, g + gl.dw_t, GH, xs, I, dp, DP, I, GH, K, beta);
      small_gemm_tn(kern, g + gl.dw_t + I * GH, GH, sv.hs + at.at1(0) * H, H, dp, DP, H, GH, K, beta);
      if (gru) small_gemm_tn(kern, g + gl.dw_t2, H, xs, I, dp + 3 * H, DP, I, H, K, beta);
      T* db = g + gl.db;
      if (strip == first) std::fill_n(db, DP, T(0));
      for (int64_t row = 0; row < K; ++row)
        for (int64_t j = 0; j < DP; ++j) db[j] += dp[row * DP + j];
    }
  });

  // The groups' sums, added into group 0's in group order, then transposed into the weight gradients.
  auto put = [&](T* dst, T v) { *dst = accumulate ? *dst + v : v; };
  if (n_groups == 0) {  // an empty batch: nothing to add
    if (!accumulate) {
      std::fill_n(dw_ih, GH * I, T(0));
      std::fill_n(dw_hh, GH * H, T(0));
      if (db_ih) std::fill_n(db_ih, GH, T(0)), std::fill_n(db_hh, GH, T(0));
    }
    return;
  }
  T* sums = workspace + gl.dw_t;  // group 0's dw_t, dw_t2 and db, one after the other
  parallel_for(gl.size - gl.dw_t, n_groups, [&](int64_t i0, int64_t i1) {
    for (int64_t q = 1; q < n_groups; ++q) {
      const T* add = workspace + q * gl.size + gl.dw_t;
      for (int64_t i = i0; i < i1; ++i) sums[i] += add[i];
    }
  });
  const T *dw_t = workspace + gl.dw_t, *dw_t2 = workspace + gl.dw_t2, *db = workspace + gl.db;
  for (int64_t k = 0; k < I; ++k)
    for (int64_t j = 0; j < GH; ++j)  // gru's a_n rows of dw_ih come from the second product
      put(dw_ih + j * I + k, gru && j >= 2 * H ? dw_t2[k * H + j - 2 * H] : dw_t[k * GH + j]);
  for (int64_t k = 0; k < H; ++k)
    for (int64_t j = 0; j < GH; ++j) put(dw_hh + j * H + k, dw_t[(I + k) * GH + j]);
  if (db_ih) {
    for (int64_t j = 0; j < GH; ++j) {
      put(db_ih + j, db[gru && j >= 2 * H ? H + j : j]);  // gru's a_n sits at 3H + (j - 2H)
      put(db_hh + j, db[j]);
    }
  }
}

#define FUSEPROP_INSTANTIATE(T)                                                                                    \
  template void recurrent_forward<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*, const T*, const T*,      \
                                     const T*, const T*, const RecurrentShape&);                                \
  template void recurrent_backward<T>(T*, T*, T*, T*, T*, T*, T*, T*, const T*, const T*, const T*, const T*,   \
                                      const T*, const T*, const T*, const RecurrentShape&, int64_t, bool);      \
  template const T* recurrent_saved_h<T>(const T*, const RecurrentShape&, int64_t, int64_t);
FUSEPROP_INSTANTIATE(float)
FUSEPROP_INSTANTIATE(double)
#undef FUSEPROP_INSTANTIATE

}  // namespace fuseprop
