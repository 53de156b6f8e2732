#include "dpserve/kernels/cpu/linear.h"

#include "dpserve/common/errors.h"

namespace dpserve::kernels {

// Plain reference implementation; the optimized kernels replace it.
void linear(const float* x, int64_t m, const WeightMatrix& w, const float* bias, float* y,
            ThreadPool& pool) {
  DPSERVE_CHECK(w.dtype == DType::F32 || w.dtype == DType::BF16, "linear: weights must be F32/BF16");
  pool.parallel_for(w.rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * w.cols;
      for (int64_t r = r0; r < r1; ++r) {
        float acc = bias ? bias[r] : 0.0f;
        if (w.dtype == DType::F32) {
          const float* wr = static_cast<const float*>(w.data) + r * w.cols;
          for (int64_t c = 0; c < w.cols; ++c) acc += xi[c] * wr[c];
        } else {
          const uint16_t* wr = static_cast<const uint16_t*>(w.data) + r * w.cols;
          for (int64_t c = 0; c < w.cols; ++c) acc += xi[c] * bf16_to_f32(wr[c]);
        }
        y[i * w.rows + r] = acc;
      }
    }
  });
}

}  // namespace dpserve::kernels
