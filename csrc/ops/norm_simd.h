// The normalisation kernels (ops/norm.h), written once and compiled once per instruction set: norm.cpp at
// the baseline, norm_avx2.cpp and norm_avx512.cpp with their -m flags and -ffp-contract=off, so the compiler
// vectorises the loops (float -> double conversions, the double sums in lanes) as wide as the CPU allows
// while every level computes the same bits. Each unit defines FUSEPROP_SIMD_NS first, so each copy has
// its own names (see gemm/gemm_simd.h for why).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/common.h"
#include "core/threads.h"
#include "ops/activation_math.h"
#include "ops/norm_math.h"

#ifndef FUSEPROP_SIMD_NS
#error "define FUSEPROP_SIMD_NS before including norm_simd.h"
#endif

namespace fuseprop {
namespace FUSEPROP_SIMD_NS {

// Accumulators per thread: a batch norm of (N,C) takes channels kNormColumns at a time (a row's slice of
// them is contiguous), as does layer norm's sum over rows for dweight and dbias.
constexpr int64_t kNormColumns = 16;
// A contiguous sum runs in kNormLanes lanes (lane l takes values l, l + kNormLanes, ...) added in lane
// order at the end: a fixed order, so the same bits at any thread count, and one the compiler vectorises,
// where a single running sum must stay serial (it may not reorder floating-point additions).
constexpr int kNormLanes = 8;

// The lane vectors below live inside force-inlined functions of this unit only, so GCC's note that their
// calling convention differs between instruction sets (-Wpsabi) concerns no call that exists.
#pragma GCC diagnostic ignored "-Wpsabi"

// kNormLanes doubles as one value (GCC/Clang vector extensions: as many registers as the level's width
// needs), so the lane sums vectorise; the compiler alone keeps an array of lane accumulators scalar.
typedef double Lanes __attribute__((vector_size(kNormLanes * sizeof(double))));
typedef float FloatLanes __attribute__((vector_size(kNormLanes * sizeof(float))));

// p[0, kNormLanes) in double.
template <typename T>
FUSEPROP_FORCEINLINE Lanes load_lanes(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    FloatLanes f;
    __builtin_memcpy(&f, p, sizeof f);
    return __builtin_convertvector(f, Lanes);
  } else {
    Lanes d;
    __builtin_memcpy(&d, p, sizeof d);
    return d;
  }
}

// v rounded to T, into p[0, kNormLanes).
template <typename T>
FUSEPROP_FORCEINLINE void store_lanes(T* p, Lanes v) {
  if constexpr (std::is_same_v<T, float>) {
    const FloatLanes f = __builtin_convertvector(v, FloatLanes);
    __builtin_memcpy(p, &f, sizeof f);
  } else {
    __builtin_memcpy(p, &v, sizeof v);
  }
}

// Adds the lanes, in lane order, to s.
FUSEPROP_FORCEINLINE void add_lanes(double& s, Lanes a) {
  for (int l = 0; l < kNormLanes; ++l) s += a[l];
}

// s1 += sum(v - shift), s2 += sum((v - shift)^2) over p[0, n), in double.
template <typename T>
FUSEPROP_FORCEINLINE void add_shifted_sums(double& s1, double& s2, const T* __restrict p, int64_t n, double shift) {
  Lanes a1 = {}, a2 = {};
  int64_t i = 0;
  for (; i + kNormLanes <= n; i += kNormLanes) {
    const Lanes d = load_lanes(p + i) - shift;
    a1 += d;
    a2 += d * d;
  }
  for (int l = 0; i < n; ++i, ++l) {
    const double d = double(p[i]) - shift;
    a1[l] += d;
    a2[l] += d * d;
  }
  add_lanes(s1, a1);
  add_lanes(s2, a2);
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

// The same for columns c0 .. c0+cols (cols <= kNormColumns) of x (N,C): each column summed row after row.
template <typename T>
void column_mean_var(MeanVar* mv, const T* x, int64_t N, int64_t C, int64_t c0, int64_t cols) {
  double shift[kNormColumns], s1[kNormColumns], s2[kNormColumns];
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

// What normalising one channel takes: z = (x - mean) * scale + bias, scale = invstd * weight.
struct ChannelAffine {
  double mean, scale, bias;
};

// The normalised value of x before the activation, rounded to T: the forward applies the activation to it,
// and the backward recomputes it (the same expression, so the same bits) for the activation's derivative.
template <typename T>
FUSEPROP_FORCEINLINE T normalized(T x, const ChannelAffine& a) {
  return T(norm_apply(double(x), a.mean, a.scale, a.bias));
}

// y = act((x - mean) * scale + bias) over [0, n): one channel's run of values.
template <Activation A, typename T>
FUSEPROP_FORCEINLINE void apply_run(T* __restrict y, const T* __restrict x, int64_t n, const ChannelAffine& a, T slope) {
  for (int64_t s = 0; s < n; ++s) y[s] = act_forward<A>(normalized(x[s], a), slope);
}

// The gradient reaching the normalised value: dy * act'(z), z recomputed from x.
template <Activation A, typename T>
FUSEPROP_FORCEINLINE double grad_at_norm(T dy, T x, T y, const ChannelAffine& a, T slope) {
  if constexpr (A == Activation::identity) {
    return double(dy);
  } else {
    return double(dy) * double(act_derivative<A>(normalized(x, a), y, slope));
  }
}

// grad_at_norm of kNormLanes values in a row, in lanes: the derivatives first (they vectorise for relu).
template <Activation A, typename T>
FUSEPROP_FORCEINLINE Lanes grad_lanes(const T* dy, const T* x, const T* y, const ChannelAffine& a, T slope) {
  if constexpr (A == Activation::identity) {
    return load_lanes(dy);
  } else if constexpr (A == Activation::relu || A == Activation::leaky_relu) {
    // act_derivative's z > 0 on z rounded to T (as normalized()), as a 0/1 mask in lanes
    const Lanes zd = (load_lanes(x) - a.mean) * a.scale + a.bias;
    Lanes positive;
    if constexpr (std::is_same_v<T, float>) {
      positive = __builtin_convertvector(-(__builtin_convertvector(zd, FloatLanes) > 0.0f), Lanes);
    } else {
      positive = __builtin_convertvector(-(zd > 0.0), Lanes);
    }
    if constexpr (A == Activation::relu) return load_lanes(dy) * positive;
    return load_lanes(dy) * (positive + (1.0 - positive) * double(slope));  // 1 or slope, exactly
  } else {
    T d[kNormLanes];
    for (int l = 0; l < kNormLanes; ++l) d[l] = act_derivative<A>(normalized(x[l], a), y[l], slope);
    return load_lanes(dy) * load_lanes(d);
  }
}

// x, y (N,C,S); weight, bias, running_*, save_* (C): statistics per channel, then y in a second pass
template <typename T>
void batch_norm_forward(T* y, T* save_mean, T* save_invstd, T* running_mean, T* running_var, const T* x,
                        const T* weight, const T* bias, int64_t N, int64_t C, int64_t S, bool training,
                        double momentum, double eps, Activation act, T slope) {
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
  FUSEPROP_DISPATCH_ACTIVATION(act, A, {
    if (S == 1) {
      // (N,C): threads take blocks of kNormColumns channels; each reads its block row after row.
      parallel_for(ceil_div(C, kNormColumns), N * kNormColumns * 4, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t c0 = b * kNormColumns, cols = std::min(kNormColumns, C - c0);
          MeanVar mv[kNormColumns] = {};
          if (training) column_mean_var(mv, x, N, C, c0, cols);
          ChannelAffine a[kNormColumns];
          for (int64_t j = 0; j < cols; ++j) a[j] = affine(c0 + j, mv[j]);
          for (int64_t r = 0; r < N; ++r)
            for (int64_t j = 0; j < cols; ++j)
              y[r * C + c0 + j] = act_forward<A>(normalized(x[r * C + c0 + j], a[j]), slope);
        }
      });
    } else {
      // (N,C,S): threads take channels; channel c is N contiguous runs of S values.
      parallel_for(C, n * 4, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const ChannelAffine a = affine(c, training ? channel_mean_var(x, N, C, S, c) : MeanVar{});
          for (int64_t r = 0; r < N; ++r) apply_run<A>(y + (r * C + c) * S, x + (r * C + c) * S, S, a, slope);
        }
      });
    }
  });
}

// dy, x, y, dx (N,C,S); weight, bias, mean, invstd, dweight, dbias (C): sum(g) and sum(g * (x - mean)) per
// channel in one pass, g = dy * act'(z) the gradient reaching the normalised value, then dx in a second
template <typename T>
void batch_norm_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* y, const T* weight,
                         const T* bias, const T* mean, const T* invstd, int64_t N, int64_t C, int64_t S, bool training,
                         Activation act, T slope) {
  const int64_t n = N * S;
  const bool sums = (dx && training) || dweight || dbias;
  // Channel c's parameter gradients from its sums, and the constants of its dx:
  // dx = invstd * (g w - mean_gw - xhat * mean_gw_xhat) (norm_backward_dx).
  struct ChannelGrad {
    double mean, invstd, w, mean_g, mean_g_xhat;
  };
  auto affine = [&](int64_t c) {  // the forward's z = (x - mean) * invstd * w + b of channel c
    const double is = double(invstd[c]);
    return ChannelAffine{double(mean[c]), weight ? is * double(weight[c]) : is, bias ? double(bias[c]) : 0.0};
  };
  auto finish = [&](int64_t c, double sdy, double sdyx) {
    const double m = double(mean[c]), is = double(invstd[c]), w = weight ? double(weight[c]) : 1.0;
    const double sdy_xhat = n ? sdyx * is : 0.0;  // never 0 * a NaN invstd of an empty batch
    if (dbias) dbias[c] += T(sdy);
    if (dweight) dweight[c] += T(sdy_xhat);
    if (!training || n == 0) return ChannelGrad{m, is, w, 0.0, 0.0};
    return ChannelGrad{m, is, w, w * sdy / double(n), w * sdy_xhat / double(n)};
  };
  auto dx_of = [](const ChannelGrad& k, double g, T xv) {
    return T(norm_backward_dx(g * k.w, (double(xv) - k.mean) * k.invstd, k.invstd, k.mean_g, k.mean_g_xhat));
  };
  FUSEPROP_DISPATCH_ACTIVATION(act, A, {
    if (S == 1) {
      parallel_for(ceil_div(C, kNormColumns), N * kNormColumns * 4, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t c0 = b * kNormColumns, cols = std::min(kNormColumns, C - c0);
          double sdy[kNormColumns] = {}, sdyx[kNormColumns] = {};
          ChannelAffine a[kNormColumns];
          for (int64_t j = 0; j < cols; ++j) a[j] = affine(c0 + j);
          if (sums)
            for (int64_t r = 0; r < N; ++r)
              for (int64_t j = 0; j < cols; ++j) {
                const int64_t i = r * C + c0 + j;
                const double g = grad_at_norm<A>(dy[i], x[i], A == Activation::identity ? T(0) : y[i], a[j], slope);
                sdy[j] += g;
                sdyx[j] += g * (double(x[i]) - a[j].mean);
              }
          ChannelGrad k[kNormColumns];
          for (int64_t j = 0; j < cols; ++j) k[j] = finish(c0 + j, sdy[j], sdyx[j]);
          if (dx)
            for (int64_t r = 0; r < N; ++r)
              for (int64_t j = 0; j < cols; ++j) {
                const int64_t i = r * C + c0 + j;
                dx[i] = dx_of(k[j], grad_at_norm<A>(dy[i], x[i], A == Activation::identity ? T(0) : y[i], a[j], slope),
                              x[i]);
              }
        }
      });
    } else {
      parallel_for(C, n * 4, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const ChannelAffine a = affine(c);
          double sdy = 0.0, sdyx = 0.0;
          if (sums)
            for (int64_t r = 0; r < N; ++r) {
              const int64_t o = (r * C + c) * S;
              const T *dyr = dy + o, *xr = x + o, *yr = A == Activation::identity ? nullptr : y + o;
              Lanes a1 = {}, a2 = {};
              int64_t s = 0;
              for (; s + kNormLanes <= S; s += kNormLanes) {
                const Lanes g = grad_lanes<A>(dyr + s, xr + s, yr ? yr + s : nullptr, a, slope);
                a1 += g;
                a2 += g * (load_lanes(xr + s) - a.mean);
              }
              for (int l = 0; s < S; ++s, ++l) {
                const double g = grad_at_norm<A>(dyr[s], xr[s], A == Activation::identity ? T(0) : yr[s], a, slope);
                a1[l] += g;
                a2[l] += g * (double(xr[s]) - a.mean);
              }
              add_lanes(sdy, a1);
              add_lanes(sdyx, a2);
            }
          const ChannelGrad k = finish(c, sdy, sdyx);
          if (dx)
            for (int64_t r = 0; r < N; ++r) {
              const int64_t o = (r * C + c) * S;
              const T *dyr = dy + o, *xr = x + o, *yr = A == Activation::identity ? nullptr : y + o;
              T* dxr = dx + o;
              int64_t s = 0;
              for (; s + kNormLanes <= S; s += kNormLanes) {  // dx_of, in lanes
                const Lanes g = grad_lanes<A>(dyr + s, xr + s, yr ? yr + s : nullptr, a, slope);
                const Lanes v = k.invstd * (g * k.w - k.mean_g - ((load_lanes(xr + s) - k.mean) * k.invstd) * k.mean_g_xhat);
                store_lanes(dxr + s, v);
              }
              for (; s < S; ++s)
                dxr[s] = dx_of(k, grad_at_norm<A>(dyr[s], xr[s], A == Activation::identity ? T(0) : yr[s], a, slope),
                               xr[s]);
            }
        }
      });
    }
  });
}

// sg += sum(g), sgx += sum(g * (x - mean)) over [0, n), in double, with g = dy * w (W) or dy.
template <typename T, bool W>
FUSEPROP_FORCEINLINE void add_grad_sums(double& sg, double& sgx, const T* __restrict dy, const T* __restrict x,
                                        const T* __restrict w, int64_t n, double mean) {
  Lanes a1 = {}, a2 = {};
  int64_t i = 0;
  for (; i + kNormLanes <= n; i += kNormLanes) {
    Lanes g = load_lanes(dy + i);
    if constexpr (W) g *= load_lanes(w + i);
    a1 += g;
    a2 += g * (load_lanes(x + i) - mean);
  }
  for (int l = 0; i < n; ++i, ++l) {
    const double g = W ? double(dy[i]) * double(w[i]) : double(dy[i]);
    a1[l] += g;
    a2[l] += g * (double(x[i]) - mean);
  }
  add_lanes(sg, a1);
  add_lanes(sgx, a2);
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
  parallel_for(ceil_div(D, kNormColumns), M * kNormColumns * 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kNormColumns, cols = std::min(kNormColumns, D - j0);
      double sw[kNormColumns] = {}, sb[kNormColumns] = {};
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

}  // namespace FUSEPROP_SIMD_NS
}  // namespace fuseprop
