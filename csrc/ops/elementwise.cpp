// The baseline copy of the elementwise loops (every level for double, the generic level for float),
// and the choice of copy by CPU level.
#define FUSEPROP_SIMD_NS baseline
#include "ops/elementwise_simd.h"
#include "ops/elementwise_kernels.h"
#include "core/cpu_features.h"

namespace fuseprop {

namespace {

template <typename T>
const ElementwiseKernels<T> baseline_kernels = {"generic", baseline::any_nonfinite<T>, baseline::sgd_chunk<T>,
                                                 baseline::adam_chunk<T>};

}  // namespace

const ElementwiseKernels<float>& elementwise_kernels(float) {
#if defined(FUSEPROP_SIMD_X86)
  switch (cpu_level_active()) {
    case CpuLevel::avx512: return elementwise_kernels_avx512;
    case CpuLevel::avx2: return elementwise_kernels_avx2;
    default: break;
  }
#endif
  return baseline_kernels<float>;
}

const ElementwiseKernels<double>& elementwise_kernels(double) { return baseline_kernels<double>; }

}  // namespace fuseprop
