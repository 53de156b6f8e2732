#include "dpserve/managers/load_reporter.h"

#include <spdlog/spdlog.h>

namespace dpserve {

LoadReporter::LoadReporter(MessageSocket& socket, int32_t dp_rank,
                           std::chrono::milliseconds interval)
    : socket_(socket), dp_rank_(dp_rank), interval_(interval) {}

bool LoadReporter::due() const {
  return !sent_any_ || std::chrono::steady_clock::now() - last_ >= interval_;
}

bool LoadReporter::report(const SchedulerLoad& load, bool force) {
  if (!force && !due()) return false;
  LoadReport r;
  r.dp_rank = dp_rank_;
  r.num_running_reqs = load.num_running_reqs;
  r.num_waiting_reqs = load.num_waiting_reqs;
  r.num_used_tokens = load.num_used_tokens;
  r.num_queued_tokens = load.num_queued_tokens;
  r.max_total_tokens = load.max_total_tokens;
  r.timestamp =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  last_ = std::chrono::steady_clock::now();
  sent_any_ = true;
  if (!socket_.send(Message{r}, Millis(0))) {
    if (num_dropped_++ == 0) {
      spdlog::warn("[dp {}] load report dropped: the DP controller is not connected", dp_rank_);
    }
    return false;
  }
  ++num_sent_;
  return true;
}

}  // namespace dpserve
