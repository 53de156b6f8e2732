#include "dpserve/layers/vocab_parallel_embedding.h"

#include <algorithm>
#include <cstring>

#include "dpserve/common/errors.h"

namespace dpserve {
namespace {

bool distributed(const ProcessGroup* g) { return g != nullptr && g->size() > 1; }

}  // namespace

VocabParallelEmbedding::VocabParallelEmbedding(const kernels::WeightMatrix& shard, ShardRange range,
                                               int64_t vocab_size, ProcessGroup* group)
    : shard_(shard), range_(range), vocab_size_(vocab_size), group_(group) {
  DPSERVE_CHECK(shard.dtype == DType::F32 || shard.dtype == DType::BF16,
                "embedding table must be F32 or BF16 (F16 is converted at load)");
  DPSERVE_CHECK(
      shard.rows == range.size() && shard.cols > 0 && range.begin >= 0 && range.end <= vocab_size,
      "embedding shard [{}, {}) does not match its {} rows", range.begin, range.end, shard.rows);
  DPSERVE_CHECK(distributed(group) || range.is_full(vocab_size),
                "a partial embedding shard needs a group");
}

void VocabParallelEmbedding::forward(const int32_t* ids, int64_t n, float* out) const {
  for (int64_t t = 0; t < n; ++t) {
    if (ids[t] < 0 || ids[t] >= vocab_size_) {
      throw_error("token id {} is outside the vocabulary [0, {})", ids[t], vocab_size_);
    }
  }
  const int64_t dim = shard_.cols;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t id = ids[t];
    float* o = out + t * dim;
    if (id < range_.begin || id >= range_.end) {
      std::fill(o, o + dim, 0.0f);
    } else if (shard_.dtype == DType::F32) {
      std::memcpy(o, static_cast<const float*>(shard_.data) + (id - range_.begin) * dim,
                  dim * sizeof(float));
    } else {
      const uint16_t* row = static_cast<const uint16_t*>(shard_.data) + (id - range_.begin) * dim;
      for (int64_t i = 0; i < dim; ++i) o[i] = bf16_to_f32(row[i]);
    }
  }
  if (distributed(group_) && n > 0) group_->all_reduce_sum(out, n * dim);
}

ParallelLMHead::ParallelLMHead(const kernels::WeightMatrix& shard, int64_t vocab_size,
                               ProcessGroup* group)
    : shard_(shard), vocab_size_(vocab_size), group_(distributed(group) ? group : nullptr) {
  const int size = group_ ? group_->size() : 1;
  for (int r = 0; r < size; ++r) ranges_.push_back(shard_range(vocab_size, r, size));
  const int rank = group_ ? group_->rank() : 0;
  DPSERVE_CHECK(shard.rows == ranges_[rank].size(), "LM head shard has {} rows, expected {}",
                shard.rows, ranges_[rank].size());
}

void ParallelLMHead::forward(const float* x, int64_t rows, float* logits, ThreadPool& pool) {
  if (group_ == nullptr) {
    kernels::linear(x, rows, shard_, nullptr, logits, pool);
    return;
  }
  if (rows == 0) return;
  const int size = group_->size();
  if (static_cast<int64_t>(local_.size()) < rows * shard_.rows) local_.resize(rows * shard_.rows);
  float* local = local_.data();
  kernels::linear(x, rows, shard_, nullptr, local, pool);
  counts_.resize(size);
  for (int r = 0; r < size; ++r) counts_[r] = rows * ranges_[r].size();
  if (rows == 1) {  // the slices, rank after rank, already are the full row in vocab order
    group_->all_gatherv(local, logits, counts_);
    return;
  }
  if (static_cast<int64_t>(gathered_.size()) < rows * vocab_size_) {
    gathered_.resize(rows * vocab_size_);
  }
  group_->all_gatherv(local, gathered_.data(), counts_);
  // Rank r's block is [rows][its vocab]; interleave the blocks into full rows.
  int64_t offset = 0;
  for (int r = 0; r < size; ++r) {
    const int64_t nv = ranges_[r].size();
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(logits + i * vocab_size_ + ranges_[r].begin, gathered_.data() + offset + i * nv,
                  nv * sizeof(float));
    }
    offset += rows * nv;
  }
}

}  // namespace dpserve
