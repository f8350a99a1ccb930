// The AVX-512F multiply-add loop. This file alone is compiled with -mavx512f -mfma; it runs only
// after cpu_features.cpp has found AVX-512F and OS support for the ZMM and mask registers.
#define FUSEPROP_SIMD_NS avx512
#include "core/fma_peak.h"
#include "core/fma_peak_simd.h"
#include "core/simd_avx512.h"

namespace fuseprop {
namespace avx512 {

// 16 chains (twice latency x pipes) + the two constants, of the 32 ZMM registers.
constexpr int kChains = 16;

}  // namespace avx512

extern const FmaLoop fma_loop_avx512 = {"avx512", 2 * avx512::kChains * avx512::Avx512::width,
                                        avx512::fma_chains<avx512::Avx512, avx512::kChains>};

}  // namespace fuseprop
