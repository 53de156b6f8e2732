#pragma once
// A fixed pool of worker threads for data-parallel loops in the CPU kernels.
//
// Idle workers spin for a short while before blocking, and so does the caller while it waits for
// the workers: a model forward dispatches hundreds of short jobs per step, and waking a blocked
// thread costs tens of microseconds on a VM, which spinning avoids. The spin time is
// kDefaultSpinMicros, or DPSERVE_POOL_SPIN_US from the environment (0 disables spinning, e.g. on
// a machine shared with other busy processes).

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dpserve {

class ThreadPool {
 public:
  // How long an idle worker (or a waiting caller) spins before blocking, in microseconds.
  static constexpr int64_t kDefaultSpinMicros = 200;

  // Starts num_threads - 1 workers; the calling thread is the remaining one.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Number of threads that run a parallel_for, including the caller.
  int num_threads() const { return num_threads_; }

  // Splits [0, n) into num_threads contiguous ranges and runs fn(begin, end, thread_index) on each,
  // returning when all are done. Ranges are aligned to `grain` elements (except the last).
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                    int64_t grain = 1);

  // Runs fn(thread_index) once on every thread and waits.
  void run_on_all(const std::function<void(int)>& fn);

 private:
  void worker_loop(int index);

  int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  const std::function<void(int)>* task_ = nullptr;  // current job, valid while pending_ > 0
  std::atomic<uint64_t> generation_{0};             // bumped (under mu_) for each job
  std::atomic<int> pending_{0};                     // workers still running the current job
  int sleepers_ = 0;                                // workers blocked on start_cv_ (under mu_)
  std::atomic<bool> stop_{false};
  int64_t spin_micros_;  // kDefaultSpinMicros or DPSERVE_POOL_SPIN_US
};

// Default thread count: the number of online CPUs.
int default_num_threads();

}  // namespace dpserve
