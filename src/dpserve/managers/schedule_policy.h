#pragma once
// SchedulePolicy (SGLang's schedule_policy.py): the order in which waiting requests are
// considered for the next prefill batch.
//   fcfs: first come, first served (arrival order; retracted requests keep their place).
//   lpm:  longest prefix match first, measured against the radix cache; falls back to fcfs when
//         the cache is disabled or more than kLpmFallbackQueueLen requests wait (as SGLang does).

#include <cstdint>
#include <string>
#include <vector>

#include "dpserve/managers/req.h"
#include "dpserve/mem_cache/radix_cache.h"

namespace dpserve {

class SchedulePolicy {
 public:
  // Above this many waiting requests lpm orders by arrival (matching every prompt costs time).
  static constexpr size_t kLpmFallbackQueueLen = 128;

  // The policies known by name.
  enum class Kind { kFcfs, kLpm };

  // name: "fcfs" or "lpm"; throws dpserve::Error naming --schedule-policy otherwise.
  explicit SchedulePolicy(const std::string& name);

  // The chosen policy.
  Kind kind() const { return kind_; }

  // Sorts `queue` into the order the prefill adder walks it. lpm looks each prompt up in `cache`
  // (without locking anything).
  void calc_priority(std::vector<Req*>& queue, RadixCache& cache) const;

 private:
  Kind kind_;
};

}  // namespace dpserve
