#include "ops/recurrent.h"

#include <algorithm>
#include <atomic>
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


// The strips: as few as hold B rows at most kRecurrentStrip each, rounded up to a multiple of 4 when there are
// 4 or more, so that 2 or 4 threads get equal shares (128 rows: 8 strips of 12 and 4 of 8, not 10 of 12 and one
// of 8); their heights are multiples of 4 rows, as even as can be, the taller ones first.
int64_t strips(const RecurrentShape& s) {
  const int64_t n = ceil_div(s.B, kRecurrentStrip);
  return n >= 4 ? ceil_div(n, 4) * 4 : n;
}
int64_t groups(const RecurrentShape& s) { return std::min(strips(s), kRecurrentGroups); }

// Strip `strip`'s first row and height.
struct Strip {
  int64_t b0, m;
};
Strip strip_at(const RecurrentShape& s, int64_t strip) {
  const int64_t units = ceil_div(s.B, 4), n = strips(s), base = units / n, extra = units % n;
  const int64_t b0 = 4 * (strip * base + std::min(strip, extra));
  return {b0, std::min(4 * (base + (strip < extra)), s.B - b0)};
}
// The strip that holds batch row b.
int64_t strip_of(const RecurrentShape& s, int64_t b) {
  const int64_t units = ceil_div(s.B, 4), n = strips(s), base = units / n, extra = units % n, u = b / 4;
  return u < extra * (base + 1) ? u / (base + 1) : extra + (u - extra * (base + 1)) / base;
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

// Row i0 and height of tile i of the ceil(m / mr) tiles that cover m rows, as even as the kernels' heights allow
// (multiples of mr / 3): 8 rows at mr 6 run as 4 + 4, not 6 + 2 (a 2-row tile is bound by its loads).
struct TileRows {
  int64_t i0, rows;
};
template <typename T>
TileRows tile_rows(const GemmKernels<T>& kern, int64_t m, int64_t tile) {
  const int64_t tiles = ceil_div(m, kern.mr), step = kern.mr / 3;
  const int64_t height = std::min<int64_t>(kern.mr, ceil_div(ceil_div(m, tiles), step) * step);
  const int64_t i0 = tile * height;
  return {i0, std::min(height, m - i0)};
}

// The same for any m: c (m,n) = a (m,k) . b (k,n) + beta c, rows of a lda apart.
template <typename T>
void small_gemm(const GemmKernels<T>& kern, T* c, int64_t ldc, const T* a, int64_t lda, const T* b, int64_t ldb,
                int64_t m, int64_t n, int64_t k, T beta) {
  for (int64_t tile = 0; tile < ceil_div(m, kern.mr); ++tile) {
    const TileRows tr = tile_rows(kern, m, tile);
    if (tr.rows > 0) tile_row(kern, c + tr.i0 * ldc, ldc, a + tr.i0 * lda, lda, int64_t(1), b, ldb, tr.rows, n, k, beta);
  }
}

// c (m,n) = a^T (m,k) . b (k,n) + beta c, a stored (k,m) with rows lda apart: the weight gradients' form.
template <typename T>
void small_gemm_tn(const GemmKernels<T>& kern, T* c, int64_t ldc, const T* a, int64_t lda, const T* b, int64_t ldb,
                   int64_t m, int64_t n, int64_t k, T beta) {
  for (int64_t tile = 0; tile < ceil_div(m, kern.mr); ++tile) {
    const TileRows tr = tile_rows(kern, m, tile);
    if (tr.rows > 0) tile_row(kern, c + tr.i0 * ldc, ldc, a + tr.i0, int64_t(1), lda, b, ldb, tr.rows, n, k, beta);
  }
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
  for (int64_t i = 0; i < n * int64_t(sizeof(T)); i += 64) __builtin_prefetch(c + i, 0, 2);  // to L2: the step's
  // products stream w_hh through L1 before the data is used
}

// The backward's workspace: a row of zeros (H, dy's row when dy is null); each group's sums, [dw_ih | db | dw_hh]^T
// ((I+1+H) x GH) and, gru, [dw_ih | db]^T of a_n ((I+1) x H); then one scratch slot per thread: the strip's dp
// (T*strip rows of recurrent_dp_width), its x rows in dp's order with a 1 after each (T*strip rows of I+1: the 1s make the
// weight-gradient product sum dp's columns, the bias gradients), the gradients reaching h (twice: this step's
// and the one passed back) and c (strip rows of H).
struct BackwardLayout {
  int64_t sums, sums_size, dw_t2;                  // group g's sums at sums + g * sums_size; dw_t2 within them
  int64_t slots, slot_size, dp, xs, dh_a, dh_b, dc;  // slot q at slots + q * slot_size; dp ... dc within it
  int64_t size;
};
BackwardLayout backward_layout(const RecurrentShape& s, int64_t slots) {
  const int64_t rows = s.T * kRecurrentStrip, DP = recurrent_dp_width(s), I1 = s.I + 1;
  BackwardLayout l;
  l.sums = s.H;
  l.dw_t2 = (I1 + s.H) * s.GH();
  l.sums_size = l.dw_t2 + (s.cell == RecurrentCell::gru ? I1 * s.H : 0);
  l.slots = l.sums + groups(s) * l.sums_size;
  l.dp = 0;
  l.xs = l.dp + rows * DP;
  l.dh_a = l.xs + rows * I1;
  l.dh_b = l.dh_a + kRecurrentStrip * s.H;
  l.dc = l.dh_b + kRecurrentStrip * s.H;
  l.slot_size = l.dc + kRecurrentStrip * s.H;
  l.size = l.slots + slots * l.slot_size;
  return l;
}

// dst (rows, cols) = src^T, or += with accumulate, src (cols, rows) with rows ld_src apart: by 16 x 16 blocks
template <typename T>
void put_transposed(T* dst, const T* src, int64_t rows, int64_t cols, int64_t ld_src, bool accumulate) {
  constexpr int64_t kBlock = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock)
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock)
      for (int64_t r = r0; r < std::min(rows, r0 + kBlock); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + kBlock); ++c) {
          T& d = dst[r * cols + c];
          d = accumulate ? d + src[c * ld_src + r] : src[c * ld_src + r];
        }
}

}  // namespace

int64_t recurrent_saved_size(const RecurrentShape& s) {
  const int64_t T1 = s.T + 1, B = s.B, H = s.H;
  switch (s.cell) {
    case RecurrentCell::lstm: return recurrent_elements({{s.T, B, 4 * H}, {T1, B, H}, {s.T, B, H}, {T1, B, H}});
    case RecurrentCell::gru: return recurrent_elements({{s.T, B, 3 * H}, {s.T, B, H}, {T1, B, H}});
    default: return recurrent_elements({{T1, B, H}});
  }
}

int64_t recurrent_forward_workspace(const RecurrentShape& s) {
  // w_hh^T (H, GH), w_ih^T (I, GH), the summed bias (GH), b_hn (H)
  return recurrent_elements({{1, s.H, s.GH()}, {1, s.I, s.GH()}, {1, 1, s.GH()}, {1, 1, s.H}});
}

int64_t recurrent_backward_workspace(const RecurrentShape& s, int threads) {
  // as backward_layout, each size overflow-checked
  const int64_t rows = s.T * kRecurrentStrip, DP = recurrent_dp_width(s), I1 = s.I + 1, slots = std::max(threads, 1);
  const int64_t gru = s.cell == RecurrentCell::gru;
  return recurrent_elements({{1, 1, s.H}, {groups(s), I1 + s.H, s.GH()}, {groups(s), gru * I1, s.H}, {slots, rows, DP + I1},
                   {slots, 3 * kRecurrentStrip, s.H}});
}

template <typename T>
const T* recurrent_saved_h(const T* saved, const RecurrentShape& s, int64_t t, int64_t b) {
  const Strip st = strip_at(s, strip_of(s, b));
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

// The backward of one strip: its loop over time from the last step, then its weight gradients, added to `sums`
// (a group's: written when `first`).
template <typename T>
struct StripBackward {
  const RecurrentShape& s;
  T *dx, *dh0, *dc0;
  const T *dy, *dh_n, *dc_n, *x, *w_ih, *w_hh, *zeros;
  SavedViews<T> sv;
  int64_t bptt_steps;
  const GemmKernels<T>& kern;
  const RecurrentRowKernels<T>& rows;

  // scratch: a slot of backward_layout l
  void operator()(int64_t strip, T* scratch, const BackwardLayout& l, T* sums, bool first) const {
    const int64_t steps = s.T, I = s.I, H = s.H, GH = s.GH(), DP = recurrent_dp_width(s);
    const RecurrentCell cell = s.cell;
    const bool relu = cell == RecurrentCell::rnn_relu, gru = cell == RecurrentCell::gru,
               lstm = cell == RecurrentCell::lstm;
    const Strip st = strip_at(s, strip);
    const StripRows at{steps, st.b0, st.m};
    const int64_t m = st.m, b0 = st.b0;
    T *dp = scratch + l.dp, *xs = scratch + l.xs, *dc = scratch + l.dc;
    T* dh_in = scratch + l.dh_a;   // the strip's gradient reaching h_t ...
    T* dh_out = scratch + l.dh_b;  // ... and the one reaching h_{t-1}
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
        const T* dy_row = dy ? dy + ((b0 + r) * steps + t) * H : zeros;
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
        if (lstm) {
          prefetch(sv.acts + at.at(t - 1) * GH, m * GH);
          prefetch(sv.tanh_c + at.at(t - 1) * H, m * H);
          prefetch(sv.cs + at.at1(t - 1) * H, m * H);
        } else if (gru) {
          prefetch(sv.acts + at.at(t - 1) * GH, m * GH);
          prefetch(sv.hn + at.at(t - 1) * H, m * H);
        }
        prefetch(sv.hs + at.at1(t - 1) * H, 2 * m * H);
        if (dy)
          for (int64_t r = 0; r < m; ++r) prefetch(dy + ((b0 + r) * steps + t - 1) * H, H);
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
    // [dw_ih | db | dw_hh]^T (I+1+H, GH) += [x | 1 | h_prev]^T . dp (dp's hidden side: gru's [0, 3H), which also
    // holds the input side's p_r, p_z), gru's a_n: [dw_ih | db]^T (I+1, H) += [x | 1]^T . dp[3H, 4H).
    const int64_t K = steps * m, I1 = I + 1;
    const T beta = first ? T(0) : T(1);
    for (int64_t t = 0; t < steps; ++t)
      for (int64_t r = 0; r < m; ++r) {
        T* row = xs + (t * m + r) * I1;
        std::copy_n(x + ((b0 + r) * steps + t) * I, I, row);
        row[I] = T(1);
      }
    small_gemm_tn(kern, sums, GH, xs, I1, dp, DP, I1, GH, K, beta);
    small_gemm_tn(kern, sums + I1 * GH, GH, sv.hs + at.at1(0) * H, H, dp, DP, H, GH, K, beta);
    if (gru) small_gemm_tn(kern, sums + l.dw_t2, H, xs, I1, dp + 3 * H, DP, I1, H, K, beta);
  }
};

// dy (B,T,H), saved -> dx (B,T,I), dh0, dc0 (B,H); dw_ih (GH,I), dw_hh (GH,H), db_ih, db_hh (GH) accumulated
template <typename T>
void recurrent_backward(T* dx, T* dh0, T* dc0, T* dw_ih, T* dw_hh, T* db_ih, T* db_hh, T* workspace, const T* dy,
                        const T* dh_n, const T* dc_n, const T* x, const T* w_ih, const T* w_hh, const T* saved,
                        const RecurrentShape& s, int64_t bptt_steps, int threads, bool accumulate) {
  const int64_t I = s.I, H = s.H, GH = s.GH();
  const bool gru = s.cell == RecurrentCell::gru;
  const int64_t n_strips = strips(s), n_groups = groups(s), slots = std::max(threads, 1);
  const BackwardLayout wl = backward_layout(s, slots);
  T* zeros = workspace;  // dy's row when dy is null
  std::fill_n(zeros, H, T(0));
  const StripBackward<T> strip_backward{s, dx, dh0, dc0, dy, dh_n, dc_n, x, w_ih, w_hh, zeros,
                                        saved_views(const_cast<T*>(saved), s), bptt_steps, gemm_kernels(T{}),
                                        recurrent_row_kernels(T{})};
  // One task per scratch slot (as many as threads run, at most one per group), each taking the next group until
  // none is left, and a group's strips in order: which thread computes a group never changes what it sums.
  std::atomic<int64_t> next_group{0};
  const double work = double(s.B) * double(s.T) * double(GH) * double(2 * H + I);
  const int64_t tasks = std::min<int64_t>({threads_for(work < 1e18 ? int64_t(work) : int64_t(1e18)), slots, n_groups});
  parallel_tasks(tasks, int(tasks), [&](int64_t slot) {
    for (int64_t group; (group = next_group.fetch_add(1)) < n_groups;) {
      const int64_t first = n_strips * group / n_groups, last = n_strips * (group + 1) / n_groups;
      for (int64_t strip = first; strip < last; ++strip)
        strip_backward(strip, workspace + wl.slots + slot * wl.slot_size, wl,
                       workspace + wl.sums + group * wl.sums_size, strip == first);
    }
  });

  // The groups' sums, added into group 0's in group order, then transposed into the weight gradients.
  if (n_groups == 0) {  // an empty batch: nothing to add
    if (!accumulate) {
      std::fill_n(dw_ih, GH * I, T(0));
      std::fill_n(dw_hh, GH * H, T(0));
      if (db_ih) std::fill_n(db_ih, GH, T(0)), std::fill_n(db_hh, GH, T(0));
    }
    return;
  }
  T* sums = workspace + wl.sums;  // group 0's
  parallel_for(wl.sums_size, n_groups, [&](int64_t i0, int64_t i1) {
    for (int64_t q = 1; q < n_groups; ++q) {
      const T* add = sums + q * wl.sums_size;
      for (int64_t i = i0; i < i1; ++i) sums[i] += add[i];
    }
  });
  const T *dw_t = sums, *dw_t2 = sums + wl.dw_t2;
  const T* db = dw_t + I * GH;  // the 1s' row: dp's column sums
  const int64_t in_rows = gru ? 2 * H : GH;  // dw_ih's rows from dw_t; gru's a_n rows from dw_t2
  put_transposed(dw_ih, dw_t, in_rows, I, GH, accumulate);
  if (gru) put_transposed(dw_ih + 2 * H * I, dw_t2, H, I, H, accumulate);
  put_transposed(dw_hh, dw_t + (I + 1) * GH, GH, H, GH, accumulate);
  if (db_ih) {
    put_transposed(db_ih, db, in_rows, 1, GH, accumulate);
    if (gru) put_transposed(db_ih + 2 * H, dw_t2 + I * H, H, 1, H, accumulate);
    put_transposed(db_hh, db, GH, 1, GH, accumulate);
  }
}

#define FUSEPROP_INSTANTIATE(T)                                                                                    \
  template void recurrent_forward<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*, const T*, const T*,      \
                                     const T*, const T*, const RecurrentShape&);                                \
  template void recurrent_backward<T>(T*, T*, T*, T*, T*, T*, T*, T*, const T*, const T*, const T*, const T*,   \
                                      const T*, const T*, const T*, const RecurrentShape&, int64_t, int, bool); \
  template const T* recurrent_saved_h<T>(const T*, const RecurrentShape&, int64_t, int64_t);
FUSEPROP_INSTANTIATE(float)
FUSEPROP_INSTANTIATE(double)
#undef FUSEPROP_INSTANTIATE

}  // namespace fuseprop
