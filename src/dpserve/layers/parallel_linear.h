#pragma once
// Tensor-parallel linear layers (Megatron-style, as SGLang's ColumnParallelLinear /
// RowParallelLinear): the weight pieces one rank holds, cut straight from the mapped checkpoint,
// and the row-parallel forward with its all-reduce.
//
// Column-parallel (q/k/v, gate/up): a rank holds a contiguous range of output rows, which in a
// row-major [rows, cols] tensor is a contiguous byte range, used in place (a pointer offset into
// the mapping). Row-parallel (o, down): a rank holds a range of input columns; those are strided
// in row-major order, so the slice is copied into owned storage once at load (the kernels then
// stream contiguous rows, and only this rank's bytes are read from the file).

#include <cstdint>
#include <deque>
#include <vector>

#include "dpserve/common/thread_pool.h"
#include "dpserve/distributed/process_group.h"
#include "dpserve/kernels/cpu/linear.h"
#include "dpserve/model/safetensors.h"

namespace dpserve {

// A contiguous range [begin, end) of one dimension that a rank owns.
struct ShardRange {
  int64_t begin = 0;  // first index owned
  int64_t end = 0;    // one past the last index owned

  // Number of indices owned.
  int64_t size() const { return end - begin; }
  // True if the range covers [0, n) entirely.
  bool is_full(int64_t n) const { return begin == 0 && end == n; }
};

// Rank `rank`'s part of n items split over `size` ranks: contiguous, the first n % size ranks
// get one more item than the others.
ShardRange shard_range(int64_t n, int rank, int size);

// Owned storage for weights that cannot be used in place (F16 converted to f32, column slices).
// Pointers stay valid while the arena lives.
class WeightArena {
 public:
  // n floats of zero-initialized storage.
  float* alloc_f32(int64_t n);
  // n 16-bit elements of zero-initialized storage.
  uint16_t* alloc_u16(int64_t n);
  // Bytes held.
  int64_t bytes() const { return bytes_; }

 private:
  std::deque<std::vector<float>> f32_;
  std::deque<std::vector<uint16_t>> u16_;
  int64_t bytes_ = 0;
};

// Rows `rows` of the 2-D tensor t (column-parallel: the output features this rank computes).
// F32/BF16 point into the mapping; F16 rows are converted to f32 in `arena` (only these rows).
kernels::WeightMatrix column_parallel_weight(const TensorView& t, ShardRange rows,
                                             WeightArena& arena);

// Columns `cols` of the 2-D tensor t (row-parallel: the input features this rank holds). The full
// width is used as column_parallel_weight uses it; a slice is copied into `arena` (BF16 stays
// BF16, F16 becomes f32), reading only those columns of each row.
kernels::WeightMatrix row_parallel_weight(const TensorView& t, ShardRange cols, WeightArena& arena);

// Elements `range` of the 1-D tensor t as f32.
std::vector<float> slice_f32(const TensorView& t, ShardRange range);

// Row-parallel forward: y[m, w.rows] = Σ over ranks of x_local[m, w.cols] · W_localᵀ, plus bias
// (added once, by rank 0, before the sum). The sum is an all_reduce_sum over `group`; nullptr
// means a single rank. y must hold m * w.rows floats; x and y must not alias.
void row_parallel_linear(const float* x, int64_t m, const kernels::WeightMatrix& w,
                         const float* bias, float* y, ThreadPool& pool, ProcessGroup* group);

}  // namespace dpserve
