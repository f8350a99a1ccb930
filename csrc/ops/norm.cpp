#include "ops/norm.h"

#include <algorithm>
#include <type_traits>

#include "core/threads.h"

namespace fuseprop {

namespace {

// Accumulators per thread: a batch norm of (N,C) takes channels kColumns at a time (a row's slice of
// them is contiguous), as does layer norm's sum over rows for dweight and dbias.
constexpr int64_t kColumns = 16;
// A contiguous sum runs in kLanes lanes (lane l takes values l, l + kLanes, ...) added in lane order at
// the end: a fixed order, so the same bits at any thread count, and one the compiler vectorises, where
// a single running sum must stay serial (it may not reorder floating-point additions).
constexpr int kLanes = 8;

// s1 += sum(v - shift), s2 += sum((v - shift)^2) over p[0, n), in double.
template <typename T>
void add_shifted_sums(double& s1, double& s2, const T* __restrict p, int64_t n, double shift) {
  double a1[kLanes] = {}, a2[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double d = double(p[i + l]) - shift;
      a1[l] += d;
      a2[l] += d * d;
    }
  for (int l = 0; i < n; ++i, ++l) {
    const double d = double(p[i]) - shift;
    a1[l] += d;
    a2[l] += d * d;
  }
  for (int l = 0; l < kLanes; ++l) {
    s1 += a1[l];
    s2 += a2[l];
  }
}

// sg += sum(g), sgx += sum(g * (x - mean)) over [0, n), in double, with g = dy * w (W) or dy.
template <typename T, bool W>
void add_grad_sums(double& sg, double& sgx, const T* __restrict dy, const T* __restrict x, const T* __restrict w,
                   int64_t n, double mean) {
  double a1[kLanes] = {}, a2[kLanes] = {};
  auto add = [&](int l, int64_t i) {
    const double g = W ? double(dy[i]) * double(w[i]) : double(dy[i]);
    a1[l] += g;
    a2[l] += g * (double(x[i]) - mean);
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) add(l, i + l);
  for (int l = 0; i < n; ++i, ++l) add(l, i);
  for (int l = 0; l < kLanes; ++l) {
    sg += a1[l];
    sgx += a2[l];
  }
}

// Passes over the data for the variance. float32: one, its sums in double shifted by the first value:
// double's 29 extra bits absorb the cancellation in s2 - s1^2/n unless the mean is thousands of
// standard deviations from that value. float64 has no wider type to sum in, so a second pass sums
// again shifted by the first pass's mean: the two-pass algorithm, exact to rounding for any offset.
template <typename T>
constexpr int kVariancePasses = std::is_same_v<T, double> ? 2 : 1;

// Mean and biased variance of channel c of x (N,C,S): N contiguous runs of S values.
template <typename T>
MeanVar channel_mean_var(const T* x, int64_t N, int64_t C, int64_t S, int64_t c) {
  const int64_t n = N * S;
  double shift = n ? double(x[c * S]) : 0.0;
  MeanVar mv{};
  for (int pass = 0; pass < kVariancePasses<T>; ++pass) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t r = 0; r < N; ++r) add_shifted_sums(s1, s2, x + (r * C + c) * S, S, shift);
    mv = mean_var_from_shifted_sums(s1, s2, shift, n);
    shift = mv.mean;
  }
  return mv;
}

// The same for columns c0 .. c0+cols (cols <= kColumns) of x (N,C): each column summed row after row.
template <typename T>
void column_mean_var(MeanVar* mv, const T* x, int64_t N, int64_t C, int64_t c0, int64_t cols) {
  double shift[kColumns], s1[kColumns], s2[kColumns];
  for (int64_t j = 0; j < cols; ++j) shift[j] = N ? double(x[c0 + j]) : 0.0;
  for (int pass = 0; pass < kVariancePasses<T>; ++pass) {
    std::fill_n(s1, cols, 0.0);
    std::fill_n(s2, cols, 0.0);
    for (int64_t r = 0; r < N; ++r) {
      const T* xr = x + r * C + c0;
      for (int64_t j = 0; j < cols; ++j) {
        const double d = double(xr[j]) - shift[j];
        s1[j] += d;
        s2[j] += d * d;
      }
    }
    for (int64_t j = 0; j < cols; ++j) {
      mv[j] = mean_var_from_shifted_sums(s1[j], s2[j], shift[j], N);
      shift[j] = mv[j].mean;
    }
  }
}

// What normalising one channel takes: y = (x - mean) * scale + bias, scale = invstd * weight.
struct ChannelAffine {
  double mean, scale, bias;
};

}  // namespace

// x, y (N,C,S); weight, bias, running_*, save_* (C): statistics per channel, then y in a second pass
template <typename T>
void batch_norm_forward(T* y, T* save_mean, T* save_invstd, T* running_mean, T* running_var, const T* x,
                        const T* weight, const T* bias, int64_t N, int64_t C, int64_t S, bool training,
                        double momentum, double eps) {
  const int64_t n = N * S;
  // Channel c's statistics (batch or running), saved and folded with its weight and bias.
  auto affine = [&](int64_t c, MeanVar batch) {
    double mean, invstd;
    if (training) {
      mean = batch.mean;
      invstd = norm_invstd(batch.var, eps);
      if (running_mean && n > 0) {  // PyTorch leaves the running statistics alone on an empty batch
        running_mean[c] = T(running_update(double(running_mean[c]), batch.mean, momentum));
        running_var[c] = T(running_update(double(running_var[c]), unbiased_var(batch.var, n), momentum));
      }
    } else {
      mean = double(running_mean[c]);
      invstd = norm_invstd(double(running_var[c]), eps);
    }
    save_mean[c] = T(mean);
    save_invstd[c] = T(invstd);
    return ChannelAffine{mean, weight ? invstd * double(weight[c]) : invstd, bias ? double(bias[c]) : 0.0};
  };
  if (S == 1) {
    // (N,C): threads take blocks of kColumns channels; each reads its block row after row.
    parallel_for(ceil_div(C, kColumns), N * kColumns * 4, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t c0 = b * kColumns, cols = std::min(kColumns, C - c0);
        MeanVar mv[kColumns] = {};
        if (training) column_mean_var(mv, x, N, C, c0, cols);
        ChannelAffine a[kColumns];
        for (int64_t j = 0; j < cols; ++j) a[j] = affine(c0 + j, mv[j]);
        for (int64_t r = 0; r < N; ++r)
          for (int64_t j = 0; j < cols; ++j)
            y[r * C + c0 + j] = T(norm_apply(double(x[r * C + c0 + j]), a[j].mean, a[j].scale, a[j].bias));
      }
    });
    return;
  }
  // (N,C,S): threads take channels; channel c is N contiguous runs of S values.
  parallel_for(C, n * 4, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const ChannelAffine a = affine(c, training ? channel_mean_var(x, N, C, S, c) : MeanVar{});
      for (int64_t r = 0; r < N; ++r) {
        const T* xr = x + (r * C + c) * S;
        T* yr = y + (r * C + c) * S;
        for (int64_t s = 0; s < S; ++s) yr[s] = T(norm_apply(double(xr[s]), a.mean, a.scale, a.bias));
      }
    }
  });
}

// dy, x, dx (N,C,S); weight, mean, invstd, dweight, dbias (C): sum(dy) and sum(dy * (x - mean)) per
// channel in one pass, then dx in a second
template <typename T>
void batch_norm_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, const T* mean,
                         const T* invstd, int64_t N, int64_t C, int64_t S, bool training) {
  const int64_t n = N * S;
  const bool sums = (dx && training) || dweight || dbias;
  // Channel c's parameter gradients from its sums, and the constants of its dx:
  // dx = invstd * (g - mean_g - xhat * mean_g_xhat) with g = dy * w (norm_backward_dx).
  struct ChannelGrad {
    double mean, invstd, w, mean_g, mean_g_xhat;
  };
  auto finish = [&](int64_t c, double sdy, double sdyx) {
    const double m = double(mean[c]), is = double(invstd[c]), w = weight ? double(weight[c]) : 1.0;
    const double sdy_xhat = n ? sdyx * is : 0.0;  // never 0 * a NaN invstd of an empty batch
    if (dbias) dbias[c] += T(sdy);
    if (dweight) dweight[c] += T(sdy_xhat);
    if (!training || n == 0) return ChannelGrad{m, is, w, 0.0, 0.0};
    return ChannelGrad{m, is, w, w * sdy / double(n), w * sdy_xhat / double(n)};
  };
  auto dx_of = [](const ChannelGrad& k, T dyv, T xv) {
    return T(norm_backward_dx(double(dyv) * k.w, (double(xv) - k.mean) * k.invstd, k.invstd, k.mean_g, k.mean_g_xhat));
  };
  if (S == 1) {
    parallel_for(ceil_div(C, kColumns), N * kColumns * 4, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t c0 = b * kColumns, cols = std::min(kColumns, C - c0);
        double sdy[kColumns] = {}, sdyx[kColumns] = {}, m[kColumns];
        for (int64_t j = 0; j < cols; ++j) m[j] = double(mean[c0 + j]);
        if (sums)
          for (int64_t r = 0; r < N; ++r)
            for (int64_t j = 0; j < cols; ++j) {
              const double g = double(dy[r * C + c0 + j]);
              sdy[j] += g;
              sdyx[j] += g * (double(x[r * C + c0 + j]) - m[j]);
            }
        ChannelGrad k[kColumns];
        for (int64_t j = 0; j < cols; ++j) k[j] = finish(c0 + j, sdy[j], sdyx[j]);
        if (dx)
          for (int64_t r = 0; r < N; ++r)
            for (int64_t j = 0; j < cols; ++j) dx[r * C + c0 + j] = dx_of(k[j], dy[r * C + c0 + j], x[r * C + c0 + j]);
      }
    });
    return;
  }
  parallel_for(C, n * 4, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double sdy = 0.0, sdyx = 0.0;
      if (sums)
        for (int64_t r = 0; r < N; ++r)
          add_grad_sums<T, false>(sdy, sdyx, dy + (r * C + c) * S, x + (r * C + c) * S, nullptr, S, double(mean[c]));
      const ChannelGrad k = finish(c, sdy, sdyx);
      if (dx)
        for (int64_t r = 0; r < N; ++r) {
          const int64_t o = (r * C + c) * S;
          for (int64_t s = 0; s < S; ++s) dx[o + s] = dx_of(k, dy[o + s], x[o + s]);
        }
    }
  });
}

// x, y (M,D); weight, bias (D); mean, rstd (M): each row's statistics, then the row, on one thread
template <typename T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t M, int64_t D,
                        double eps) {
  parallel_for(M, D * 4, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* xr = x + i * D;
      T* yr = y + i * D;
      const MeanVar mv = channel_mean_var(xr, 1, 1, D, 0);
      const double rs = norm_invstd(mv.var, eps);
      mean[i] = T(mv.mean);
      rstd[i] = T(rs);
      for (int64_t j = 0; j < D; ++j)
        yr[j] = T(norm_apply(double(xr[j]), mv.mean, weight ? rs * double(weight[j]) : rs, bias ? double(bias[j]) : 0.0));
    }
  });
}

// dy, x, dx (M,D); weight, dweight, dbias (D); mean, rstd (M): dx row by row (its two sums, then the
// row), then dweight and dbias column by column (threads take column blocks, each summed row after row)
template <typename T>
void layer_norm_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, const T* mean,
                         const T* rstd, int64_t M, int64_t D) {
  if (dx)
    parallel_for(M, D * 6, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const T *dyr = dy + i * D, *xr = x + i * D;
        const double m = double(mean[i]), rs = double(rstd[i]);
        double sg = 0.0, sgx = 0.0;
        if (weight)
          add_grad_sums<T, true>(sg, sgx, dyr, xr, weight, D, m);
        else
          add_grad_sums<T, false>(sg, sgx, dyr, xr, nullptr, D, m);
        const double mean_g = sg / double(D), mean_g_xhat = sgx * rs / double(D);
        for (int64_t j = 0; j < D; ++j) {
          const double g = weight ? double(dyr[j]) * double(weight[j]) : double(dyr[j]);
          dx[i * D + j] = T(norm_backward_dx(g, (double(xr[j]) - m) * rs, rs, mean_g, mean_g_xhat));
        }
      }
    });
  if (!dweight && !dbias) return;
  parallel_for(ceil_div(D, kColumns), M * kColumns * 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kColumns, cols = std::min(kColumns, D - j0);
      double sw[kColumns] = {}, sb[kColumns] = {};
      for (int64_t i = 0; i < M; ++i) {
        const double m = double(mean[i]), rs = double(rstd[i]);
        const T *dyr = dy + i * D + j0, *xr = x + i * D + j0;
        for (int64_t j = 0; j < cols; ++j) {
          sb[j] += double(dyr[j]);
          sw[j] += double(dyr[j]) * ((double(xr[j]) - m) * rs);
        }
      }
      for (int64_t j = 0; j < cols; ++j) {
        if (dweight) dweight[j0 + j] += T(sw[j]);
        if (dbias) dbias[j0 + j] += T(sb[j]);
      }
    }
  });
}

#define FUSEPROP_INSTANTIATE(T)                                                                                  \
  template void batch_norm_forward<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                      bool, double, double);                                                     \
  template void batch_norm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t,   \
                                       int64_t, int64_t, bool);                                                  \
  template void layer_norm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, double);       \
  template void layer_norm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t,    \
                                       int64_t);
FUSEPROP_INSTANTIATE(float)
FUSEPROP_INSTANTIATE(double)
#undef FUSEPROP_INSTANTIATE

}  // namespace fuseprop
