#include "dpserve/kernels/cpu/gemv.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "dpserve/common/dtype.h"

namespace dpserve::kernels {
namespace {

// Sum of the 8 lanes.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Hints that the R rows after this tile (the next tile's rows, at the same column) will be read
// soon, into L2. Decode tiles call it once per 64 bytes of each row: the hardware prefetchers do
// not cross 4 KiB pages, and a BF16 row of 2048 columns is exactly one page. Measured +5-20 %
// decode bandwidth (docs/benchmarks.md); prefetching into L1 instead was slower. A prefetch past
// the end of the matrix is harmless (prefetches never fault), hence the integer arithmetic.
template <int R, typename WT>
inline void prefetch_next_tile(const WT* w, int64_t cols, int64_t c) {
  const auto base = reinterpret_cast<uintptr_t>(w + c);
  for (int r = 0; r < R; ++r) {
    const uintptr_t addr = base + static_cast<uintptr_t>((r + R) * cols) * sizeof(WT);
    _mm_prefetch(reinterpret_cast<const char*>(addr), _MM_HINT_T1);
  }
}

// Weight element as f32 (scalar tails).
inline float wval(const float* w, int64_t c) { return w[c]; }
inline float wval(const uint16_t* w, int64_t c) { return bf16_to_f32(w[c]); }

// Writes acc (+ tail columns [c0, cols) done in scalar, + bias) to the MB x R tile of y.
template <typename WT, int R, int MB>
inline void finish_tile(const __m256 (&acc)[MB][R], const float* x, int64_t cols, const WT* w,
                        int64_t c0, const float* bias, float* y, int64_t ldy) {
  for (int i = 0; i < MB; ++i) {
    for (int r = 0; r < R; ++r) {
      float s = hsum(acc[i][r]);
      for (int64_t c = c0; c < cols; ++c) s += x[i * cols + c] * wval(w + r * cols, c);
      y[i * ldy + r] = s + (bias ? bias[r] : 0.0f);
    }
  }
}

// One register tile for F32 weights: R weight rows times MB rows of x. x and w have row stride
// cols; y points at y[i0, r0] with row stride ldy; bias at bias[r0] (or null).
template <int R, int MB>
inline void tile_f32(const float* x, int64_t cols, const float* w, const float* bias, float* y,
                     int64_t ldy) {
  __m256 acc[MB][R];
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm256_setzero_ps();
  int64_t c = 0;
  if constexpr (MB == 1 && R <= 4) {
    // Few rows: a second accumulator set keeps 2R FMA chains in flight.
    __m256 acc2[R];
    for (int r = 0; r < R; ++r) acc2[r] = _mm256_setzero_ps();
    for (; c + 16 <= cols; c += 16) {
      const __m256 x0 = _mm256_loadu_ps(x + c);
      const __m256 x1 = _mm256_loadu_ps(x + c + 8);
      for (int r = 0; r < R; ++r) {
        acc[0][r] = _mm256_fmadd_ps(_mm256_loadu_ps(w + r * cols + c), x0, acc[0][r]);
        acc2[r] = _mm256_fmadd_ps(_mm256_loadu_ps(w + r * cols + c + 8), x1, acc2[r]);
      }
    }
    for (int r = 0; r < R; ++r) acc[0][r] = _mm256_add_ps(acc[0][r], acc2[r]);
  }
  for (; c + 8 <= cols; c += 8) {
    if constexpr (MB == 1 && R > 4) {
      if ((c & 15) == 0) prefetch_next_tile<R>(w, cols, c);
    }
    __m256 xv[MB];
    for (int i = 0; i < MB; ++i) xv[i] = _mm256_loadu_ps(x + i * cols + c);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * cols + c);
      for (int i = 0; i < MB; ++i) acc[i][r] = _mm256_fmadd_ps(wv, xv[i], acc[i][r]);
    }
  }
  finish_tile<float, R, MB>(acc, x, cols, w, c, bias, y, ldy);
}

// One register tile for BF16 weights. 16 bf16 values load as 8 32-bit pairs: shifting each pair
// left by 16 gives the even-indexed values as f32, masking off the low half gives the odd ones;
// x is pre-packed (pack_x_for_bf16) so that its even and odd values sit in the matching lanes.
template <int R, int MB>
inline void tile_bf16(const float* xp, int64_t cols, const uint16_t* w, const float* bias, float* y,
                      int64_t ldy) {
  const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  __m256 acc[MB][R];
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm256_setzero_ps();
  const int64_t c16 = cols & ~int64_t{15};
  if constexpr (MB == 1 && R <= 4) {
    __m256 acc2[R];
    for (int r = 0; r < R; ++r) acc2[r] = _mm256_setzero_ps();
    for (int64_t c = 0; c < c16; c += 16) {
      const __m256 xe = _mm256_loadu_ps(xp + c);
      const __m256 xo = _mm256_loadu_ps(xp + c + 8);
      for (int r = 0; r < R; ++r) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * cols + c));
        const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
        const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(raw, hi_mask));
        acc[0][r] = _mm256_fmadd_ps(we, xe, acc[0][r]);
        acc2[r] = _mm256_fmadd_ps(wo, xo, acc2[r]);
      }
    }
    for (int r = 0; r < R; ++r) acc[0][r] = _mm256_add_ps(acc[0][r], acc2[r]);
  } else {
    for (int64_t c = 0; c < c16; c += 16) {
      if constexpr (MB == 1 && R > 4) {
        if ((c & 31) == 0) prefetch_next_tile<R>(w, cols, c);
      }
      for (int r = 0; r < R; ++r) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * cols + c));
        const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
        const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(raw, hi_mask));
        for (int i = 0; i < MB; ++i) {
          acc[i][r] = _mm256_fmadd_ps(we, _mm256_loadu_ps(xp + i * cols + c), acc[i][r]);
          acc[i][r] = _mm256_fmadd_ps(wo, _mm256_loadu_ps(xp + i * cols + c + 8), acc[i][r]);
        }
      }
    }
  }
  finish_tile<uint16_t, R, MB>(acc, xp, cols, w, c16, bias, y, ldy);
}

template <typename WT, int R, int MB>
inline void tile(const float* x, int64_t cols, const WT* w, const float* bias, float* y,
                 int64_t ldy) {
  if constexpr (sizeof(WT) == 4) {
    tile_f32<R, MB>(x, cols, w, bias, y, ldy);
  } else {
    tile_bf16<R, MB>(x, cols, w, bias, y, ldy);
  }
}

// All m rows of x against the R weight rows at w: full MB-tiles, then one partial tile.
template <typename WT, int R, int MB>
void block_rows(const float* x, int64_t m, const WT* w, int64_t cols, const float* bias, float* y,
                int64_t ldy) {
  int64_t i = 0;
  for (; i + MB <= m; i += MB) tile<WT, R, MB>(x + i * cols, cols, w, bias, y + i * ldy, ldy);
  const int64_t rest = m - i;
  const float* xi = x + i * cols;
  float* yi = y + i * ldy;
  if constexpr (MB > 1) {
    if (rest == 1) tile<WT, R, 1>(xi, cols, w, bias, yi, ldy);
  }
  if constexpr (MB > 2) {
    if (rest == 2) tile<WT, R, 2>(xi, cols, w, bias, yi, ldy);
  }
  if constexpr (MB > 3) {
    if (rest == 3) tile<WT, R, 3>(xi, cols, w, bias, yi, ldy);
  }
}

// Rows [r0, r1) in tiles of R rows (then single rows), all m rows of x in tiles of MB.
template <typename WT, int R, int MB>
void run_rows(const float* x, int64_t m, const WT* w, int64_t cols, const float* bias, float* y,
              int64_t ldy, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + R <= r1; r += R)
    block_rows<WT, R, MB>(x, m, w + r * cols, cols, bias ? bias + r : nullptr, y + r, ldy);
  for (; r < r1; ++r)
    block_rows<WT, 1, MB>(x, m, w + r * cols, cols, bias ? bias + r : nullptr, y + r, ldy);
}

// ---- Blocked small-m kernel for m > 1 (small batches) ----
//
// For a tile of R weight rows, the columns are cut into blocks of kb columns. Within a block, every
// group of MB rows of x runs against the same R weight rows, so that W tile (R · kb values) stays
// in L1 and is loaded from memory once; the x block (m · kb floats) stays in L1/L2 across the row
// tiles. Per step the MB rows of x sit in registers and every weight vector feeds MB FMAs, so there
// are (R + MB) loads for R · MB FMAs. Partial sums live in a small buffer acc[m][R][8] (L1) between
// column blocks; the horizontal sums are done once per tile at the end.

// Adds columns [c0, c1) of the MB x R tile to the vector partial sums at acc ([MB][R][8] floats),
// which start at zero when `first`. For BF16, x is packed (pack_x_for_bf16) and c0, c1 are
// multiples of 16; for F32 they are multiples of 8. With `prefetch`, the next tile's rows (R rows
// further) are hinted into L2 at the same columns.
template <int R, int MB>
inline void block_f32(const float* x, int64_t ldx, const float* w, int64_t cols, int64_t c0,
                      int64_t c1, float* acc_buf, bool first, bool prefetch) {
  // x: panel layout, the MB rows' 8 values of column step c / 8 at x + (c / 8) * ldx + i * 8.
  __m256 acc[MB][R];
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < R; ++r)
      acc[i][r] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(acc_buf + (i * R + r) * 8);
  for (int64_t c = c0; c < c1; c += 8) {
    if (prefetch && (c & 15) == 0) prefetch_next_tile<R>(w, cols, c);
    const float* xc = x + (c / 8) * ldx;
    __m256 xv[MB];
    for (int i = 0; i < MB; ++i) xv[i] = _mm256_loadu_ps(xc + i * 8);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * cols + c);
      for (int i = 0; i < MB; ++i) acc[i][r] = _mm256_fmadd_ps(wv, xv[i], acc[i][r]);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < R; ++r) _mm256_storeu_ps(acc_buf + (i * R + r) * 8, acc[i][r]);
}

template <int R, int MB>
inline void block_bf16(const float* xp, int64_t ldx, const uint16_t* w, int64_t cols, int64_t c0,
                       int64_t c1, float* acc_buf, bool first, bool prefetch) {
  const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  __m256 acc[MB][R];
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < R; ++r)
      acc[i][r] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(acc_buf + (i * R + r) * 8);
  for (int64_t c = c0; c < c1; c += 16) {
    if (prefetch && (c & 31) == 0) prefetch_next_tile<R>(w, cols, c);
    // xp: panel layout, the MB rows' 16 values of column step c / 16 at xp + (c / 16) * ldx +
    // i * 16 (even-indexed values first, as pack_x_for_bf16 orders them).
    const float* xc = xp + (c / 16) * ldx;
    __m256 xe[MB], xo[MB];
    for (int i = 0; i < MB; ++i) {
      xe[i] = _mm256_loadu_ps(xc + i * 16);
      xo[i] = _mm256_loadu_ps(xc + i * 16 + 8);
    }
    for (int r = 0; r < R; ++r) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * cols + c));
      const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
      const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(raw, hi_mask));
      for (int i = 0; i < MB; ++i) {
        acc[i][r] = _mm256_fmadd_ps(we, xe[i], acc[i][r]);
        acc[i][r] = _mm256_fmadd_ps(wo, xo[i], acc[i][r]);
      }
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int r = 0; r < R; ++r) _mm256_storeu_ps(acc_buf + (i * R + r) * 8, acc[i][r]);
}

template <typename WT, int R, int MB>
inline void block(const float* x, int64_t ldx, const WT* w, int64_t cols, int64_t c0, int64_t c1,
                  float* acc_buf, bool first, bool prefetch) {
  if constexpr (sizeof(WT) == 4) {
    block_f32<R, MB>(x, ldx, w, cols, c0, c1, acc_buf, first, prefetch);
  } else {
    block_bf16<R, MB>(x, ldx, w, cols, c0, c1, acc_buf, first, prefetch);
  }
}

// Columns [c0, c1) for all m rows of x (panel layout, see pack_x_panels): groups of MB rows,
// then one group of the rest (< MB).
template <typename WT, int R, int MB>
inline void block_all_m(const float* xp, int64_t m, const WT* w, int64_t cols, int64_t c0,
                        int64_t c1, float* acc_buf, bool first, bool prefetch) {
  constexpr int64_t kStep = sizeof(WT) == 2 ? 16 : 8;
  const int64_t ldx = m * kStep;
  int64_t i = 0;
  for (; i + MB <= m; i += MB) {
    block<WT, R, MB>(xp + i * kStep, ldx, w, cols, c0, c1, acc_buf + i * R * 8, first,
                     prefetch && i == 0);
  }
  const int64_t rest = m - i;
  const float* xi = xp + i * kStep;
  float* ai = acc_buf + i * R * 8;
  const bool pf = prefetch && i == 0;
  if constexpr (MB > 1) {
    if (rest == 1) block<WT, R, 1>(xi, ldx, w, cols, c0, c1, ai, first, pf);
  }
  if constexpr (MB > 2) {
    if (rest == 2) block<WT, R, 2>(xi, ldx, w, cols, c0, c1, ai, first, pf);
  }
  if constexpr (MB > 3) {
    if (rest == 3) block<WT, R, 3>(xi, ldx, w, cols, c0, c1, ai, first, pf);
  }
  if constexpr (MB > 4) {
    if (rest == 4) block<WT, R, 4>(xi, ldx, w, cols, c0, c1, ai, first, pf);
  }
  if constexpr (MB > 5) {
    if (rest == 5) block<WT, R, 5>(xi, ldx, w, cols, c0, c1, ai, first, pf);
  }
}

// Scratch for the partial sums of one row tile, per thread.
thread_local std::vector<float> tl_acc;

// Rows [r0, r1) in tiles of R rows (then single rows), columns in blocks of kb, all m rows of x
// (panel layout).
template <typename WT, int R, int MB>
void run_rows_blocked(const float* x, int64_t m, const WT* w, int64_t cols, const float* bias,
                      float* y, int64_t ldy, int64_t r0, int64_t r1, int64_t kb) {
  constexpr int64_t kStep = sizeof(WT) == 2 ? 16 : 8;  // columns per vector step
  const int64_t cv = cols / kStep * kStep;             // vectorized columns; the rest in scalar
  kb = std::max<int64_t>(kStep, kb / kStep * kStep);
  if (static_cast<int64_t>(tl_acc.size()) < m * R * 8)
    tl_acc.resize(static_cast<size_t>(m * R * 8));
  float* acc = tl_acc.data();
  auto tile_rows = [&]<int RR>(int64_t r) {
    const WT* wr = w + r * cols;
    if (cv == 0) std::fill(acc, acc + m * RR * 8, 0.0f);
    for (int64_t c0 = 0; c0 < cv; c0 += kb) {
      block_all_m<WT, RR, MB>(x, m, wr, cols, c0, std::min(cv, c0 + kb), acc, c0 == 0, RR > 1);
    }
    for (int64_t i = 0; i < m; ++i) {
      for (int rr = 0; rr < RR; ++rr) {
        float s = hsum(_mm256_loadu_ps(acc + (i * RR + rr) * 8));
        const float* xt = x + cv * m + i * (cols - cv);  // tail columns of row i
        for (int64_t c = cv; c < cols; ++c) s += xt[c - cv] * wval(wr + rr * cols, c);
        y[i * ldy + r + rr] = s + (bias ? bias[r + rr] : 0.0f);
      }
    }
  };
  int64_t r = r0;
  for (; r + R <= r1; r += R) tile_rows.template operator()<R>(r);
  for (; r < r1; ++r) tile_rows.template operator()<1>(r);
}

// Rows per decode (m = 1) tile, one accumulator each. Measured (docs/benchmarks.md): 8 rows
// stream weights from memory faster than 4 (more lines in flight) and, in cache, run about twice
// as fast as 12 or 16 rows, whose row pointers no longer fit in the general-purpose registers.
constexpr int kDecodeRows = 8;

template <typename WT>
void run(const float* x, int64_t m, const WT* w, int64_t cols, const float* bias, float* y,
         int64_t ldy, int64_t r0, int64_t r1) {
  if (m == 1) {
    run_rows<WT, kDecodeRows, 1>(x, m, w, cols, bias, y, ldy, r0, r1);
  } else if constexpr (sizeof(WT) == 2) {
    run_rows<WT, 8, 2>(x, m, w, cols, bias, y, ldy, r0, r1);
  } else {
    run_rows<WT, 4, 4>(x, m, w, cols, bias, y, ldy, r0, r1);
  }
}

template <typename WT>
void run_blocked(const float* xp, int64_t m, const WT* w, int64_t cols, const float* bias, float* y,
                 int64_t ldy, int64_t r0, int64_t r1) {
  const SmallMTuning& t = small_m_tuning();
  const int64_t kb = t.k_block > 0 ? t.k_block : cols;
  if constexpr (sizeof(WT) == 2) {
    // Register tiles picked by measurement (docs/benchmarks.md, A/B at m = 16): BF16 4 rows x 4,
    // F32 4 rows x 6. They use up to 30 vector registers, available with AVX-512VL
    // (-march=native here); a plain AVX2 build spills some.
    switch (t.tile) {
      case 1:
        run_rows_blocked<WT, 8, 2>(xp, m, w, cols, bias, y, ldy, r0, r1, kb);
        break;
      case 2:
        run_rows_blocked<WT, 6, 3>(xp, m, w, cols, bias, y, ldy, r0, r1, kb);
        break;
      case 3:
        run_rows_blocked<WT, 4, 3>(xp, m, w, cols, bias, y, ldy, r0, r1, kb);
        break;
      default:
        run_rows_blocked<WT, 4, 4>(xp, m, w, cols, bias, y, ldy, r0, r1, kb);
        break;
    }
  } else {
    switch (t.tile) {
      case 1:
        run_rows_blocked<WT, 6, 4>(xp, m, w, cols, bias, y, ldy, r0, r1, kb);
        break;
      case 2:
        run_rows_blocked<WT, 8, 2>(xp, m, w, cols, bias, y, ldy, r0, r1, kb);
        break;
      case 3:
        run_rows_blocked<WT, 4, 4>(xp, m, w, cols, bias, y, ldy, r0, r1, kb);
        break;
      default:
        run_rows_blocked<WT, 4, 6>(xp, m, w, cols, bias, y, ldy, r0, r1, kb);
        break;
    }
  }
}

}  // namespace

SmallMTuning& small_m_tuning() {
  static SmallMTuning tuning;
  return tuning;
}

void pack_x_for_bf16(const float* x, int64_t m, int64_t cols, float* out) {
  const int64_t c16 = cols & ~int64_t{15};
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * cols;
    float* oi = out + i * cols;
    for (int64_t c = 0; c < c16; c += 16) {
      for (int k = 0; k < 8; ++k) {
        oi[c + k] = xi[c + 2 * k];
        oi[c + 8 + k] = xi[c + 2 * k + 1];
      }
    }
    for (int64_t c = c16; c < cols; ++c) oi[c] = xi[c];
  }
}

void pack_x_panels(const float* x, int64_t m, int64_t cols, bool bf16, float* out) {
  const int64_t step = bf16 ? 16 : 8;
  const int64_t cv = cols / step * step;
  for (int64_t c = 0; c < cv; c += step) {
    float* o = out + c * m;  // (c / step) * m * step
    for (int64_t i = 0; i < m; ++i, o += step) {
      const float* xi = x + i * cols + c;
      if (bf16) {
        for (int k = 0; k < 8; ++k) {
          o[k] = xi[2 * k];
          o[8 + k] = xi[2 * k + 1];
        }
      } else {
        for (int k = 0; k < 8; ++k) o[k] = xi[k];
      }
    }
  }
  const int64_t tail = cols - cv;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < tail; ++c) out[cv * m + i * tail + c] = x[i * cols + cv + c];
}

void small_m_blocked_f32(const float* xp, int64_t m, const float* w, int64_t cols,
                         const float* bias, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  run_blocked<float>(xp, m, w, cols, bias, y, ldy, r0, r1);
}

void small_m_blocked_bf16(const float* xp, int64_t m, const uint16_t* w, int64_t cols,
                          const float* bias, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  run_blocked<uint16_t>(xp, m, w, cols, bias, y, ldy, r0, r1);
}

void small_m_f32(const float* x, int64_t m, const float* w, int64_t cols, const float* bias,
                 float* y, int64_t ldy, int64_t r0, int64_t r1) {
  run<float>(x, m, w, cols, bias, y, ldy, r0, r1);
}

void small_m_bf16(const float* xp, int64_t m, const uint16_t* w, int64_t cols, const float* bias,
                  float* y, int64_t ldy, int64_t r0, int64_t r1) {
  run<uint16_t>(xp, m, w, cols, bias, y, ldy, r0, r1);
}

void bf16_to_f32_row(const uint16_t* in, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    const __m256i u = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    _mm256_storeu_ps(out + i, _mm256_castsi256_ps(u));
  }
  for (; i < n; ++i) out[i] = bf16_to_f32(in[i]);
}

}  // namespace dpserve::kernels
