// Decode of the running batch, with SGLang's memory check and retraction (check_decode_mem,
// retract_decode): when the pool cannot give every running request its next slot, evict from
// the radix cache first; if that is not enough, send requests back to the waiting queue (fewest
// generated tokens first, then the longest prompt, then the latest arrival), freeing their slots.
// They keep their generated tokens, sampling state and stop checker, are prefilled again
// (prompt + outputs) when there is room, and finish with the output they would have had.

#include <algorithm>

#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"
#include "dpserve/managers/scheduler.h"

namespace dpserve {

int64_t Scheduler::decode_pages_needed(const std::vector<Req*>& reqs) const {
  int64_t pages = 0;
  for (const Req* r : reqs) {
    pages += r->cache.kv_slots.empty()
                 ? 1
                 : allocator_.pages_needed_for_extend(r->cache.kv_slots.back(), 1);
  }
  return pages;
}

void Scheduler::retract(Req* req) {
  tree_.release_req(req->cache);
  req->extend_input_len = 0;
  ++req->num_retractions;
  ++stats_.num_retractions;
  waiting_queue_.push_back(req);
  spdlog::debug("[{}] retracted after {} output tokens", req->log_name(), req->output_ids.size());
}

void Scheduler::retract_decode() {
  const int64_t page = allocator_.page_size();
  // Candidates in keep order: the back is retracted first.
  std::vector<Req*> keep = running_;
  std::sort(keep.begin(), keep.end(), [](const Req* a, const Req* b) {
    if (a->output_ids.size() != b->output_ids.size()) {
      return a->output_ids.size() > b->output_ids.size();
    }
    if (a->origin_input_ids.size() != b->origin_input_ids.size()) {
      return a->origin_input_ids.size() < b->origin_input_ids.size();
    }
    return a->arrival < b->arrival;
  });
  auto fits = [&](int64_t headroom_tokens) {
    const int64_t need = decode_pages_needed(keep) + (headroom_tokens + page - 1) / page;
    tree_.make_room(need * page);
    return allocator_.num_free_pages() >= need;
  };
  std::vector<Req*> retracted;
  while (keep.size() > 1 &&
         !fits(config_.retract_decode_steps * static_cast<int64_t>(keep.size()))) {
    retracted.push_back(keep.back());
    retract(keep.back());
    keep.pop_back();
  }
  if (!fits(0) && chunked_req_ != nullptr) {
    // The one request left still cannot step: the half-prefilled request gives its room back.
    retracted.push_back(chunked_req_);
    retract(chunked_req_);
    chunked_req_ = nullptr;
  }
  DPSERVE_CHECK(fits(0), "decode of one request cannot get a page ({} free pages)",
                allocator_.num_free_pages());
  std::erase_if(running_, [&](Req* r) {
    return std::find(retracted.begin(), retracted.end(), r) != retracted.end();
  });
  int64_t decoded = 0, max_new = 0;
  for (const Req* r : running_) {
    decoded += static_cast<int64_t>(r->output_ids.size());
    max_new += r->sampling_params.max_new_tokens;
  }
  const double old_ratio = new_token_ratio_;
  new_token_ratio_ =
      std::min(1.0, static_cast<double>(decoded + config_.retract_decode_steps *
                                                      static_cast<int64_t>(running_.size())) /
                        static_cast<double>(std::max<int64_t>(max_new, 1)));
  spdlog::warn(
      "KV cache pool is full. Retract requests. #retracted_reqs: {}, #new_token_ratio: {:.4f} -> "
      "{:.4f}",
      retracted.size(), old_ratio, new_token_ratio_);
}

std::optional<ScheduleBatch> Scheduler::update_running_batch() {
  if (running_.empty()) return std::nullopt;
  const int64_t page = allocator_.page_size();
  int64_t need = decode_pages_needed(running_);
  if (allocator_.num_free_pages() < need) tree_.make_room(need * page);
  if (allocator_.num_free_pages() < need) {
    retract_decode();
  } else {
    new_token_ratio_ = std::max(new_token_ratio_ - new_token_ratio_decay_, min_new_token_ratio_);
  }
  ScheduleBatch batch;
  batch.mode = ForwardMode::kDecode;
  for (Req* r : running_) {
    const bool ok = alloc_slots(r, 1);
    DPSERVE_CHECK(ok, "decode slot for {} after the memory check", r->log_name());
    r->extend_input_len = 1;
    batch.reqs.push_back(r);
  }
  return batch;
}

}  // namespace dpserve
