// Threads: a small task pool shared by every kernel.
//
// The thread count comes from OMP_NUM_THREADS when set, otherwise from the CPUs this process may
// run on, and changes with set_num_threads. Work is split into independent tasks (tiles, slabs,
// row or column ranges) that threads take from an atomic counter; the caller takes tasks too and
// returns as soon as every task is done. It never waits for a worker merely to show up, so a
// worker the OS has not scheduled (a busy, shared machine) costs nothing: the caller does its share.
// Each task's output is computed by one thread in a fixed order, so results do not depend on the
// thread count.
#pragma once

#include <cstdint>

namespace fuseprop {

int num_threads();
void set_num_threads(int n);  // n >= 1, checked by the caller

// Work below this many multiply-adds (or element updates) runs on the calling thread alone. Measured
// on the 784-16-16-10 training step: its 400k-multiply-add GEMMs gain 25% on two threads alone but
// lose inside the step, where the next layer must pull the other core's output across.
constexpr int64_t kParallelMinWork = int64_t(1) << 20;

// Threads worth using for `work` multiply-adds.
inline int threads_for(int64_t work) { return work >= kParallelMinWork ? num_threads() : 1; }

// Elementwise passes split sooner: they stream memory (each core brings its own L2 bandwidth) and
// their output is not read right away by the next kernel, so the cross-core traffic that makes small
// GEMMs lose does not apply. `cost` below counts element updates, about one cycle each.
constexpr int64_t kParallelMinElementwise = int64_t(1) << 18;

// Runs fn(ctx, i) for every i in [0, tasks), on up to num_threads() threads; returns when all are done.
void run_tasks(int64_t tasks, void (*fn)(void* ctx, int64_t task), void* ctx);

// body(task) for task in [0, tasks) with `threads` threads (1: inline, in order).
template <typename F>
void parallel_tasks(int64_t tasks, int threads, F&& body) {
  if (threads <= 1 || tasks <= 1) {
    for (int64_t t = 0; t < tasks; ++t) body(t);
    return;
  }
  run_tasks(tasks, [](void* ctx, int64_t t) { (*static_cast<F*>(ctx))(t); }, &body);
}

// body(begin, end) over [0, n) in contiguous chunks, for independent iterations only (elementwise
// updates, separate rows or columns). `cost` is the work of one iteration in element updates.
template <typename F>
void parallel_for(int64_t n, int64_t cost, F&& body) {
  const int threads = n * cost >= kParallelMinElementwise ? num_threads() : 1;
  const int64_t chunks = threads <= 1 ? 1 : (n < 4 * int64_t(threads) ? n : 4 * int64_t(threads));
  if (chunks <= 1) {
    if (n > 0) body(int64_t(0), n);
    return;
  }
  parallel_tasks(chunks, threads, [&](int64_t c) { body(n * c / chunks, n * (c + 1) / chunks); });
}

}  // namespace fuseprop
