#include "core/threads.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <new>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace fuseprop {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

int default_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    const int n = std::atoi(env);  // "4" or "4,2" (nested levels): the first counts
    if (n >= 1) return n;
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}

// A job's task counter packs its generation (high bits) with the next task index (low bits), so a
// worker that read an old job's function can never claim a task of a newer job.
constexpr int kIndexBits = 40;
constexpr uint64_t kIndexMask = (uint64_t(1) << kIndexBits) - 1;

class TaskPool {
 public:
  explicit TaskPool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }
  ~TaskPool() {
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

  int workers() const { return static_cast<int>(threads_.size()); }

  void run(int64_t tasks, void (*fn)(void*, int64_t), void* ctx) {
    std::unique_lock<std::mutex> one_job(submit_mutex_, std::try_to_lock);
    if (!one_job.owns_lock()) {  // another thread is using the pool: run here, alone
      for (int64_t t = 0; t < tasks; ++t) fn(ctx, t);
      return;
    }
    const uint64_t gen = (generation_.load(std::memory_order_relaxed) + 1) & ((uint64_t(1) << (64 - kIndexBits)) - 1);
    // The task counter moves to the new generation, closed, BEFORE the job's fields change: a worker
    // that read an older generation and then reads any of the new fields (acquire) also sees the
    // counter closed to it, so it can never run one job's task with another job's function, context
    // or count. (Without this order, a worker preempted between reading the generation and the fields,
    // while two threads submitted one after the other, could run a task twice or end a job early.)
    next_.store((gen << kIndexBits) | kIndexMask, std::memory_order_seq_cst);
    fn_.store(fn, std::memory_order_release);
    ctx_.store(ctx, std::memory_order_release);
    total_.store(tasks, std::memory_order_release);
    done_.store(0, std::memory_order_relaxed);
    next_.store(gen << kIndexBits, std::memory_order_release);  // open
    generation_.store(gen, std::memory_order_seq_cst);  // publishes the fields above
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      wake_.notify_all();
    }
    take_tasks(gen, fn, ctx, tasks);
    for (int spins = 0; done_.load(std::memory_order_acquire) < tasks; ++spins) {
      if (spins < 4096) cpu_relax();
      else std::this_thread::yield();  // a worker was preempted mid-task
    }
  }

 private:
  // Claims and runs tasks of job `gen` until none is left (or a newer job has replaced it).
  void take_tasks(uint64_t gen, void (*fn)(void*, int64_t), void* ctx, int64_t total) {
    uint64_t v = next_.load(std::memory_order_acquire);
    while ((v >> kIndexBits) == gen && static_cast<int64_t>(v & kIndexMask) < total) {
      if (next_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        fn(ctx, static_cast<int64_t>(v & kIndexMask));
        done_.fetch_add(1, std::memory_order_acq_rel);
        v = next_.load(std::memory_order_acquire);
      }
    }
  }

  void work() {
    uint64_t seen = generation_.load(std::memory_order_acquire);
    for (;;) {
      uint64_t gen;
      const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
      while ((gen = generation_.load(std::memory_order_seq_cst)) == seen) {
        if (stop_.load(std::memory_order_relaxed)) return;
        if (std::chrono::steady_clock::now() < spin_until) {
          for (int i = 0; i < 64; ++i) cpu_relax();
          continue;
        }
        std::unique_lock<std::mutex> lock(sleep_mutex_);  // idle: sleep until the next job
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_seq_cst) != seen || stop_.load(); });
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      }
      seen = gen;
      take_tasks(gen, fn_.load(std::memory_order_acquire), ctx_.load(std::memory_order_acquire),
                 total_.load(std::memory_order_acquire));
    }
  }

  std::vector<std::thread> threads_;
  std::mutex submit_mutex_;  // one job at a time
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<bool> stop_{false};
  std::atomic<int> sleepers_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> next_{0};
  std::atomic<int64_t> done_{0};
  // The job, valid for the generation that published it (the task counter guards against stale reads).
  std::atomic<void (*)(void*, int64_t)> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<int64_t> total_{0};
};

std::mutex& pool_mutex() {
  static std::mutex m;
  return m;
}
std::atomic<int>& setting() {
  static std::atomic<int> n{default_threads()};
  return n;
}
std::shared_ptr<TaskPool>& pool_slot() {
  static std::shared_ptr<TaskPool> pool;
  return pool;
}

// A forked child has none of the parent's threads: forget the parent's pool (leaked, not joined:
// its threads do not exist here) and its lock, and make a fresh pool on first use.
void forget_pool_after_fork() {
  new (&pool_mutex()) std::mutex();
  new std::shared_ptr<TaskPool>(std::move(pool_slot()));
}

// The pool with num_threads() - 1 workers, made (or remade) on first use after a change.
std::shared_ptr<TaskPool> pool() {
#if defined(__unix__) || defined(__APPLE__)
  static const int registered = pthread_atfork(nullptr, nullptr, forget_pool_after_fork);
  (void)registered;
#endif
  std::lock_guard<std::mutex> lock(pool_mutex());
  auto& p = pool_slot();
  const int workers = setting().load() - 1;
  if (!p || p->workers() != workers) p = std::make_shared<TaskPool>(workers);
  return p;
}

}  // namespace

int num_threads() { return setting().load(std::memory_order_relaxed); }

void set_num_threads(int n) { setting().store(n < 1 ? 1 : n, std::memory_order_relaxed); }

void run_tasks(int64_t tasks, void (*fn)(void*, int64_t), void* ctx) {
  const std::shared_ptr<TaskPool> p = pool();
  if (p->workers() == 0) {
    for (int64_t t = 0; t < tasks; ++t) fn(ctx, t);
    return;
  }
  p->run(tasks, fn, ctx);
}

}  // namespace fuseprop
