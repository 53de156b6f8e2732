#pragma once
// Small-m linear kernels (AVX2 + FMA): every weight row loaded from memory is reused for all m rows
// of x while it is in cache, so decode (m = 1) streams the weights once at memory bandwidth and
// small batches (m up to a few dozen) cost about the same memory traffic.

#include <cstdint>

namespace dpserve::kernels {

// Row ranges handed to the small-m kernels are best aligned to this many rows (a multiple of
// their register tiles' row counts).
inline constexpr int64_t kGemvRowTile = 16;

// Tuning of the m > 1 kernels; benchmarks and tests change it to force a variant (not while a
// kernel runs).
struct SmallMTuning {
  bool blocked = true;    // linear(): m > 1 runs the blocked kernel (else the unblocked tiles)
  int64_t k_block = 256;  // columns per block of the blocked kernel; <= 0: all columns at once
  int tile = 0;           // register tile of the blocked kernel (0 = default; 1-3 alternatives)
};

// The process-wide tuning used by small_m_f32 / small_m_bf16.
SmallMTuning& small_m_tuning();

// Reorders x [m, cols] for small_m_bf16 into out [m, cols]: inside every full block of 16 columns
// the 8 even-indexed values come first, then the 8 odd-indexed ones (the order in which the kernel
// widens bf16 pairs); the tail of fewer than 16 columns is copied unchanged.
void pack_x_for_bf16(const float* x, int64_t m, int64_t cols, float* out);

// y[i, r] = dot(x[i, :], w[r, :]) + bias[r] for rows r in [r0, r1) and i in [0, m); w is F32
// [rows, cols] row-major, y has row stride ldy, bias may be null.
void small_m_f32(const float* x, int64_t m, const float* w, int64_t cols, const float* bias,
                 float* y, int64_t ldy, int64_t r0, int64_t r1);

// As small_m_f32 for BF16 weights; xp is x packed by pack_x_for_bf16.
void small_m_bf16(const float* xp, int64_t m, const uint16_t* w, int64_t cols, const float* bias,
                  float* y, int64_t ldy, int64_t r0, int64_t r1);

// Packs x [m, cols] for the blocked kernels into out [m * cols] ("panels"): the vector columns in
// steps of 8 (F32) or 16 (BF16, reordered as pack_x_for_bf16 does), each step holding that step's
// values of row 0, then row 1, ...: out[(c / step) * m * step + i * step + k]. The tail of fewer
// than `step` columns follows, row by row: out[cv * m + i * (cols - cv) + j].
void pack_x_panels(const float* x, int64_t m, int64_t cols, bool bf16, float* out);

// As small_m_f32 for m > 1, blocked over columns so that a weight tile is reused from L1 by every
// row of x; xp is x packed by pack_x_panels(bf16 = false).
void small_m_blocked_f32(const float* xp, int64_t m, const float* w, int64_t cols,
                         const float* bias, float* y, int64_t ldy, int64_t r0, int64_t r1);

// As small_m_blocked_f32 for BF16 weights; xp is x packed by pack_x_panels(bf16 = true).
void small_m_blocked_bf16(const float* xp, int64_t m, const uint16_t* w, int64_t cols,
                          const float* bias, float* y, int64_t ldy, int64_t r0, int64_t r1);

// Widens bf16 values to f32: out[i] = bf16_to_f32(in[i]) for i < n.
void bf16_to_f32_row(const uint16_t* in, int64_t n, float* out);

}  // namespace dpserve::kernels
