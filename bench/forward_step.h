#pragma once
// What the model benchmarks share: a monotonic clock in seconds, one forward that appends tokens
// to sequences whose KV slots the benchmark tracks itself (no scheduler in the way), and a greedy
// decode run built on it.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <random>
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

// Seconds of one greedy decode run (greedy_decode_run).
struct DecodeTimes {
  double prefill_s = 0;  // the forward of all prompts
  double decode_s = 0;   // all decode steps together
};

// One greedy run of `batch` random prompts of `prompt_len` tokens drawn from [3, max_token] with
// `rng`: one prefill forward, `on_prefilled` (reset counters there), then `steps` decode forwards,
// each feeding back every row's argmax; the KV slots are freed at the end. Every rank of a group
// running it with the same seed runs the same steps (identical logits give identical tokens).
inline DecodeTimes greedy_decode_run(LlamaForCausalLM& model, KVPool& kv, ThreadPool& pool,
                                     std::vector<float>& logits, int batch, int prompt_len,
                                     int steps, int32_t max_token, std::mt19937& rng,
                                     const std::function<void()>& on_prefilled = {}) {
  const int64_t vocab = model.config().vocab_size;
  std::uniform_int_distribution<int32_t> tok(
      3, static_cast<int32_t>(std::min<int64_t>(vocab - 1, max_token)));
  std::vector<std::vector<int32_t>> slots(static_cast<size_t>(batch));
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(batch));
  for (auto& p : prompts) {
    p.resize(static_cast<size_t>(prompt_len));
    for (auto& v : p) v = tok(rng);
  }
  DecodeTimes t;
  t.prefill_s = append_step(model, kv, pool, slots, prompts, logits);
  if (on_prefilled) on_prefilled();
  for (int s = 0; s < steps; ++s) {
    std::vector<std::vector<int32_t>> next(static_cast<size_t>(batch));
    for (int i = 0; i < batch; ++i) {
      const float* row = logits.data() + int64_t{i} * vocab;
      next[i] = {static_cast<int32_t>(std::max_element(row, row + vocab) - row)};
    }
    t.decode_s += append_step(model, kv, pool, slots, next, logits);
  }
  for (auto& sl : slots) kv.free(sl);
  return t;
}

}  // namespace dpserve::bench
