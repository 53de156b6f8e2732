#include "dpserve/layers/attention/attention_backend.h"

#include <string>

#include "dpserve/common/errors.h"
#include "dpserve/layers/attention/flash_backend.h"
#include "dpserve/layers/attention/native_backend.h"

namespace dpserve {

AttentionBackend::AttentionBackend(const AttentionShape& shape) : shape_(shape) {
  DPSERVE_CHECK(shape.num_q_heads > 0 && shape.num_kv_heads > 0 && shape.head_dim > 0,
                "bad attention shape q_heads={} kv_heads={} head_dim={}", shape.num_q_heads,
                shape.num_kv_heads, shape.head_dim);
  DPSERVE_CHECK(shape.num_q_heads % shape.num_kv_heads == 0,
                "q heads {} not a multiple of kv heads {}", shape.num_q_heads, shape.num_kv_heads);
}

void AttentionBackend::validate(const ForwardBatch& batch, const KVPool& kv,
                                std::vector<int64_t>& token_start) const {
  DPSERVE_CHECK(kv.num_kv_heads() == shape_.num_kv_heads && kv.head_dim() == shape_.head_dim,
                "KV pool shape ({} heads x {}) differs from attention ({} x {})", kv.num_kv_heads(),
                kv.head_dim(), shape_.num_kv_heads, shape_.head_dim);
  const size_t bs = static_cast<size_t>(batch.batch_size);
  DPSERVE_CHECK(batch.seq_lens.size() == bs && batch.extend_prefix_lens.size() == bs &&
                    batch.extend_seq_lens.size() == bs && batch.kv_indptr.size() == bs + 1,
                "ForwardBatch per-sequence arrays do not match batch_size {}", bs);
  DPSERVE_CHECK(batch.positions.size() == batch.input_ids.size(),
                "positions and input_ids differ in length");
  DPSERVE_CHECK(batch.kv_indptr[0] == 0 &&
                    batch.kv_indptr[bs] == static_cast<int64_t>(batch.kv_indices.size()),
                "kv_indptr does not span kv_indices");
  token_start.resize(bs + 1);
  token_start[0] = 0;
  for (size_t b = 0; b < bs; ++b) {
    DPSERVE_CHECK(batch.extend_seq_lens[b] >= 0 && batch.extend_prefix_lens[b] >= 0 &&
                      batch.seq_lens[b] == batch.extend_prefix_lens[b] + batch.extend_seq_lens[b],
                  "sequence {}: seq_len {} != prefix {} + extend {}", b, batch.seq_lens[b],
                  batch.extend_prefix_lens[b], batch.extend_seq_lens[b]);
    DPSERVE_CHECK(batch.kv_indptr[b + 1] - batch.kv_indptr[b] == batch.seq_lens[b],
                  "sequence {}: kv_indptr range {} != seq_len {}", b,
                  batch.kv_indptr[b + 1] - batch.kv_indptr[b], batch.seq_lens[b]);
    token_start[b + 1] = token_start[b] + batch.extend_seq_lens[b];
  }
  DPSERVE_CHECK(token_start[bs] == batch.num_tokens(), "extend_seq_lens sum {} != num_tokens {}",
                token_start[bs], batch.num_tokens());
  for (int32_t s : batch.kv_indices) {
    DPSERVE_CHECK(s >= 0 && s < kv.size(), "KV slot {} outside the pool [0, {})", s, kv.size());
  }
}

std::vector<std::string> attention_backend_names() { return {"flash", "native"}; }

std::unique_ptr<AttentionBackend> make_attention_backend(std::string_view name,
                                                         const AttentionShape& shape) {
  if (name == "flash") return std::make_unique<FlashAttentionBackend>(shape);
  if (name == "native") return std::make_unique<NativeAttentionBackend>(shape);
  throw_error("unknown attention backend '{}' (expected 'flash' or 'native')", name);
}

}  // namespace dpserve
