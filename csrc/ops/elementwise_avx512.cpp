// The elementwise loops compiled for AVX-512F (-mavx512f), with -ffp-contract=off so that they compute the
// baseline's bits; called only after core/cpu_features.cpp has found the instruction set.
#define FUSEPROP_SIMD_NS avx512
#include "ops/elementwise_simd.h"
#include "ops/elementwise_kernels.h"

namespace fuseprop {

extern const ElementwiseKernels<float> elementwise_kernels_avx512 = {"avx512", avx512::any_nonfinite<float>, avx512::sgd_chunk<float>,
                                                                 avx512::adam_chunk<float>};

}  // namespace fuseprop
