// The elementwise loops of the training step's last phases: optimizer updates and finiteness tests.
// Written once as plain loops over restrict pointers, and compiled once per instruction set
// (elementwise.cpp at the baseline, elementwise_avx2.cpp, elementwise_avx512.cpp with their -m flags
// and -ffp-contract=off), so the compiler vectorises them as wide as the CPU allows while every level
// computes the same bits: no FMA contraction, no reassociation. Each unit defines FUSEPROP_SIMD_NS
// first, so each copy has its own names (see gemm/gemm_simd.h for why).
#pragma once

#include <cstdint>
#include <type_traits>

#include "ops/optim_math.h"

#ifndef FUSEPROP_SIMD_NS
#error "define FUSEPROP_SIMD_NS before including elementwise_simd.h"
#endif

namespace fuseprop {
namespace FUSEPROP_SIMD_NS {

// Elements updated between finiteness tests: small enough that the test reads them from L1.
constexpr int64_t kCheckBlock = 2048;

// a (n): true when some element is NaN or Inf, i.e. has every exponent bit set. An integer test ORed
// over the array has no branch and no floating-point reduction to keep in order, so it vectorises.
template <typename T>
bool any_nonfinite(const T* a, int64_t n) {
  using Bits = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  constexpr Bits exponent = sizeof(T) == 4 ? Bits(0x7f800000u) : Bits(0x7ff0000000000000ull);
  Bits bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    Bits u;
    __builtin_memcpy(&u, a + i, sizeof u);
    bad |= Bits((u & exponent) == exponent);
  }
  return bad != 0;
}

// SGD over [0, n): sgd_update (ops/optim_math.h) per element, force-inlined, so no copy of it compiled
// with this file's flags exists outside this namespace's loops. The configuration is a set of template
// parameters, so each loop has no branch and vectorises; the bindings have checked that no two arrays overlap.
template <typename T, bool Decay, bool Momentum, bool Nesterov, bool FirstStep>
void sgd_range(T* __restrict param, T* __restrict buf, const T* __restrict grad, int64_t n, T lr, T momentum,
               T dampening, T weight_decay) {
  for (int64_t i = 0; i < n; ++i) {
    T b = Momentum && !FirstStep ? buf[i] : T(0);
    param[i] = sgd_update(param[i], grad[i], b, lr, momentum, dampening, weight_decay, Decay, Momentum, Nesterov,
                          FirstStep);
    if (Momentum) buf[i] = b;
  }
}

// Adam over [0, n): adam_update (ops/optim_math.h) per element, as sgd_range
template <typename T, bool Decoupled, bool Decay>
void adam_range(T* __restrict param, T* __restrict exp_avg, T* __restrict exp_avg_sq, const T* __restrict grad,
                int64_t n, T beta1, T beta2, T eps, T weight_decay, T decay, T step_size, T bias_correction2_sqrt) {
  for (int64_t i = 0; i < n; ++i) {
    T m = exp_avg[i], v = exp_avg_sq[i];
    param[i] = adam_update(param[i], grad[i], m, v, beta1, beta2, eps, weight_decay, Decoupled, Decay, decay, step_size,
                           bias_correction2_sqrt);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
  }
}

// One thread's share [0, n) of an SGD update, tested block by block while each is in L1: true when
// some updated parameter is NaN or Inf.
template <typename T>
bool sgd_chunk(T* param, T* buf, const T* grad, int64_t n, T lr, T momentum, T dampening, bool nesterov,
               T weight_decay, bool first_step) {
  using Range = void (*)(T*, T*, const T*, int64_t, T, T, T, T);
  const bool decay = weight_decay != T(0);
  Range range;
  if (momentum == T(0)) range = decay ? sgd_range<T, true, false, false, false> : sgd_range<T, false, false, false, false>;
  else if (first_step && nesterov) range = decay ? sgd_range<T, true, true, true, true> : sgd_range<T, false, true, true, true>;
  else if (first_step) range = decay ? sgd_range<T, true, true, false, true> : sgd_range<T, false, true, false, true>;
  else if (nesterov) range = decay ? sgd_range<T, true, true, true, false> : sgd_range<T, false, true, true, false>;
  else range = decay ? sgd_range<T, true, true, false, false> : sgd_range<T, false, true, false, false>;
  bool nonfinite = false;
  for (int64_t b = 0; b < n; b += kCheckBlock) {
    const int64_t e = n - b < kCheckBlock ? n : b + kCheckBlock;
    range(param + b, buf ? buf + b : nullptr, grad + b, e - b, lr, momentum, dampening, weight_decay);
    nonfinite |= any_nonfinite(param + b, e - b);
  }
  return nonfinite;
}

// One thread's share [0, n) of an Adam update, tested as sgd_chunk's.
template <typename T>
bool adam_chunk(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, int64_t n, T beta1, T beta2, T eps,
                T weight_decay, bool decoupled, T decay, T step_size, T bias_correction2_sqrt) {
  auto range = decoupled ? adam_range<T, true, false>
               : weight_decay != T(0) ? adam_range<T, false, true> : adam_range<T, false, false>;
  bool nonfinite = false;
  for (int64_t b = 0; b < n; b += kCheckBlock) {
    const int64_t e = n - b < kCheckBlock ? n : b + kCheckBlock;
    range(param + b, exp_avg + b, exp_avg_sq + b, grad + b, e - b, beta1, beta2, eps, weight_decay, decay, step_size,
          bias_correction2_sqrt);
    nonfinite |= any_nonfinite(param + b, e - b);
  }
  return nonfinite;
}

}  // namespace FUSEPROP_SIMD_NS
}  // namespace fuseprop
