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
//
// Small m (decode, small batches) runs AVX2 kernels that stream each weight row once for all m
// rows of x, the pool's threads taking chunks of rows from a shared counter; larger m runs OpenBLAS
// sgemm, each pool thread on its own block of weight rows (BF16 rows are widened to f32 panels
// first) with OpenBLAS itself single-threaded, so no OpenBLAS worker threads compete with the pool.
void linear(const float* x, int64_t m, const WeightMatrix& w, const float* bias, float* y,
            ThreadPool& pool);

// Tuning knobs of linear(); the defaults were measured on the target machine (docs/benchmarks.md).
// Tests and benchmarks change them to force a path; not meant to change while linear() runs.
struct LinearTuning {
  int64_t sgemm_min_m_f32 = 40;    // smallest m that uses sgemm for F32 weights
  int64_t sgemm_min_m_bf16 = 128;  // smallest m that uses sgemm for BF16 weights
  int64_t bf16_panel_rows = 256;   // weight rows widened to f32 per sgemm call (BF16)
  int64_t chunks_per_thread = 8;   // small-m path: row chunks per thread, taken dynamically
  bool blas_threads = false;       // sgemm paths: one OpenBLAS call using OpenBLAS's own threads
};

// The process-wide tuning used by linear().
LinearTuning& linear_tuning();

}  // namespace dpserve::kernels
