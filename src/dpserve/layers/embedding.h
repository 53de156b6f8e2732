#pragma once
// Token embedding lookup from a [vocab, dim] table kept as loaded (F32 or BF16).

#include <cstdint>

#include "dpserve/kernels/cpu/linear.h"

namespace dpserve {

class Embedding {
 public:
  // table: [vocab, dim] row-major, F32 or BF16, not owned (must outlive this object).
  explicit Embedding(const kernels::WeightMatrix& table);

  // out[t, :] = table[ids[t], :] as f32 for n tokens; an id outside the vocabulary throws
  // dpserve::Error.
  void forward(const int32_t* ids, int64_t n, float* out) const;

  // The table, e.g. for a tied lm_head.
  const kernels::WeightMatrix& table() const { return table_; }
  // Vocabulary size (rows of the table).
  int64_t vocab_size() const { return table_.rows; }
  // Embedding width (columns of the table).
  int64_t dim() const { return table_.cols; }

 private:
  kernels::WeightMatrix table_;
};

}  // namespace dpserve
