#pragma once
// LoadReporter: the scheduler side of the DataParallelController's load view. A DP group leader
// calls it from its event loop with the values it has at hand; it sends a LoadReport at most every
// `interval`, never blocking the loop (a report that cannot be queued is dropped; the next one
// replaces it).
//
//   MessageSocket to_controller(zmq::socket_type::push);
//   to_controller.connect(ipc_endpoint(runtime_dir, kDpControllerLoadSocket));
//   LoadReporter reporter(to_controller, dp_rank);
//   ... in the loop, every iteration (also while idle):
//   if (reporter.due()) reporter.report({.num_running_reqs = ..., ...});
//
// The same socket carries the leader's control answers (FlushCacheResp / GetServerInfoResp with
// dp_rank set) to the controller; see data_parallel_controller.h.

#include <chrono>
#include <cstdint>

#include "dpserve/ipc/io_struct.h"
#include "dpserve/ipc/zmq_socket.h"

namespace dpserve {

// The load values a scheduler reports (LoadReport without dp_rank and timestamp).
struct SchedulerLoad {
  int64_t num_running_reqs = 0;   // requests in the running batch
  int64_t num_waiting_reqs = 0;   // requests queued for prefill
  int64_t num_used_tokens = 0;    // KV tokens in use
  int64_t num_queued_tokens = 0;  // prompt tokens of the waiting requests
  int64_t max_total_tokens = 0;   // usable KV pool size in tokens
};

class LoadReporter {
 public:
  // Default interval between reports (SGLang's load watcher reports every 0.1 s).
  static constexpr std::chrono::milliseconds kDefaultInterval{100};

  // Reports for `dp_rank` on `socket` (a connected PUSH, which must outlive the reporter);
  // `interval` is the shortest time between two reports.
  LoadReporter(MessageSocket& socket, int32_t dp_rank,
               std::chrono::milliseconds interval = kDefaultInterval);

  // True when a report would be sent now (the interval has passed since the last one).
  bool due() const;
  // Sends a report when due (or always with `force`, e.g. right after startup); true if sent.
  bool report(const SchedulerLoad& load, bool force = false);

  // The DP group this reporter speaks for.
  int32_t dp_rank() const { return dp_rank_; }
  // Reports sent so far.
  int64_t num_sent() const { return num_sent_; }
  // Reports that could not be queued (no controller connected).
  int64_t num_dropped() const { return num_dropped_; }

 private:
  MessageSocket& socket_;
  int32_t dp_rank_;
  std::chrono::milliseconds interval_;
  std::chrono::steady_clock::time_point last_{};  // when the last report was sent
  bool sent_any_ = false;
  int64_t num_sent_ = 0;
  int64_t num_dropped_ = 0;
};

}  // namespace dpserve
