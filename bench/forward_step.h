#pragma once
// What the model benchmarks share: a monotonic clock in seconds and one forward that appends
// tokens to sequences whose KV slots the benchmark tracks itself (no scheduler in the way).

#include <chrono>
#include <cstdint>
#include <vector>

#include "dpserve/common/errors.h"
#include "dpserve/common/thread_pool.h"
#include "dpserve/mem_cache/kv_pool.h"
#include "dpserve/model/forward_batch.h"
#include "dpserve/model/models/llama.h"

namespace dpserve::bench {

// Seconds on the steady clock.
inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Appends tokens[b] to sequence b (whose KV slots are slots[b], grown here) in one forward: a
// decode when every sequence gets one token, else an extend. Returns the forward's seconds.
inline double append_step(LlamaForCausalLM& model, KVPool& kv, ThreadPool& pool,
                          std::vector<std::vector<int32_t>>& slots,
                          const std::vector<std::vector<int32_t>>& tokens,
                          std::vector<float>& logits) {
  ForwardBatch fb;
  fb.batch_size = static_cast<int>(slots.size());
  fb.kv_indptr.push_back(0);
  bool decode = true;
  for (size_t b = 0; b < slots.size(); ++b) {
    auto got = kv.alloc(static_cast<int64_t>(tokens[b].size()));
    DPSERVE_CHECK(got.has_value(), "KV pool too small");
    const auto prefix = static_cast<int32_t>(slots[b].size());
    for (size_t i = 0; i < tokens[b].size(); ++i) {
      fb.input_ids.push_back(tokens[b][i]);
      fb.positions.push_back(prefix + static_cast<int32_t>(i));
      fb.out_cache_loc.push_back((*got)[i]);
    }
    slots[b].insert(slots[b].end(), got->begin(), got->end());
    fb.seq_lens.push_back(static_cast<int32_t>(slots[b].size()));
    fb.extend_prefix_lens.push_back(prefix);
    fb.extend_seq_lens.push_back(static_cast<int32_t>(tokens[b].size()));
    fb.kv_indices.insert(fb.kv_indices.end(), slots[b].begin(), slots[b].end());
    fb.kv_indptr.push_back(static_cast<int32_t>(fb.kv_indices.size()));
    decode = decode && tokens[b].size() == 1;
  }
  fb.mode = decode ? ForwardMode::kDecode : ForwardMode::kExtend;
  const double t0 = now_s();
  model.forward(fb, kv, pool, logits);
  return now_s() - t0;
}

}  // namespace dpserve::bench
