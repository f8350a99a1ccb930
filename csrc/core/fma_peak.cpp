#include "core/fma_peak.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

#include "core/cpu_features.h"
#include "core/threads.h"

#define FUSEPROP_SIMD_NS portable
#include "core/fma_peak_simd.h"

namespace fuseprop {

namespace portable {

// Four lanes of plain multiply and add: what the portable kernels' `acc += a * b` compiles to at the
// baseline instruction set (SSE2 on x86-64, NEON on aarch64; -ffp-contract=off keeps them two
// operations, 2 FLOPs as for a fused one). 12 chains + 2 constants fit the 16 XMM registers.
struct Lanes4 {
  struct reg {
    float v[4];
  };
  static constexpr int width = 4;
  static reg set1(float x) { return reg{{x, x, x, x}}; }
  static reg fma(reg a, reg b, reg c) {
    reg r;
    for (int l = 0; l < 4; ++l) r.v[l] = a.v[l] * b.v[l] + c.v[l];
    return r;
  }
  static reg add(reg a, reg b) {
    reg r;
    for (int l = 0; l < 4; ++l) r.v[l] = a.v[l] + b.v[l];
    return r;
  }
  static void store(float* p, reg v) {
    for (int l = 0; l < 4; ++l) p[l] = v.v[l];
  }
};

constexpr int kChains = 12;

const FmaLoop fma_loop_portable = {"generic", 2 * kChains * Lanes4::width, fma_chains<Lanes4, kChains>};

}  // namespace portable

namespace {

const FmaLoop& fma_loop(CpuLevel level) {
#if defined(FUSEPROP_SIMD_X86)
  switch (level) {
    case CpuLevel::avx512: return fma_loop_avx512;
    case CpuLevel::avx2: return fma_loop_avx2;
    default: break;
  }
#else
  (void)level;
#endif
  return portable::fma_loop_portable;
}

// Iterations between looks at the clock: about 10 microseconds of work, so the clock costs nothing
// and a thread overshoots the deadline by no more than that.
constexpr int64_t kBlock = 4096;

// Runs the loop on `threads` tasks at once until `seconds` have passed since the start; returns FLOP/s.
double run_window(const FmaLoop& loop, int threads, double seconds) {
  using clock = std::chrono::steady_clock;
  std::vector<int64_t> iterations(threads, 0);
  std::vector<float> results(threads, 0.0f);
  const auto start = clock::now();
  const auto deadline = start + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(seconds));
  // One task per thread. A task that starts late (its thread was not scheduled) still stops at the
  // common deadline, so the total counts only work done inside the window.
  parallel_tasks(threads, threads, [&](int64_t t) {
    int64_t n = 0;
    float r = 0.0f;
    do {
      r += loop.run(kBlock);
      n += kBlock;
    } while (clock::now() < deadline);
    iterations[t] = n;
    results[t] = r;
  });
  const double elapsed = std::chrono::duration<double>(clock::now() - start).count();
  int64_t total = 0;
  float keep = 0.0f;
  for (int t = 0; t < threads; ++t) {
    total += iterations[t];
    keep += results[t];
  }
  static std::atomic<float> sink{0.0f};  // the results are used, so no loop can be dropped
  sink.store(keep, std::memory_order_relaxed);
  return static_cast<double>(total) * static_cast<double>(loop.flops_per_iteration) / elapsed;
}

}  // namespace

double fma_peak(int threads, double seconds, CpuLevel level) {
  const FmaLoop& loop = fma_loop(level);
  // The pool takes `threads` for this call only (results elsewhere never depend on the thread count).
  struct PoolSize {
    int saved = num_threads();
    explicit PoolSize(int n) { set_num_threads(n); }
    ~PoolSize() { set_num_threads(saved); }
  } pool_size(threads);
  // Untimed: starts the pool's threads and lets the cores settle at the clock they hold under
  // wide multiply-adds (some lower it for AVX-512).
  run_window(loop, threads, std::min(0.05, 0.25 * seconds));
  return run_window(loop, threads, seconds);
}

}  // namespace fuseprop
