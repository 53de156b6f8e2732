#include "dpserve/common/thread_pool.h"

#include <atomic>
#include <vector>

#include <gtest/gtest.h>

namespace dpserve {

TEST(ThreadPool, ParallelForCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 5, 64, 1001}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.parallel_for(
          n,
          [&](int64_t b, int64_t e, int) {
            for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
          },
          4);
      for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hits[static_cast<size_t>(i)].load(), 1);
    }
  }
}

TEST(ThreadPool, RunOnAllUsesEveryThread) {
  ThreadPool pool(4);
  std::atomic<int> mask{0};
  for (int rep = 0; rep < 100; ++rep) {
    mask = 0;
    pool.run_on_all([&](int t) { mask |= 1 << t; });
    EXPECT_EQ(mask.load(), 0xf);
  }
}

}  // namespace dpserve
