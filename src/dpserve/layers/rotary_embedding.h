#pragma once
// Rotary position embedding, Hugging Face rotate_half convention: dimension i is paired with
// i + head_dim/2, inv_freq[i] = 1 / theta^(2i/head_dim), with optional linear or llama3 scaling.

#include <cstdint>
#include <vector>

#include "dpserve/common/thread_pool.h"
#include "dpserve/model/model_config.h"

namespace dpserve {

// The head_dim/2 inverse frequencies after rope scaling (computed in double, as the reference).
std::vector<double> rope_inv_freq(int64_t head_dim, double theta, const RopeScaling& scaling);

class RotaryEmbedding {
 public:
  // Precomputes cos/sin tables for positions [0, max_positions).
  RotaryEmbedding(int64_t head_dim, int64_t max_positions, double theta,
                  const RopeScaling& scaling);

  // Rotates x in place: x holds num_tokens rows `row_stride` floats apart, each row num_heads
  // heads of head_dim floats; token t is at positions[t]. Throws dpserve::Error if a position is
  // outside the table.
  void apply(float* x, int64_t num_tokens, int64_t num_heads, int64_t row_stride,
             const int32_t* positions, ThreadPool* pool) const;

  // Elements per head.
  int64_t head_dim() const { return head_dim_; }
  // Positions covered by the tables.
  int64_t max_positions() const { return max_positions_; }

 private:
  int64_t head_dim_;
  int64_t max_positions_;
  std::vector<float> cos_;  // [max_positions][head_dim/2]
  std::vector<float> sin_;  // [max_positions][head_dim/2]
};

}  // namespace dpserve
