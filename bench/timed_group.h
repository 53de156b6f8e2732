#pragma once
// TimedProcessGroup: a ProcessGroup decorator for benchmarks. It forwards every collective to
// another group and accumulates the wall time and the number of calls per operation. With
// split_wait on (a diagnostic mode) every all_reduce_sum is preceded by a barrier timed apart: the
// time a rank waits for a slower (or descheduled) peer is then reported as "wait" and not as the
// cost of the all-reduce itself. The barrier costs one round trip of its own, so the step time of
// that mode is a little higher than without it.

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "dpserve/distributed/process_group.h"

namespace dpserve::bench {

// The operations TimedProcessGroup tells apart.
enum class CollectiveOp {
  kAllReduce,       // all_reduce_sum (after the wait barrier in split_wait mode)
  kAllGatherv,      // all_gatherv
  kAllGatherBytes,  // all_gather_bytes (also all_gather_i64)
  kBroadcast,       // broadcast_bytes (also broadcast_string)
  kBarrier,         // barrier() called by the user of the group
  kWait,            // split_wait mode: the barrier before each all_reduce_sum
  kCount,           // number of operations (not an operation)
};

// Number of CollectiveOp values.
inline constexpr int kNumCollectiveOps = static_cast<int>(CollectiveOp::kCount);

// A short name for an operation ("all_reduce", "wait" ...).
inline const char* collective_op_name(CollectiveOp op) {
  switch (op) {
    case CollectiveOp::kAllReduce:
      return "all_reduce";
    case CollectiveOp::kAllGatherv:
      return "all_gatherv";
    case CollectiveOp::kAllGatherBytes:
      return "all_gather_bytes";
    case CollectiveOp::kBroadcast:
      return "broadcast";
    case CollectiveOp::kBarrier:
      return "barrier";
    case CollectiveOp::kWait:
      return "wait";
    case CollectiveOp::kCount:
      break;
  }
  return "?";
}

// Accumulated wall time and calls of one operation.
struct OpTime {
  double seconds = 0;  // total wall seconds inside the operation
  int64_t calls = 0;   // number of calls
  int64_t slow = 0;    // calls that took at least the group's slow_threshold_s()
};

// ProcessGroup that forwards to `inner` and times every call (see the top of the file).
class TimedProcessGroup : public ProcessGroup {
 public:
  // Wraps `inner` (not owned; must outlive this object).
  explicit TimedProcessGroup(ProcessGroup& inner) : inner_(inner) {}

  // The inner group's rank.
  int rank() const override { return inner_.rank(); }
  // The inner group's size.
  int size() const override { return inner_.size(); }
  // The inner group's name.
  const std::string& name() const override { return inner_.name(); }

  // Forwards; in split_wait mode first meets the other ranks at a barrier timed as kWait.
  void all_reduce_sum(float* data, int64_t n) override {
    if (split_wait_) {
      const double t0 = now_s();
      inner_.barrier();
      add(CollectiveOp::kWait, now_s() - t0);
    }
    const double t0 = now_s();
    inner_.all_reduce_sum(data, n);
    add(CollectiveOp::kAllReduce, now_s() - t0);
  }
  // Forwards, timed as kAllGatherv.
  void all_gatherv(const float* in, float* out, const std::vector<int64_t>& counts) override {
    const double t0 = now_s();
    inner_.all_gatherv(in, out, counts);
    add(CollectiveOp::kAllGatherv, now_s() - t0);
  }
  // Forwards, timed as kAllGatherBytes.
  void all_gather_bytes(const void* in, size_t bytes, void* out) override {
    const double t0 = now_s();
    inner_.all_gather_bytes(in, bytes, out);
    add(CollectiveOp::kAllGatherBytes, now_s() - t0);
  }
  // Forwards, timed as kBroadcast.
  void broadcast_bytes(void* data, size_t bytes, int root) override {
    const double t0 = now_s();
    inner_.broadcast_bytes(data, bytes, root);
    add(CollectiveOp::kBroadcast, now_s() - t0);
  }
  // Forwards, timed as kBarrier.
  void barrier() override {
    const double t0 = now_s();
    inner_.barrier();
    add(CollectiveOp::kBarrier, now_s() - t0);
  }

  // Turns the barrier before each all_reduce_sum on or off (every rank must agree).
  void set_split_wait(bool on) { split_wait_ = on; }
  // Whether the barrier before each all_reduce_sum is on.
  bool split_wait() const { return split_wait_; }
  // Calls at least this long (seconds) are counted in OpTime::slow (default 2 ms).
  void set_slow_threshold_s(double s) { slow_threshold_s_ = s; }
  // The threshold of OpTime::slow in seconds.
  double slow_threshold_s() const { return slow_threshold_s_; }
  // Time and calls of `op` since the last reset().
  const OpTime& time(CollectiveOp op) const { return times_[static_cast<size_t>(op)]; }
  // Zeroes every counter.
  void reset() { times_ = {}; }

 private:
  static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  void add(CollectiveOp op, double s) {
    OpTime& t = times_[static_cast<size_t>(op)];
    t.seconds += s;
    ++t.calls;
    if (s >= slow_threshold_s_) ++t.slow;
  }

  ProcessGroup& inner_;             // the group doing the work
  bool split_wait_ = false;         // barrier before all-reduces
  double slow_threshold_s_ = 2e-3;  // OpTime::slow threshold
  std::array<OpTime, static_cast<size_t>(kNumCollectiveOps)> times_{};  // per operation
};

}  // namespace dpserve::bench
