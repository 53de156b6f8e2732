#include "dpserve/layers/rms_norm.h"

#include <cmath>

namespace dpserve {
namespace {

// Sum of squares with 8 independent partial sums so the compiler vectorizes it.
inline float sum_squares(const float* x, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += x[i + l] * x[i + l];
  }
  float s = 0.0f;
  for (; i < n; ++i) s += x[i] * x[i];
  for (int l = 0; l < 8; ++l) s += acc[l];
  return s;
}

inline void norm_row(const float* x, const float* w, int64_t dim, float eps, float* y) {
  const float r = 1.0f / std::sqrt(sum_squares(x, dim) / static_cast<float>(dim) + eps);
  for (int64_t i = 0; i < dim; ++i) y[i] = x[i] * r * w[i];
}

// Rows per task so that a task has at least ~16K elements of work.
inline int64_t row_grain(int64_t dim) { return dim >= 16384 ? 1 : 16384 / dim; }

template <typename Fn>
void for_rows(int64_t rows, int64_t dim, ThreadPool* pool, const Fn& fn) {
  if (pool == nullptr || pool->num_threads() == 1 || rows * dim < 32768) {
    fn(0, rows);
    return;
  }
  pool->parallel_for(
      rows, [&](int64_t r0, int64_t r1, int) { fn(r0, r1); }, row_grain(dim));
}

}  // namespace

void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* y,
              ThreadPool* pool) {
  for_rows(rows, dim, pool, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) norm_row(x + r * dim, weight, dim, eps, y + r * dim);
  });
}

void add_rms_norm(float* residual, const float* delta, const float* weight, int64_t rows,
                  int64_t dim, float eps, float* y, ThreadPool* pool) {
  for_rows(rows, dim, pool, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* res = residual + r * dim;
      const float* d = delta + r * dim;
      for (int64_t i = 0; i < dim; ++i) res[i] += d[i];
      norm_row(res, weight, dim, eps, y + r * dim);
    }
  });
}

}  // namespace dpserve
