// The recurrent cells' row loops compiled for AVX2 and FMA (-mavx2 -mfma), multiply-adds contracted into FMAs
// (-ffp-contract=fast); called only after core/cpu_features.cpp has found the instruction set.
#define FUSEPROP_SIMD_NS avx2
#include "ops/recurrent_kernels.h"
#include "ops/recurrent_simd.h"

namespace fuseprop {

extern const RecurrentRowKernels<float> recurrent_row_kernels_avx2 = avx2::row_kernels<float>("avx2");

}  // namespace fuseprop
