#include "threads.h"

#include <atomic>
#include <cstdlib>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#endif

namespace fuseprop {

namespace {

int default_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    const int n = std::atoi(env);  // "4" or "4,2" (nested): the first level counts
    if (n >= 1) return n;
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set) > 0 ? CPU_COUNT(&set) : 1;
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}

std::atomic<int>& setting() {
  static std::atomic<int> n{default_threads()};
  return n;
}

}  // namespace

int num_threads() {
#if defined(_OPENMP)
  return setting().load(std::memory_order_relaxed);
#else
  return 1;
#endif
}

void set_num_threads(int n) { setting().store(n < 1 ? 1 : n, std::memory_order_relaxed); }

bool openmp_enabled() {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

}  // namespace fuseprop
