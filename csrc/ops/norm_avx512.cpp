// The normalisation kernels compiled for AVX-512 (-mavx512f), with -ffp-contract=off so that they compute the
// baseline's bits; called only after core/cpu_features.cpp has found the instruction set.
#define FUSEPROP_SIMD_NS avx512
#include "ops/norm_simd.h"
#include "ops/norm_kernels.h"

namespace fuseprop {

extern const NormKernels<float> norm_kernels_avx512 = FUSEPROP_NORM_KERNELS(avx512, float);

}  // namespace fuseprop
