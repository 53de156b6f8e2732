#pragma once
// RMSNorm as in Llama: y = x / sqrt(mean(x^2) + eps) * weight, over the last dimension.

#include <cstdint>

#include "dpserve/common/thread_pool.h"

namespace dpserve {

// y[r, :] = rmsnorm(x[r, :]) * weight for `rows` dense rows of `dim` floats. y may equal x.
// pool may be null (single-threaded); small inputs stay on the calling thread.
void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* y,
              ThreadPool* pool);

// Fused residual add and norm (SGLang's fused_add_rmsnorm): residual += delta, then
// y = rmsnorm(residual) * weight, row by row. y may equal delta.
void add_rms_norm(float* residual, const float* delta, const float* weight, int64_t rows,
                  int64_t dim, float eps, float* y, ThreadPool* pool);

}  // namespace dpserve
