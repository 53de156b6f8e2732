#pragma once
// A fixed pool of worker threads for data-parallel loops in the CPU kernels.

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dpserve {

class ThreadPool {
 public:
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
  uint64_t generation_ = 0;                         // bumped for each job
  int pending_ = 0;                                 // workers still running the current job
  bool stop_ = false;
};

// Default thread count: the number of online CPUs.
int default_num_threads();

}  // namespace dpserve
