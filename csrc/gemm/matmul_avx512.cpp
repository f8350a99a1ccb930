// The AVX-512F float GEMM kernels. This file alone is compiled with -mavx512f -mfma; its kernels
// run only after core/cpu_features.cpp has found AVX-512F and OS support for the ZMM and mask registers.
// The tile logic is gemm_simd.h's, shared with (and tested through) the AVX2 kernels.
#define FUSEPROP_SIMD_NS avx512
#include "gemm/gemm_simd.h"
#include "gemm/gemm_kernels.h"
#include "core/simd_avx512.h"

namespace fuseprop {
namespace avx512 {

// 12 x 32 tile: 24 accumulators + 2 B vectors + 1 broadcast of the 32 ZMM registers.
constexpr int MR = 12, NV = 2;
// 6 x 4 dot tile: 24 accumulators + 6 A vectors + 1 B vector.
constexpr int DM = 6, DN = 4;

}  // namespace avx512

extern const GemmKernels<float> gemm_kernels_avx512 = {
    "avx512", avx512::MR, avx512::NV * avx512::Avx512::width,
    avx512::packed_tile<avx512::Avx512, avx512::MR, avx512::NV>,
    avx512::tile<avx512::Avx512, avx512::MR, avx512::NV>,
    avx512::DM, avx512::DN, avx512::dot_tile<avx512::Avx512, avx512::DM, avx512::DN>,
    avx512::pack_a, avx512::pack_b, avx512::NV * avx512::Avx512::width, 512};

}  // namespace fuseprop
