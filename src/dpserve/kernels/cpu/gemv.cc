#include "dpserve/kernels/cpu/gemv.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

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

// Rows per decode (m = 1) tile, one accumulator each. Measured (docs/benchmarks.md): 8 rows
// stream weights from memory faster than 4 (more lines in flight) and, in cache, run about twice
// as fast as 12 or 16 rows, whose row pointers no longer fit in the general-purpose registers.
constexpr int kDecodeRows = 8;

template <typename WT>
void run(const float* x, int64_t m, const WT* w, int64_t cols, const float* bias, float* y,
         int64_t ldy, int64_t r0, int64_t r1) {
  constexpr bool kBf16 = sizeof(WT) == 2;
  if (m == 1) {
    run_rows<WT, kDecodeRows, 1>(x, m, w, cols, bias, y, ldy, r0, r1);
  } else if constexpr (kBf16) {
    // Register tiles for m > 1 picked by measurement (docs/benchmarks.md). They use more than 16
    // vector registers, available with AVX-512VL (-march=native here); a plain AVX2 build spills
    // a few accumulators.
    run_rows<WT, 8, 2>(x, m, w, cols, bias, y, ldy, r0, r1);
  } else {
    run_rows<WT, 4, 4>(x, m, w, cols, bias, y, ldy, r0, r1);
  }
}

}  // namespace

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
