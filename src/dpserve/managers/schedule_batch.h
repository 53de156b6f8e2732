#pragma once
// ScheduleBatch (SGLang's ScheduleBatch, reduced to what a CPU rank needs): the sequences of one
// step and how they become a ForwardBatch. Slots for the step's new tokens are allocated before
// the batch is built: each Req's cache.kv_slots already ends with extend_input_len new slots.

#include <cstdint>
#include <span>
#include <vector>

#include "dpserve/managers/req.h"
#include "dpserve/mem_cache/kv_pool.h"
#include "dpserve/model/forward_batch.h"

namespace dpserve {

struct ScheduleBatch {
  ForwardMode mode = ForwardMode::kExtend;  // kExtend (prefill / chunk) or kDecode
  std::vector<Req*> reqs;                   // sequences, in logit-row order

  // Number of sequences.
  int batch_size() const { return static_cast<int>(reqs.size()); }
  // New tokens over all sequences.
  int64_t num_tokens() const;
  // The forward's input: each sequence's new tokens are token_ids[kv_slots.size() -
  // extend_input_len, kv_slots.size()), written to the last extend_input_len slots.
  ForwardBatch to_forward_batch() const;
};

// Copies the K and V of every layer from slots src[i] to dst[i] (n > 1 completions get the
// prompt's unshared tail this way instead of recomputing it).
void copy_kv(KVPool& kv, std::span<const int32_t> src, std::span<const int32_t> dst);

}  // namespace dpserve
