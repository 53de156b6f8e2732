#pragma once
// The reference attention backend: per sequence, per token, per head, all scores in double,
// softmax, weighted sum. Slow and simple; the flash backend is checked against it.

#include "dpserve/layers/attention/attention_backend.h"

namespace dpserve {

class NativeAttentionBackend : public AttentionBackend {
 public:
  // shape: the model's attention geometry.
  explicit NativeAttentionBackend(const AttentionShape& shape);

  // "native".
  std::string_view name() const override { return "native"; }
  // See AttentionBackend::forward; parallel over (token, head) pairs.
  void forward(const float* q, const ForwardBatch& batch, const KVPool& kv, int64_t layer,
               float* out, ThreadPool& pool) override;

 private:
  std::vector<int64_t> token_start_;  // reused across calls
  std::vector<int32_t> token_seq_;    // sequence of each new token, reused across calls
};

}  // namespace dpserve
