// The AVX2+FMA float GEMM kernels. This file alone is compiled with -mavx2 -mfma; its kernels run
// only after core/cpu_features.cpp has found AVX2, FMA and OS support for the YMM registers.
#define FUSEPROP_SIMD_NS avx2
#include "gemm/gemm_simd.h"
#include "gemm/gemm_kernels.h"
#include "core/simd_avx2.h"

namespace fuseprop {
namespace avx2 {

// 6 x 16 tile: 12 accumulators + 2 B vectors + 1 broadcast of the 16 YMM registers.
constexpr int MR = 6, NV = 2;
// 3 x 4 dot tile: 12 accumulators + 3 A vectors + 1 B vector.
constexpr int DM = 3, DN = 4;

}  // namespace avx2

extern const GemmKernels<float> gemm_kernels_avx2 = {
    "avx2", avx2::MR, avx2::NV * avx2::Avx2::width,
    avx2::packed_tile<avx2::Avx2, avx2::MR, avx2::NV>, avx2::tile<avx2::Avx2, avx2::MR, avx2::NV>,
    avx2::DM, avx2::DN, avx2::dot_tile<avx2::Avx2, avx2::DM, avx2::DN>,
    avx2::pack_a, avx2::pack_b, avx2::NV * avx2::Avx2::width, 512};

}  // namespace fuseprop
