#include "dpserve/managers/schedule_batch.h"

#include <cstring>

#include "dpserve/common/errors.h"

namespace dpserve {

int64_t ScheduleBatch::num_tokens() const {
  int64_t n = 0;
  for (const Req* r : reqs) n += r->extend_input_len;
  return n;
}

ForwardBatch ScheduleBatch::to_forward_batch() const {
  ForwardBatch fb;
  fb.mode = mode;
  fb.batch_size = batch_size();
  const int64_t tokens = num_tokens();
  fb.input_ids.reserve(tokens);
  fb.positions.reserve(tokens);
  fb.out_cache_loc.reserve(tokens);
  fb.kv_indptr.reserve(reqs.size() + 1);
  fb.kv_indptr.push_back(0);
  for (const Req* r : reqs) {
    const auto seq_len = static_cast<int32_t>(r->cache.kv_slots.size());
    const auto extend = static_cast<int32_t>(r->extend_input_len);
    const int32_t prefix = seq_len - extend;
    DPSERVE_CHECK(extend > 0 && prefix >= 0 && seq_len <= r->fill_len(),
                  "request {}: {} slots, {} new tokens, {} fill tokens", r->log_name(), seq_len,
                  extend, r->fill_len());
    DPSERVE_CHECK(mode != ForwardMode::kDecode || extend == 1, "decode of {} tokens", extend);
    for (int32_t i = prefix; i < seq_len; ++i) {
      fb.input_ids.push_back(r->cache.token_ids[i]);
      fb.positions.push_back(i);
      fb.out_cache_loc.push_back(r->cache.kv_slots[i]);
    }
    fb.seq_lens.push_back(seq_len);
    fb.extend_prefix_lens.push_back(prefix);
    fb.extend_seq_lens.push_back(extend);
    fb.kv_indices.insert(fb.kv_indices.end(), r->cache.kv_slots.begin(), r->cache.kv_slots.end());
    fb.kv_indptr.push_back(static_cast<int32_t>(fb.kv_indices.size()));
  }
  return fb;
}

void copy_kv(KVPool& kv, std::span<const int32_t> src, std::span<const int32_t> dst) {
  DPSERVE_CHECK(src.size() == dst.size(), "copy_kv of {} slots into {}", src.size(), dst.size());
  const int64_t d = kv.head_dim();
  const size_t bytes = static_cast<size_t>(d) * sizeof(float);
  for (int64_t layer = 0; layer < kv.num_layers(); ++layer) {
    for (int64_t h = 0; h < kv.num_kv_heads(); ++h) {
      float* k = kv.k_head(layer, h);
      float* v = kv.v_head(layer, h);
      for (size_t i = 0; i < src.size(); ++i) {
        std::memcpy(k + dst[i] * d, k + src[i] * d, bytes);
        std::memcpy(v + dst[i] * d, v + src[i] * d, bytes);
      }
    }
  }
}

}  // namespace dpserve
