// The elementwise loops compiled for AVX2 (-mavx2), with -ffp-contract=off so that they compute the
// baseline's bits; called only after core/cpu_features.cpp has found the instruction set.
#define FUSEPROP_SIMD_NS avx2
#include "ops/elementwise_simd.h"
#include "ops/elementwise_kernels.h"

namespace fuseprop {

extern const ElementwiseKernels<float> elementwise_kernels_avx2 = {"avx2", avx2::any_nonfinite<float>, avx2::sgd_chunk<float>,
                                                                 avx2::adam_chunk<float>};

}  // namespace fuseprop
