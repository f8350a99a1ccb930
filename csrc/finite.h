// Finiteness tests the training step runs on what it has just written, while it is still in cache.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fuseprop {

// a (n): true when some element is NaN or Inf, i.e. has every exponent bit set. An integer test ORed
// over the array has no branch and no floating-point reduction to keep in order, so the loop vectorises.
template <typename T>
bool any_nonfinite(const T* a, int64_t n) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr Bits exponent = sizeof(T) == 4 ? Bits(0x7f800000u) : Bits(0x7ff0000000000000ull);
  Bits bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    Bits u;
    std::memcpy(&u, a + i, sizeof u);
    bad |= Bits((u & exponent) == exponent);
  }
  return bad != 0;
}

}  // namespace fuseprop
