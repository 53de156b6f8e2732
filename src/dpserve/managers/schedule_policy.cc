#include "dpserve/managers/schedule_policy.h"

#include <algorithm>
#include <span>
#include <unordered_map>

#include "dpserve/common/errors.h"

namespace dpserve {

SchedulePolicy::SchedulePolicy(const std::string& name) {
  if (name == "fcfs") {
    kind_ = Kind::kFcfs;
  } else if (name == "lpm") {
    kind_ = Kind::kLpm;
  } else {
    throw_error("--schedule-policy: unknown policy '{}' (fcfs, lpm)", name);
  }
}

void SchedulePolicy::calc_priority(std::vector<Req*>& queue, RadixCache& cache) const {
  auto by_arrival = [](const Req* a, const Req* b) { return a->arrival < b->arrival; };
  if (kind_ == Kind::kFcfs || cache.disabled() || queue.size() > kLpmFallbackQueueLen) {
    std::stable_sort(queue.begin(), queue.end(), by_arrival);
    return;
  }
  std::unordered_map<const Req*, int64_t> prefix;
  for (const Req* r : queue) {
    // Same bound as admission: the last fill token is always computed.
    const auto n = static_cast<size_t>(std::max<int64_t>(r->fill_len() - 1, 0));
    prefix[r] = static_cast<int64_t>(
        cache.match_prefix(std::span<const int32_t>(r->cache.token_ids).first(n)).slots.size());
  }
  std::stable_sort(queue.begin(), queue.end(), [&](const Req* a, const Req* b) {
    const int64_t pa = prefix[a], pb = prefix[b];
    return pa != pb ? pa > pb : a->arrival < b->arrival;
  });
}

}  // namespace dpserve
