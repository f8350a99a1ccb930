// The recurrent cells' row loops compiled for AVX-512F and FMA (-mavx512f -mfma), multiply-adds contracted into FMAs
// (-ffp-contract=fast); called only after core/cpu_features.cpp has found the instruction set.
#define FUSEPROP_SIMD_NS avx512
#include "ops/recurrent_kernels.h"
#include "ops/recurrent_simd.h"

namespace fuseprop {

extern const RecurrentRowKernels<float> recurrent_row_kernels_avx512 = avx512::row_kernels<float>("avx512");

}  // namespace fuseprop
