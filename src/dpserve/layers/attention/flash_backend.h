#pragma once
// Flash-style CPU attention: KV processed in blocks with an online softmax (no seq x seq score
// matrix), the q-heads sharing a kv head processed together (GQA), work items (sequence, kv head,
// tile of new tokens) spread over the thread pool dynamically.

#include <cstdint>
#include <vector>

#include "dpserve/layers/attention/attention_backend.h"

namespace dpserve {

class FlashAttentionBackend : public AttentionBackend {
 public:
  // KV positions per block.
  static constexpr int64_t kBlockKV = 64;
  // Target number of (token, q-head) rows per work item.
  static constexpr int64_t kTileRows = 32;

  // shape: the model's attention geometry.
  explicit FlashAttentionBackend(const AttentionShape& shape);

  // "flash".
  std::string_view name() const override { return "flash"; }
  // See AttentionBackend::forward.
  void forward(const float* q, const ForwardBatch& batch, const KVPool& kv, int64_t layer,
               float* out, ThreadPool& pool) override;

 private:
  struct WorkItem {
    int32_t seq;      // sequence index in the batch
    int32_t kv_head;  // kv head; its `group` q-heads are processed together
    int32_t q_begin;  // first new token of the tile, relative to the sequence's new tokens
    int32_t q_end;    // one past the last
  };
  // Per-thread buffers, sized once for the largest tile.
  struct Scratch {
    std::vector<float> q;             // [rows][head_dim], q pre-multiplied by scale
    std::vector<float> o;             // [rows][head_dim], unnormalized output
    std::vector<float> s;             // [rows][kBlockKV], scores then probabilities
    std::vector<float> kt;            // [head_dim][kBlockKV], the block's keys transposed
    std::vector<float> m;             // [rows], running max
    std::vector<float> l;             // [rows], running sum of exp
    std::vector<const float*> vrows;  // [kBlockKV], the block's value rows in the pool
  };

  void run_item(const WorkItem& item, const float* q, const ForwardBatch& batch, const KVPool& kv,
                int64_t layer, float* out, Scratch& sc) const;

  int64_t group_;                     // q-heads per kv head
  int64_t tile_tokens_;               // new tokens per work item
  std::vector<int64_t> token_start_;  // reused across calls
  std::vector<WorkItem> items_;       // reused across calls
  std::vector<Scratch> scratch_;      // one per pool thread
};

}  // namespace dpserve
