#pragma once
// The vocabulary dimension under tensor parallelism (SGLang's VocabParallelEmbedding and
// ParallelLMHead): each rank holds the table rows of its vocab range (shard_range(vocab, rank,
// size)). The embedding looks up the ids it owns, writes zero rows for the others, and an
// all-reduce completes every row; the LM head computes its slice of the logits and an all_gatherv
// assembles the full rows on every rank. With no group (one rank, or replicated) both are plain.

#include <cstdint>
#include <vector>

#include "dpserve/common/thread_pool.h"
#include "dpserve/distributed/process_group.h"
#include "dpserve/kernels/cpu/linear.h"
#include "dpserve/layers/parallel_linear.h"

namespace dpserve {

class VocabParallelEmbedding {
 public:
  // shard: rows `range` of the [vocab_size, dim] table (F32 or BF16, not owned). group: the ranks
  // the vocabulary is split over (range = shard_range(vocab_size, rank, size)); nullptr when the
  // shard is the whole table.
  VocabParallelEmbedding(const kernels::WeightMatrix& shard, ShardRange range, int64_t vocab_size,
                         ProcessGroup* group);

  // out[t, :] = table[ids[t], :] for n tokens. Every rank must call it with the same ids; an id
  // outside [0, vocab_size) throws dpserve::Error (on every rank, before any collective).
  void forward(const int32_t* ids, int64_t n, float* out) const;

  // This rank's rows of the table (e.g. for a tied LM head).
  const kernels::WeightMatrix& shard() const { return shard_; }
  // The vocab range this rank holds.
  ShardRange range() const { return range_; }
  // Full vocabulary size.
  int64_t vocab_size() const { return vocab_size_; }
  // Embedding width.
  int64_t dim() const { return shard_.cols; }

 private:
  kernels::WeightMatrix shard_;
  ShardRange range_;
  int64_t vocab_size_;
  ProcessGroup* group_;
};

class ParallelLMHead {
 public:
  // shard: rows shard_range(vocab_size, rank, size) of the [vocab_size, hidden] head (F32/BF16,
  // not owned); group nullptr when the shard is the whole head.
  ParallelLMHead(const kernels::WeightMatrix& shard, int64_t vocab_size, ProcessGroup* group);

  // logits[rows][vocab_size] = x[rows][hidden] · headᵀ, complete on every rank. Reuses internal
  // scratch: not reentrant.
  void forward(const float* x, int64_t rows, float* logits, ThreadPool& pool);

  // This rank's rows of the head.
  const kernels::WeightMatrix& shard() const { return shard_; }

 private:
  kernels::WeightMatrix shard_;
  int64_t vocab_size_;
  ProcessGroup* group_;
  std::vector<ShardRange> ranges_;  // every rank's vocab range
  std::vector<float> local_;        // [rows][local vocab]
  std::vector<float> gathered_;     // rank after rank: [rows][rank's vocab]
  std::vector<int64_t> counts_;     // floats from each rank
};

}  // namespace dpserve
