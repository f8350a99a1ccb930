// The baseline copy of the normalisation kernels (every level for double, the generic level for float),
// and the choice of copy by CPU level.
#define FUSEPROP_SIMD_NS baseline
#include "ops/norm_simd.h"
#include "ops/norm.h"
#include "ops/norm_kernels.h"
#include "core/cpu_features.h"

namespace fuseprop {

namespace {

template <typename T>
const NormKernels<T> baseline_norm_kernels = FUSEPROP_NORM_KERNELS(baseline, T);

const NormKernels<float>& norm_kernels(float) {
#if defined(FUSEPROP_SIMD_X86)
  switch (cpu_level_active()) {
    case CpuLevel::avx512: return norm_kernels_avx512;
    case CpuLevel::avx2: return norm_kernels_avx2;
    default: break;
  }
#endif
  return baseline_norm_kernels<float>;
}

const NormKernels<double>& norm_kernels(double) { return baseline_norm_kernels<double>; }

}  // namespace

template <typename T>
void batch_norm_forward(T* y, T* save_mean, T* save_invstd, T* running_mean, T* running_var, const T* x,
                        const T* weight, const T* bias, int64_t N, int64_t C, int64_t S, bool training,
                        double momentum, double eps, Activation act, T slope) {
  norm_kernels(T()).batch_norm_forward(y, save_mean, save_invstd, running_mean, running_var, x, weight, bias, N, C, S,
                                       training, momentum, eps, act, slope);
}

template <typename T>
void batch_norm_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* y, const T* weight,
                         const T* bias, const T* mean, const T* invstd, int64_t N, int64_t C, int64_t S, bool training,
                         Activation act, T slope) {
  norm_kernels(T()).batch_norm_backward(dx, dweight, dbias, dy, x, y, weight, bias, mean, invstd, N, C, S, training,
                                        act, slope);
}

template <typename T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t M, int64_t D,
                        double eps) {
  norm_kernels(T()).layer_norm_forward(y, mean, rstd, x, weight, bias, M, D, eps);
}

template <typename T>
void layer_norm_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, const T* mean,
                         const T* rstd, int64_t M, int64_t D) {
  norm_kernels(T()).layer_norm_backward(dx, dweight, dbias, dy, x, weight, mean, rstd, M, D);
}

#define FUSEPROP_INSTANTIATE(T)                                                                                  \
  template void batch_norm_forward<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                      bool, double, double, Activation, T);                                      \
  template void batch_norm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, const T*,   \
                                       const T*, int64_t, int64_t, int64_t, bool, Activation, T);                \
  template void layer_norm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, double);       \
  template void layer_norm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t,    \
                                       int64_t);
FUSEPROP_INSTANTIATE(float)
FUSEPROP_INSTANTIATE(double)
#undef FUSEPROP_INSTANTIATE

}  // namespace fuseprop
