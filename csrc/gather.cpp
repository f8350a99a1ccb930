#include "gather.h"

#include <cstring>

namespace fuseprop {

// dst (B,D) <- rows index[0..B) of src (N,D): one copy per row, in order.
template <typename T>
void gather_rows(T* dst, const T* src, const int64_t* index, int64_t B, int64_t D) {
  const size_t row_bytes = size_t(D) * sizeof(T);
  for (int64_t b = 0; b < B; ++b) std::memcpy(dst + b * D, src + index[b] * D, row_bytes);
}

template void gather_rows<float>(float*, const float*, const int64_t*, int64_t, int64_t);
template void gather_rows<double>(double*, const double*, const int64_t*, int64_t, int64_t);
template void gather_rows<int64_t>(int64_t*, const int64_t*, const int64_t*, int64_t, int64_t);

}  // namespace fuseprop
