// The thread count every kernel uses. Set from OMP_NUM_THREADS when present, otherwise the CPUs
// this process may run on; changed with set_num_threads. Kernels split work so that each output
// element is computed by exactly one thread in a fixed order: results do not depend on the count.
#pragma once

#include <cstdint>

namespace fuseprop {

int num_threads();
void set_num_threads(int n);  // n >= 1, checked by the caller
bool openmp_enabled();

// Work below this many multiply-adds runs on one thread: a team's start-up costs more than it saves.
constexpr int64_t kParallelMinWork = int64_t(1) << 18;

// Threads for a piece of work of `work` multiply-adds (or element updates).
inline int threads_for(int64_t work) { return work >= kParallelMinWork ? num_threads() : 1; }

}  // namespace fuseprop
