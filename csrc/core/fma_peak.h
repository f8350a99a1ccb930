// The core's measured floating-point peak: how many float multiply-adds per second the CPU retires
// when nothing but independent, register-only multiply-adds run on every thread. Benchmarks report
// their GFLOP/s as a share of it (what the hardware can do), not of another library's GEMM.
#pragma once

#include <cstdint>

namespace fuseprop {

// cpu_features.h's, declared here so that the SIMD files including this header see no std:: headers.
enum class CpuLevel : int;

// FLOP/s (2 per multiply-add) of `level`'s multiply-add loop on `threads` threads at once, over about
// `seconds` (after a short untimed warm-up). The pool is resized to `threads` for the call and
// restored after it. Threads the OS does not schedule in time do less work in the window, and the
// figure says so: it is what the threads achieved together, never a sum of separate runs.
// `level` must be one this CPU supports (checked by the caller).
double fma_peak(int threads, double seconds, CpuLevel level);

// One instruction set's loop, for fma_peak.cpp: `run(iterations)` performs iterations *
// flops_per_iteration / 2 multiply-adds and returns a value that depends on all of them (so that none
// can be optimised away).
struct FmaLoop {
  const char* name;
  int64_t flops_per_iteration;
  float (*run)(int64_t iterations);
};

#if defined(FUSEPROP_SIMD_X86)
extern const FmaLoop fma_loop_avx2;    // fma_peak_avx2.cpp
extern const FmaLoop fma_loop_avx512;  // fma_peak_avx512.cpp
#endif

}  // namespace fuseprop
