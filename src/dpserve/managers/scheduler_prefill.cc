// The prefill adder (SGLang's get_new_batch_prefill + PrefillAdder): which waiting requests join
// this step's prefill batch, and how many of their tokens.
//
// Budgets, checked in this order for each request in policy order:
//   - max_running_requests: running + this batch;
//   - KV tokens: free pages + evictable radix-cache tokens, minus a reservation for the future
//     tokens of every running request (min(remaining max_new_tokens, clip) * new_token_ratio),
//     must cover the request's uncached prompt plus its whole clipped max_new_tokens;
//   - max_prefill_tokens: prompt tokens per step (the first request may exceed it);
//   - chunked_prefill_size: prompt tokens per step; a request longer than what is left is cut,
//     becomes the chunked request and is continued first by the next steps.
// Slots are allocated as requests are added, so each check sees the pool as it is.

#include <algorithm>
#include <limits>

#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"
#include "dpserve/managers/scheduler.h"

namespace dpserve {

int64_t Scheduler::reserved_decode_tokens(const Req* req) const {
  const int64_t left =
      std::min(req->remaining_new_tokens(), config_.clip_max_new_tokens_estimation);
  return static_cast<int64_t>(static_cast<double>(std::max<int64_t>(left, 0)) * new_token_ratio_);
}

bool Scheduler::alloc_slots(Req* req, int64_t n) {
  if (n <= 0) return true;
  std::vector<int32_t>& slots = req->cache.kv_slots;
  const int64_t page = allocator_.page_size();
  const int64_t pages =
      slots.empty() ? (n + page - 1) / page : allocator_.pages_needed_for_extend(slots.back(), n);
  if (!tree_.make_room(pages * page)) return false;
  std::optional<std::vector<int32_t>> got =
      slots.empty() ? allocator_.alloc(n) : allocator_.alloc_extend(slots.back(), n);
  if (!got) return false;
  slots.insert(slots.end(), got->begin(), got->end());
  return true;
}

std::optional<ScheduleBatch> Scheduler::get_new_batch_prefill() {
  if (waiting_queue_.empty() && chunked_req_ == nullptr) return std::nullopt;
  constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();
  int64_t rem_chunk = config_.chunked_prefill_size > 0 ? config_.chunked_prefill_size : kUnlimited;
  int64_t rem_input = config_.max_prefill_tokens;
  int64_t reserved = 0;
  for (const Req* r : running_) reserved += reserved_decode_tokens(r);
  auto budget = [&] { return allocator_.available_tokens() + tree_.evictable_size() - reserved; };

  ScheduleBatch batch;
  batch.mode = ForwardMode::kExtend;
  if (Req* r = chunked_req_) {
    const int64_t extend = r->fill_len() - r->computed_len();
    const int64_t take = std::min(extend, rem_chunk);
    if (!alloc_slots(r, take)) return std::nullopt;  // decode (and retraction) make room first
    chunked_req_ = nullptr;
    r->extend_input_len = take;
    batch.reqs.push_back(r);
    rem_chunk -= take;
    rem_input -= take;
    reserved += (extend - take) +
                std::min(r->remaining_new_tokens(), config_.clip_max_new_tokens_estimation);
    if (take < extend) return batch;  // still chunked: nothing else fits in this chunk
  }

  policy_.calc_priority(waiting_queue_, tree_);
  std::vector<Req*> admitted;
  // Sequences after this batch: n > 1 requests count their siblings (forked after prefill).
  auto num_seqs = static_cast<int64_t>(running_.size() + batch.reqs.size());
  for (Req* r : waiting_queue_) {
    if (num_seqs + 1 + r->siblings_to_fork > config_.max_running_requests && num_seqs > 0) break;
    if (rem_chunk <= 0 || rem_input <= 0) break;
    // The last fill token is always computed, so that its logits exist.
    const int64_t prefix = tree_.match_and_lock(r->cache, r->fill_len() - 1);
    const int64_t extend = r->fill_len() - prefix;
    const int64_t own_future =
        std::min(r->remaining_new_tokens(), config_.clip_max_new_tokens_estimation);
    // n > 1 reserves for every completion, except alone (then a sibling that finds no room
    // prefills later): a request that fits the pool by itself is never refused forever.
    const bool alone = running_.empty() && batch.reqs.empty();
    const int64_t future = alone ? own_future : (1 + r->siblings_to_fork) * own_future;
    if (extend + future > budget() || (!batch.reqs.empty() && extend > rem_input)) {
      tree_.release_req(r->cache);
      break;
    }
    const int64_t take = std::min(extend, rem_chunk);
    if (!alloc_slots(r, take)) {
      tree_.release_req(r->cache);
      break;
    }
    if (!r->admitted_once) {
      r->admitted_once = true;
      r->cached_tokens = prefix;
      stats_.num_cached_tokens += prefix;
    }
    spdlog::debug("[{}] prefill: {} tokens ({} cached, {} this step)", r->log_name(), r->fill_len(),
                  prefix, take);
    r->extend_input_len = take;
    batch.reqs.push_back(r);
    admitted.push_back(r);
    num_seqs += 1 + r->siblings_to_fork;
    rem_chunk -= take;
    rem_input -= take;
    reserved += (extend - take) + future;
    if (take < extend) break;  // this one is now the chunked request
  }
  if (!admitted.empty()) {
    std::erase_if(waiting_queue_, [&](Req* r) {
      return std::find(admitted.begin(), admitted.end(), r) != admitted.end();
    });
  }
  if (batch.reqs.empty()) return std::nullopt;
  return batch;
}

}  // namespace dpserve
