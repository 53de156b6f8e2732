#include "dpserve/kernels/cpu/linear.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "dpserve/common/errors.h"
#include "dpserve/kernels/cpu/gemv.h"

namespace dpserve::kernels {
namespace {

// Per-thread scratch buffers, grown on demand and kept for the thread's lifetime.
thread_local std::vector<float> tl_packed_x;  // x reordered for the BF16 small-m kernel
thread_local std::vector<float> tl_panel;     // BF16 weight rows widened to f32

float* grow(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// Sets OpenBLAS's process-wide thread count if it differs (other code, e.g. the benchmarks'
// ceilings, may change it between calls).
void set_blas_threads(int n) {
  if (openblas_get_num_threads() != n) openblas_set_num_threads(n);
}

// y[0..m, 0..n) (row stride ldy) = x[m, k] · b[n, k]ᵀ.
void sgemm_nt(const float* x, int64_t m, const float* b, int64_t n, int64_t k, float* y,
              int64_t ldy) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.0f, x, static_cast<int>(k), b, static_cast<int>(k), 0.0f, y,
              static_cast<int>(ldy));
}

// Widens BF16 weight rows [r0, r1) into panel [r1 - r0, cols].
void widen_rows(const uint16_t* w, int64_t cols, int64_t r0, int64_t r1, float* panel) {
  for (int64_t r = r0; r < r1; ++r) bf16_to_f32_row(w + r * cols, cols, panel + (r - r0) * cols);
}

// y[i, r] += bias[r] for all i < m and r in [r0, r1) (nothing if bias is null).
void add_bias(const float* bias, int64_t m, int64_t rows, int64_t r0, int64_t r1, float* y) {
  if (bias == nullptr) return;
  for (int64_t i = 0; i < m; ++i) {
    float* yi = y + i * rows;
    for (int64_t r = r0; r < r1; ++r) yi[r] += bias[r];
  }
}

// sgemm path with each pool thread computing y[:, r0:r1) for its own block of weight rows.
void linear_sgemm_split(const float* x, int64_t m, const WeightMatrix& w, const float* bias,
                        float* y, ThreadPool& pool) {
  set_blas_threads(1);
  const int64_t rows = w.rows, cols = w.cols;
  const int64_t panel_rows = std::max<int64_t>(16, linear_tuning().bf16_panel_rows);
  pool.parallel_for(
      rows,
      [&](int64_t r0, int64_t r1, int) {
        if (w.dtype == DType::F32) {
          const float* wf = static_cast<const float*>(w.data);
          sgemm_nt(x, m, wf + r0 * cols, r1 - r0, cols, y + r0, rows);
        } else {
          const uint16_t* wb = static_cast<const uint16_t*>(w.data);
          float* panel = grow(tl_panel, std::min(panel_rows, r1 - r0) * cols);
          for (int64_t p0 = r0; p0 < r1; p0 += panel_rows) {
            const int64_t p1 = std::min(r1, p0 + panel_rows);
            widen_rows(wb, cols, p0, p1, panel);
            sgemm_nt(x, m, panel, p1 - p0, cols, y + p0, rows);
          }
        }
        add_bias(bias, m, rows, r0, r1, y);
      },
      16);
}

// sgemm path with one OpenBLAS call per weight panel, OpenBLAS running pool.num_threads() threads
// (BF16 panels are widened by the pool first).
void linear_sgemm_blas_threads(const float* x, int64_t m, const WeightMatrix& w, const float* bias,
                               float* y, ThreadPool& pool) {
  set_blas_threads(pool.num_threads());
  const int64_t rows = w.rows, cols = w.cols;
  if (w.dtype == DType::F32) {
    sgemm_nt(x, m, static_cast<const float*>(w.data), rows, cols, y, rows);
  } else {
    const uint16_t* wb = static_cast<const uint16_t*>(w.data);
    const int64_t panel_rows = std::max<int64_t>(16, linear_tuning().bf16_panel_rows) * 4;
    std::vector<float>& buf = tl_panel;
    float* panel = grow(buf, std::min(panel_rows, rows) * cols);
    for (int64_t p0 = 0; p0 < rows; p0 += panel_rows) {
      const int64_t p1 = std::min(rows, p0 + panel_rows);
      pool.parallel_for(p1 - p0, [&](int64_t a, int64_t b, int) {
        widen_rows(wb, cols, p0 + a, p0 + b, panel + a * cols);
      });
      sgemm_nt(x, m, panel, p1 - p0, cols, y + p0, rows);
    }
  }
  add_bias(bias, m, rows, 0, rows, y);
}

// Runs fn(r0, r1) over [0, rows) in chunks of about rows / (threads · chunks_per_thread) rows
// (multiples of kGemvRowTile) that the pool's threads take from a shared counter: a thread that
// is descheduled (other processes on the machine) or slower does not hold up the whole call.
template <typename Fn>
void for_row_chunks(ThreadPool& pool, int64_t rows, int64_t chunks_per_thread, const Fn& fn) {
  const int threads = pool.num_threads();
  const int64_t parts = threads * std::max<int64_t>(1, chunks_per_thread);
  int64_t chunk = (rows + parts - 1) / parts;
  chunk = std::max<int64_t>(kGemvRowTile, (chunk + kGemvRowTile - 1) / kGemvRowTile * kGemvRowTile);
  const int64_t num_chunks = (rows + chunk - 1) / chunk;
  if (threads == 1 || num_chunks == 1) {
    fn(int64_t{0}, rows);
    return;
  }
  std::atomic<int64_t> next{0};
  pool.run_on_all([&](int) {
    for (;;) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= num_chunks) break;
      fn(i * chunk, std::min(rows, (i + 1) * chunk));
    }
  });
}

}  // namespace

LinearTuning& linear_tuning() {
  static LinearTuning tuning;
  return tuning;
}

void linear(const float* x, int64_t m, const WeightMatrix& w, const float* bias, float* y,
            ThreadPool& pool) {
  DPSERVE_CHECK(w.dtype == DType::F32 || w.dtype == DType::BF16,
                "linear: weights must be F32/BF16");
  DPSERVE_CHECK(m >= 0 && w.rows >= 0 && w.cols >= 0, "linear: negative size");
  const int64_t rows = w.rows, cols = w.cols;
  if (m == 0 || rows == 0) return;
  if (cols == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t r = 0; r < rows; ++r) y[i * rows + r] = bias ? bias[r] : 0.0f;
    return;
  }
  const LinearTuning& tune = linear_tuning();
  const bool bf16 = w.dtype == DType::BF16;
  if (m >= (bf16 ? tune.sgemm_min_m_bf16 : tune.sgemm_min_m_f32)) {
    if (tune.blas_threads) {
      linear_sgemm_blas_threads(x, m, w, bias, y, pool);
    } else {
      linear_sgemm_split(x, m, w, bias, y, pool);
    }
    return;
  }
  if (m > 1 && small_m_tuning().blocked) {
    // Blocked kernel: x packed once per call into column panels (no L1 set conflicts between its
    // rows, which are a multiple of 4 KiB apart at these shapes).
    float* xp = grow(tl_packed_x, m * cols);
    pack_x_panels(x, m, cols, bf16, xp);
    for_row_chunks(pool, rows, tune.chunks_per_thread, [&](int64_t r0, int64_t r1) {
      if (bf16) {
        small_m_blocked_bf16(xp, m, static_cast<const uint16_t*>(w.data), cols, bias, y, rows, r0,
                             r1);
      } else {
        small_m_blocked_f32(xp, m, static_cast<const float*>(w.data), cols, bias, y, rows, r0, r1);
      }
    });
    return;
  }
  if (!bf16) {
    const float* wf = static_cast<const float*>(w.data);
    for_row_chunks(pool, rows, tune.chunks_per_thread, [&](int64_t r0, int64_t r1) {
      small_m_f32(x, m, wf, cols, bias, y, rows, r0, r1);
    });
  } else {
    const uint16_t* wb = static_cast<const uint16_t*>(w.data);
    float* xp = grow(tl_packed_x, m * cols);
    pack_x_for_bf16(x, m, cols, xp);
    for_row_chunks(pool, rows, tune.chunks_per_thread, [&](int64_t r0, int64_t r1) {
      small_m_bf16(xp, m, wb, cols, bias, y, rows, r0, r1);
    });
  }
}

}  // namespace dpserve::kernels
