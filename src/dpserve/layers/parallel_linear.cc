#include "dpserve/layers/parallel_linear.h"

#include <algorithm>
#include <cstring>

#include "dpserve/common/dtype.h"
#include "dpserve/common/errors.h"

namespace dpserve {
namespace {

// Converts n 16-bit or f32 elements of dtype `dt` at `src` to f32.
void to_f32_run(DType dt, const void* src, int64_t n, float* out) {
  const auto* p16 = static_cast<const uint16_t*>(src);
  switch (dt) {
    case DType::F32:
      std::memcpy(out, src, static_cast<size_t>(n) * 4);
      break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(p16[i]);
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(p16[i]);
      break;
  }
}

void check_2d(const TensorView& t) {
  DPSERVE_CHECK(t.shape.size() == 2, "tensor {} is not 2-D", t.name);
}

}  // namespace

ShardRange shard_range(int64_t n, int rank, int size) {
  DPSERVE_CHECK(size >= 1 && rank >= 0 && rank < size && n >= 0, "bad shard {} of {} over {}", rank,
                size, n);
  const int64_t base = n / size, extra = n % size;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

float* WeightArena::alloc_f32(int64_t n) {
  f32_.emplace_back(static_cast<size_t>(n));
  bytes_ += n * 4;
  return f32_.back().data();
}

uint16_t* WeightArena::alloc_u16(int64_t n) {
  u16_.emplace_back(static_cast<size_t>(n));
  bytes_ += n * 2;
  return u16_.back().data();
}

kernels::WeightMatrix column_parallel_weight(const TensorView& t, ShardRange rows,
                                             WeightArena& arena) {
  check_2d(t);
  const int64_t cols = t.shape[1];
  DPSERVE_CHECK(rows.begin >= 0 && rows.begin <= rows.end && rows.end <= t.shape[0],
                "row range [{}, {}) outside {}", rows.begin, rows.end, t.name);
  const auto* base = static_cast<const uint8_t*>(t.data) +
                     static_cast<size_t>(rows.begin * cols) * dtype_size(t.dtype);
  kernels::WeightMatrix w{t.dtype, rows.size(), cols, base};
  if (t.dtype == DType::F16) {
    float* out = arena.alloc_f32(rows.size() * cols);
    to_f32_run(DType::F16, base, rows.size() * cols, out);
    w.dtype = DType::F32;
    w.data = out;
  }
  return w;
}

kernels::WeightMatrix row_parallel_weight(const TensorView& t, ShardRange cols,
                                          WeightArena& arena) {
  check_2d(t);
  const int64_t rows = t.shape[0], width = t.shape[1];
  if (cols.is_full(width)) return column_parallel_weight(t, {0, rows}, arena);
  DPSERVE_CHECK(cols.begin >= 0 && cols.begin <= cols.end && cols.end <= width,
                "column range [{}, {}) outside {}", cols.begin, cols.end, t.name);
  const int64_t n = cols.size();
  const size_t es = dtype_size(t.dtype);
  const auto* src = static_cast<const uint8_t*>(t.data);
  kernels::WeightMatrix w{t.dtype, rows, n, nullptr};
  if (t.dtype == DType::BF16) {
    uint16_t* out = arena.alloc_u16(rows * n);
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(out + r * n, src + static_cast<size_t>(r * width + cols.begin) * es, n * es);
    }
    w.data = out;
  } else {
    float* out = arena.alloc_f32(rows * n);
    for (int64_t r = 0; r < rows; ++r) {
      to_f32_run(t.dtype, src + static_cast<size_t>(r * width + cols.begin) * es, n, out + r * n);
    }
    w.dtype = DType::F32;
    w.data = out;
  }
  return w;
}

std::vector<float> slice_f32(const TensorView& t, ShardRange range) {
  DPSERVE_CHECK(t.shape.size() == 1 && range.begin >= 0 && range.begin <= range.end &&
                    range.end <= t.shape[0],
                "range [{}, {}) outside 1-D tensor {}", range.begin, range.end, t.name);
  std::vector<float> out(static_cast<size_t>(range.size()));
  to_f32_run(
      t.dtype,
      static_cast<const uint8_t*>(t.data) + static_cast<size_t>(range.begin) * dtype_size(t.dtype),
      range.size(), out.data());
  return out;
}

void row_parallel_linear(const float* x, int64_t m, const kernels::WeightMatrix& w,
                         const float* bias, float* y, ThreadPool& pool, ProcessGroup* group) {
  const bool first = group == nullptr || group->rank() == 0;
  kernels::linear(x, m, w, first ? bias : nullptr, y, pool);
  if (group != nullptr && group->size() > 1 && m > 0) group->all_reduce_sum(y, m * w.rows);
}

}  // namespace dpserve
