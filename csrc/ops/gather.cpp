#include "ops/gather.h"

#include <cstring>

#include "core/threads.h"

namespace fuseprop {

// dst (B,D) <- rows index[0..B) of src (N,D): one copy per row. The rows of a shuffled batch come
// from all over a large dataset, so each copy waits on memory: threads take contiguous runs of rows,
// each thread's misses in flight alongside the others'.
template <typename T>
void gather_rows(T* dst, const T* src, const int64_t* index, int64_t B, int64_t D) {
  const size_t row_bytes = size_t(D) * sizeof(T);
  parallel_for(B, D * 4, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) std::memcpy(dst + b * D, src + index[b] * D, row_bytes);
  });
}

template void gather_rows<float>(float*, const float*, const int64_t*, int64_t, int64_t);
template void gather_rows<double>(double*, const double*, const int64_t*, int64_t, int64_t);
template void gather_rows<int64_t>(int64_t*, const int64_t*, const int64_t*, int64_t, int64_t);

}  // namespace fuseprop
