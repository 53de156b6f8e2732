#pragma once
// Attention backends: every new token of a ForwardBatch attends causally to its sequence's K/V
// in the token-to-KV pool. Backends are interchangeable and chosen by name.

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "dpserve/common/thread_pool.h"
#include "dpserve/mem_cache/kv_pool.h"
#include "dpserve/model/forward_batch.h"

namespace dpserve {

// The attention geometry of a model (per rank).
struct AttentionShape {
  int64_t num_q_heads = 0;   // query heads
  int64_t num_kv_heads = 0;  // key/value heads; num_q_heads is a multiple of it (GQA)
  int64_t head_dim = 0;      // elements per head
  float scale = 0.0f;        // multiplier of q·k, usually 1/sqrt(head_dim)
};

class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;

  // The name it is selected by ("native", "flash").
  virtual std::string_view name() const = 0;

  // out = softmax(q·Kᵀ·scale + causal mask)·V for every new token of `batch`, with K/V read from
  // layer `layer` of `kv` at the slots kv_indices lists (the new tokens' K/V already stored).
  // New token i of sequence b sees KV positions 0 .. extend_prefix_lens[b] + i.
  // q and out: [num_tokens][num_q_heads * head_dim], dense, not aliasing.
  virtual void forward(const float* q, const ForwardBatch& batch, const KVPool& kv, int64_t layer,
                       float* out, ThreadPool& pool) = 0;

  // The geometry it was built for.
  const AttentionShape& shape() const { return shape_; }

 protected:
  explicit AttentionBackend(const AttentionShape& shape);
  // Checks batch/pool consistency (lengths, CSR offsets, slot ranges) and fills
  // token_start[b] = index of sequence b's first new token (batch_size + 1 entries).
  void validate(const ForwardBatch& batch, const KVPool& kv,
                std::vector<int64_t>& token_start) const;

  AttentionShape shape_;
};

// Names accepted by make_attention_backend.
std::vector<std::string> attention_backend_names();

// Builds the backend called `name` ("native" | "flash"); throws dpserve::Error on another name.
std::unique_ptr<AttentionBackend> make_attention_backend(std::string_view name,
                                                         const AttentionShape& shape);

}  // namespace dpserve
