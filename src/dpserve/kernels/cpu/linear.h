#pragma once
// Linear layers on the CPU: y = x · Wᵀ (+ bias), activations f32, weights kept as loaded.

#include <cstdint>

#include "dpserve/common/dtype.h"
#include "dpserve/common/thread_pool.h"

namespace dpserve::kernels {

// A weight matrix [rows, cols] in row-major order (rows = output features, cols = input features),
// as PyTorch's nn.Linear stores it. F32 or BF16 (F16 checkpoints are converted at load).
struct WeightMatrix {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
};

// y[m, rows] = x[m, cols] · Wᵀ + bias (bias may be null). x and y are dense row-major f32 and must
// not alias. Uses the pool's threads.
void linear(const float* x, int64_t m, const WeightMatrix& w, const float* bias, float* y,
            ThreadPool& pool);

}  // namespace dpserve::kernels
