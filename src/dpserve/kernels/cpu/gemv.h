#pragma once
// Small-m linear kernels (AVX2 + FMA): every weight row loaded from memory is reused for all m rows
// of x while it is in cache, so decode (m = 1) streams the weights once at memory bandwidth and
// small batches (m up to a few dozen) cost about the same memory traffic.

#include <cstdint>

namespace dpserve::kernels {

// Row ranges handed to the small-m kernels are best aligned to this many rows (a multiple of
// their register tiles' row counts).
inline constexpr int64_t kGemvRowTile = 16;

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

// Widens bf16 values to f32: out[i] = bf16_to_f32(in[i]) for i < n.
void bf16_to_f32_row(const uint16_t* in, int64_t n, float* out);

}  // namespace dpserve::kernels
