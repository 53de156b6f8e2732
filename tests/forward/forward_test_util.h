#pragma once
// Test helpers: drive a model over several sequences through the KV cache the way a scheduler
// would (allocate slots, build a ForwardBatch, run), plus greedy decoding.

#include <algorithm>
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "dpserve/model/models/llama.h"

namespace dpserve::testing {

// One sequence's tokens and KV slots so far.
struct Seq {
  std::vector<int32_t> tokens;  // tokens whose K/V are in the cache
  std::vector<int32_t> slots;   // their KV slots, in order
};

// A step's work for one sequence: new tokens appended to it.
struct Work {
  Seq* seq;
  std::vector<int32_t> new_tokens;
};

// The ForwardBatch of one step over all `work` (allocating KV slots and appending the new tokens
// and slots to each sequence); no work gives an idle batch (DP attention).
inline ForwardBatch build_batch(KVPool& kv, const std::vector<Work>& work) {
  ForwardBatch fb;
  fb.batch_size = static_cast<int>(work.size());
  fb.kv_indptr.push_back(0);
  bool decode = true;
  for (const Work& w : work) {
    auto slots = kv.alloc(static_cast<int64_t>(w.new_tokens.size()));
    EXPECT_TRUE(slots.has_value());
    const auto prefix = static_cast<int32_t>(w.seq->tokens.size());
    for (size_t i = 0; i < w.new_tokens.size(); ++i) {
      fb.input_ids.push_back(w.new_tokens[i]);
      fb.positions.push_back(prefix + static_cast<int32_t>(i));
      fb.out_cache_loc.push_back((*slots)[i]);
    }
    w.seq->tokens.insert(w.seq->tokens.end(), w.new_tokens.begin(), w.new_tokens.end());
    w.seq->slots.insert(w.seq->slots.end(), slots->begin(), slots->end());
    fb.seq_lens.push_back(static_cast<int32_t>(w.seq->tokens.size()));
    fb.extend_prefix_lens.push_back(prefix);
    fb.extend_seq_lens.push_back(static_cast<int32_t>(w.new_tokens.size()));
    fb.kv_indices.insert(fb.kv_indices.end(), w.seq->slots.begin(), w.seq->slots.end());
    fb.kv_indptr.push_back(static_cast<int32_t>(fb.kv_indices.size()));
    decode = decode && w.new_tokens.size() == 1;
  }
  fb.mode = work.empty() ? ForwardMode::kIdle
            : decode     ? ForwardMode::kDecode
                         : ForwardMode::kExtend;
  return fb;
}

// Runs one forward over all `work` in a single batch; returns the logits (rows per
// LlamaForCausalLM::forward) and appends the new tokens and slots to each sequence.
inline std::vector<float> step(LlamaForCausalLM& model, KVPool& kv, ThreadPool& pool,
                               const std::vector<Work>& work, bool all_logits) {
  ForwardBatch fb = build_batch(kv, work);
  fb.return_all_logits = all_logits;
  return model.forward(fb, kv, pool);
}

// Index of the largest value in row `row` of a [rows][n] matrix (first on ties).
inline int32_t argmax_row(const std::vector<float>& logits, int64_t row, int64_t n) {
  const float* p = logits.data() + row * n;
  return static_cast<int32_t>(std::max_element(p, p + n) - p);
}

// Feeds `prompt` in chunks of the given sizes (cycled; {0} = all at once), returning the
// all-position logits [prompt.size()][vocab].
inline std::vector<float> prefill(LlamaForCausalLM& model, KVPool& kv, ThreadPool& pool, Seq& seq,
                                  const std::vector<int32_t>& prompt,
                                  const std::vector<int>& chunks) {
  std::vector<float> all;
  size_t pos = 0;
  size_t c = 0;
  while (pos < prompt.size()) {
    size_t n = chunks[c++ % chunks.size()];
    if (n == 0 || pos + n > prompt.size()) n = prompt.size() - pos;
    std::vector<int32_t> part(prompt.begin() + pos, prompt.begin() + pos + n);
    auto lg = step(model, kv, pool, {{&seq, part}}, true);
    all.insert(all.end(), lg.begin(), lg.end());
    pos += n;
  }
  return all;
}

// Greedy decoding after `prompt` (fed in `chunks`): up to max_new tokens, stopping after any id
// in `stop`. Frees the sequence's slots at the end.
inline std::vector<int32_t> greedy(LlamaForCausalLM& model, KVPool& kv, ThreadPool& pool,
                                   const std::vector<int32_t>& prompt, int max_new,
                                   const std::vector<int32_t>& stop,
                                   const std::vector<int>& chunks = {0}) {
  const int64_t vocab = model.config().vocab_size;
  Seq seq;
  auto lg = prefill(model, kv, pool, seq, prompt, chunks);
  std::vector<int32_t> out;
  int32_t next = argmax_row(lg, static_cast<int64_t>(prompt.size()) - 1, vocab);
  for (int i = 0; i < max_new; ++i) {
    out.push_back(next);
    if (std::find(stop.begin(), stop.end(), next) != stop.end()) break;
    if (i + 1 == max_new) break;
    lg = step(model, kv, pool, {{&seq, {next}}}, false);
    next = argmax_row(lg, 0, vocab);
  }
  kv.free(seq.slots);
  return out;
}

}  // namespace dpserve::testing
