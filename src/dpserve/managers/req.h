#pragma once
// Req: the scheduler's state of one sequence (SGLang's Req): prompt and outputs, sampling state,
// stop checker with incremental detokenization, KV slots and radix-cache lock, finish reason, and
// the output not yet handed to the caller.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dpserve/managers/io_struct.h"
#include "dpserve/mem_cache/radix_cache.h"
#include "dpserve/sampling/sampler.h"
#include "dpserve/sampling/sampling_params.h"
#include "dpserve/sampling/stop_checker.h"

namespace dpserve {

struct Req {
  // A sequence of request `rid`, completion `index`; `arrival` orders the waiting queue (fcfs).
  Req(std::string rid, int64_t index, uint64_t arrival, std::vector<int32_t> input_ids,
      SamplingParams params, RequestSamplingState sampling_state,
      std::unique_ptr<StopChecker> stop_checker);

  std::string rid;                            // request id (shared by the n completions)
  int64_t index;                              // completion index in [0, n)
  uint64_t arrival;                           // admission order; kept across retractions
  std::vector<int32_t> origin_input_ids;      // the prompt
  std::vector<int32_t> output_ids;            // generated tokens
  SamplingParams sampling_params;             // validated, max_new_tokens clipped to the context
  RequestSamplingState sampling_state;        // seed, step counter, penalty statistics
  std::unique_ptr<StopChecker> stop_checker;  // finish detection and output text
  // KV state: token_ids = prompt + outputs; kv_slots = slots of the computed tokens; the first
  // prefix_len of them belong to the radix cache and are locked through last_node.
  CacheReq cache;
  std::optional<FinishReason> finished_reason;  // set once finished (or aborted)

  int64_t cached_tokens = 0;            // prompt tokens matched in the prefix cache at admission
  bool admitted_once = false;           // cached_tokens is set at the first admission only
  int64_t num_retractions = 0;          // times this sequence went back to the waiting queue
  int64_t siblings_to_fork = 0;         // n > 1 leader: completions 1..n-1 forked after its prefill
  int64_t extend_input_len = 0;         // tokens this step computes for the sequence
  bool prefill_done_this_step = false;  // the step computed the last fill token (logits usable)

  RequestOutput pending;  // output gathered since the last step's outputs were taken

  // Tokens whose K/V must exist before the next sample: prompt plus outputs.
  int64_t fill_len() const { return static_cast<int64_t>(cache.token_ids.size()); }
  // Tokens whose K/V is in the pool.
  int64_t computed_len() const { return static_cast<int64_t>(cache.kv_slots.size()); }
  // True once finished or aborted.
  bool finished() const { return finished_reason.has_value(); }
  // Generated tokens still allowed.
  int64_t remaining_new_tokens() const {
    return sampling_params.max_new_tokens - static_cast<int64_t>(output_ids.size());
  }
  // A short name for logs: rid, or rid#index for n > 1 completions.
  std::string log_name() const;
  // Takes the gathered output (counts and cache info filled in) and starts a new one.
  RequestOutput take_output();
};

}  // namespace dpserve
