#pragma once
// ThreadGroup: a test-only, in-process ProcessGroup whose ranks are threads sharing memory. Each
// collective publishes the ranks' buffer pointers, meets at a barrier, and every rank reads the
// others' buffers directly. Sums run in rank order, so every rank gets bit-identical results (as
// with a real all-reduce). A failed rank aborts the group: the others' collectives then throw
// DistributedError instead of waiting forever, and a collective that waits longer than the
// timeout throws too.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <immintrin.h>

#include "dpserve/distributed/process_group.h"

namespace dpserve::testing {

class ThreadGroup : public ProcessGroup {
 public:
  // The `size` rank handles of one new group (element i is rank i), to be used one per thread.
  static std::vector<std::unique_ptr<ThreadGroup>> create(
      int size, const std::string& name = "tp",
      std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
    auto state = std::make_shared<State>(size, name, timeout);
    std::vector<std::unique_ptr<ThreadGroup>> out;
    for (int r = 0; r < size; ++r) out.emplace_back(new ThreadGroup(state, r));
    return out;
  }

  // This rank.
  int rank() const override { return rank_; }
  // Ranks in the group.
  int size() const override { return s_->size; }
  // The group's name.
  const std::string& name() const override { return s_->name; }

  // Each rank sums its 1/size() share of the elements over all ranks' buffers (rank order) and
  // writes the sum into every buffer.
  void all_reduce_sum(float* data, int64_t n) override {
    s_->ptrs[rank_] = data;
    wait();
    const int p = size();
    const int64_t begin = n * rank_ / p, end = n * (rank_ + 1) / p;
    float* acc = static_cast<float*>(s_->ptrs[0]);
    for (int r = 1; r < p; ++r) {
      const float* src = static_cast<const float*>(s_->ptrs[r]);
      for (int64_t i = begin; i < end; ++i) acc[i] += src[i];
    }
    for (int r = 1; r < p; ++r) {
      std::memcpy(static_cast<float*>(s_->ptrs[r]) + begin, acc + begin,
                  static_cast<size_t>(end - begin) * sizeof(float));
    }
    wait();
  }

  // Copies every rank's `in` into this rank's `out`, rank after rank.
  void all_gatherv(const float* in, float* out, const std::vector<int64_t>& counts) override {
    DPSERVE_CHECK(static_cast<int>(counts.size()) == size(), "all_gatherv: counts per rank");
    s_->ptrs[rank_] = const_cast<float*>(in);
    wait();
    int64_t offset = 0;
    for (int r = 0; r < size(); ++r) {
      // A rank with nothing to send may pass a null `in` (memcpy must not see it, even for 0).
      if (counts[r] > 0) {
        std::memcpy(out + offset, s_->ptrs[r], static_cast<size_t>(counts[r]) * sizeof(float));
      }
      offset += counts[r];
    }
    wait();
  }

  // Copies `bytes` bytes from every rank into out, rank after rank.
  void all_gather_bytes(const void* in, size_t bytes, void* out) override {
    s_->ptrs[rank_] = const_cast<void*>(in);
    wait();
    for (int r = 0; r < size(); ++r) {
      std::memcpy(static_cast<char*>(out) + r * bytes, s_->ptrs[r], bytes);
    }
    wait();
  }

  // Copies root's bytes to every other rank.
  void broadcast_bytes(void* data, size_t bytes, int root) override {
    s_->ptrs[rank_] = data;
    wait();
    if (rank_ != root) std::memcpy(data, s_->ptrs[root], bytes);
    wait();
  }

  // Waits for every rank.
  void barrier() override { wait(); }

  // Makes every rank's waiting and future collectives throw DistributedError.
  void abort() {
    std::lock_guard<std::mutex> lk(s_->mu);
    s_->aborted.store(true);
    s_->cv.notify_all();
  }

 private:
  struct State {
    State(int n, std::string nm, std::chrono::milliseconds t)
        : size(n), name(std::move(nm)), timeout(t), ptrs(static_cast<size_t>(n)) {}
    const int size;
    const std::string name;
    const std::chrono::milliseconds timeout;
    std::vector<void*> ptrs;  // each rank's buffer in the current collective
    std::mutex mu;
    std::condition_variable cv;
    std::atomic<int> arrived{0};
    std::atomic<uint64_t> generation{0};
    std::atomic<bool> aborted{false};
  };

  ThreadGroup(std::shared_ptr<State> s, int rank) : s_(std::move(s)), rank_(rank) {}

  [[noreturn]] void fail(const char* why) const {
    throw DistributedError("thread group '" + s_->name + "' rank " + std::to_string(rank_) + ": " +
                           why);
  }

  // Generation barrier: the last rank to arrive bumps the generation; the others wait for it.
  void wait() {
    State& s = *s_;
    if (s.aborted.load()) fail("aborted by another rank");
    const uint64_t gen = s.generation.load(std::memory_order_acquire);
    if (s.arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == s.size) {
      s.arrived.store(0, std::memory_order_relaxed);
      {
        std::lock_guard<std::mutex> lk(s.mu);
        s.generation.fetch_add(1, std::memory_order_release);
      }
      s.cv.notify_all();
      return;
    }
    // A short spin, then yields (ranks may outnumber cores: a spinning rank must not keep the
    // core from the rank it waits for), then blocking.
    for (int i = 0; i < 256; ++i) {
      if (s.generation.load(std::memory_order_acquire) != gen) return;
      _mm_pause();
    }
    for (int i = 0; i < 2000; ++i) {
      if (s.generation.load(std::memory_order_acquire) != gen) return;
      std::this_thread::yield();
    }
    std::unique_lock<std::mutex> lk(s.mu);
    const bool done = s.cv.wait_for(lk, s.timeout, [&] {
      return s.generation.load(std::memory_order_acquire) != gen || s.aborted.load();
    });
    if (s.generation.load(std::memory_order_acquire) != gen) return;
    fail(done ? "aborted by another rank" : "timed out waiting for the other ranks");
  }

  std::shared_ptr<State> s_;
  int rank_;
};

// Runs fn(rank) on one thread per group handle and joins them. A rank that throws aborts the
// group (so the others fail fast instead of waiting); the first exception thrown is rethrown.
inline void run_ranks(std::vector<std::unique_ptr<ThreadGroup>>& groups,
                      const std::function<void(int)>& fn) {
  std::mutex mu;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  for (size_t r = 0; r < groups.size(); ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(static_cast<int>(r));
      } catch (...) {
        {
          std::lock_guard<std::mutex> lk(mu);
          if (!first) first = std::current_exception();
        }
        groups[r]->abort();
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace dpserve::testing
