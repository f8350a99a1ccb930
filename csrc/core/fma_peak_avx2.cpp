// The AVX2+FMA multiply-add loop. This file alone is compiled with -mavx2 -mfma; it runs only after
// cpu_features.cpp has found AVX2, FMA and OS support for the YMM registers.
#define FUSEPROP_SIMD_NS avx2
#include "core/fma_peak.h"
#include "core/fma_peak_simd.h"
#include "core/simd_avx2.h"

namespace fuseprop {
namespace avx2 {

// 12 chains + the two constants fit the 16 YMM registers, with no spill to the stack.
constexpr int kChains = 12;

}  // namespace avx2

extern const FmaLoop fma_loop_avx2 = {"avx2", 2 * avx2::kChains * avx2::Avx2::width,
                                      avx2::fma_chains<avx2::Avx2, avx2::kChains>};

}  // namespace fuseprop
