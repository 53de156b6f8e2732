#include "dpserve/common/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "dpserve/common/errors.h"

namespace dpserve {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// Spin time from DPSERVE_POOL_SPIN_US, else the default.
int64_t spin_micros_setting() {
  const char* env = std::getenv("DPSERVE_POOL_SPIN_US");
  if (env == nullptr || *env == 0) return ThreadPool::kDefaultSpinMicros;
  return std::max<int64_t>(0, std::atoll(env));
}

// Spins until done() or until `micros` have passed; returns done(). Every 64 pauses it yields, so
// that on an oversubscribed CPU a spinning thread hands its core to runnable threads (which may
// be the ones it waits for) instead of burning its whole time slice.
template <typename Done>
bool spin_until(Done done, int64_t micros) {
  if (micros <= 0) return done();
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::microseconds(micros);
  for (int i = 0;; ++i) {
    if (done()) return true;
    if ((i & 63) == 63) {
      if (Clock::now() >= deadline) return done();
      std::this_thread::yield();
    }
    cpu_relax();
  }
}

}  // namespace

ThreadPool::ThreadPool(int num_threads)
    : num_threads_(std::max(1, num_threads)), spin_micros_(spin_micros_setting()) {
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    auto has_work = [&] {
      return stop_.load(std::memory_order_acquire) ||
             generation_.load(std::memory_order_acquire) != seen;
    };
    if (!spin_until(has_work, spin_micros_)) {
      std::unique_lock<std::mutex> lock(mu_);
      ++sleepers_;
      start_cv_.wait(lock, has_work);
      --sleepers_;
    }
    if (stop_.load(std::memory_order_acquire)) return;
    // generation_ cannot move on until this worker finishes the job, so task_ is the job's.
    seen = generation_.load(std::memory_order_acquire);
    (*task_)(index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      // Last worker out: wake the caller in case it stopped spinning (cheap when it did not).
      std::lock_guard<std::mutex> lock(mu_);
      done_cv_.notify_one();
    }
  }
}

void ThreadPool::run_on_all(const std::function<void(int)>& fn) {
  if (num_threads_ == 1) {
    fn(0);
    return;
  }
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mu_);
    DPSERVE_CHECK(pending_.load() == 0, "ThreadPool::run_on_all is not reentrant");
    task_ = &fn;
    pending_.store(num_threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    wake = sleepers_ > 0;
  }
  if (wake) start_cv_.notify_all();
  fn(0);
  auto done = [&] { return pending_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(done, spin_micros_)) {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, done);
  }
  task_ = nullptr;
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                              int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = (n + grain - 1) / grain;
  const int parts = static_cast<int>(std::min<int64_t>(num_threads_, chunks));
  if (parts == 1) {
    fn(0, n, 0);
    return;
  }
  run_on_all([&](int t) {
    if (t >= parts) return;
    const int64_t begin = std::min(n, (chunks * t / parts) * grain);
    const int64_t end = std::min(n, (chunks * (t + 1) / parts) * grain);
    if (begin < end) fn(begin, end, t);
  });
}

int default_num_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

}  // namespace dpserve
