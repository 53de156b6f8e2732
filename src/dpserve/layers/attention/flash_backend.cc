#include "dpserve/layers/attention/flash_backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "dpserve/layers/vec_math.h"

namespace dpserve {
namespace {

constexpr int64_t kBK = FlashAttentionBackend::kBlockKV;

#ifdef DPSERVE_HAVE_AVX2
// s[r][0..ncols) = q[r]·kt[:, 0..ncols) for NR rows; ncols a multiple of 32.
template <int NR>
inline void scores_rows(const float* q, int64_t hd, const float* kt, int64_t ncols, float* s) {
  for (int64_t c = 0; c < ncols; c += 32) {
    __m256 acc[NR][4];
    for (int r = 0; r < NR; ++r) {
      for (int x = 0; x < 4; ++x) acc[r][x] = _mm256_setzero_ps();
    }
    const float* k = kt + c;
    for (int64_t d = 0; d < hd; ++d, k += kBK) {
      const __m256 k0 = _mm256_loadu_ps(k);
      const __m256 k1 = _mm256_loadu_ps(k + 8);
      const __m256 k2 = _mm256_loadu_ps(k + 16);
      const __m256 k3 = _mm256_loadu_ps(k + 24);
      for (int r = 0; r < NR; ++r) {
        const __m256 qb = _mm256_broadcast_ss(q + r * hd + d);
        acc[r][0] = _mm256_fmadd_ps(qb, k0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(qb, k1, acc[r][1]);
        acc[r][2] = _mm256_fmadd_ps(qb, k2, acc[r][2]);
        acc[r][3] = _mm256_fmadd_ps(qb, k3, acc[r][3]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      for (int x = 0; x < 4; ++x) _mm256_storeu_ps(s + r * kBK + c + 8 * x, acc[r][x]);
    }
  }
}

// o[d0 .. d0+8NV) = o*alpha + sum_j p[j] * vrows[j][d0 ..].
template <int NV>
inline void pv_chunk(float* o, int64_t d0, float alpha, const float* p, int64_t c,
                     const float* const* vrows) {
  __m256 acc[NV];
  const __m256 a = _mm256_set1_ps(alpha);
  for (int v = 0; v < NV; ++v) acc[v] = _mm256_mul_ps(_mm256_loadu_ps(o + d0 + 8 * v), a);
  for (int64_t j = 0; j < c; ++j) {
    const __m256 pb = _mm256_broadcast_ss(p + j);
    const float* vr = vrows[j] + d0;
    for (int v = 0; v < NV; ++v) acc[v] = _mm256_fmadd_ps(pb, _mm256_loadu_ps(vr + 8 * v), acc[v]);
  }
  for (int v = 0; v < NV; ++v) _mm256_storeu_ps(o + d0 + 8 * v, acc[v]);
}
#endif

// Scores for `rows` rows over ncols (multiple of 32) columns.
void block_scores(const float* q, int64_t rows, int64_t hd, const float* kt, int64_t ncols,
                  float* s) {
#ifdef DPSERVE_HAVE_AVX2
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) scores_rows<2>(q + r * hd, hd, kt, ncols, s + r * kBK);
  if (r < rows) scores_rows<1>(q + r * hd, hd, kt, ncols, s + r * kBK);
#else
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * kBK;
    for (int64_t j = 0; j < ncols; ++j) sr[j] = 0.0f;
    for (int64_t d = 0; d < hd; ++d) {
      const float qd = q[r * hd + d];
      for (int64_t j = 0; j < ncols; ++j) sr[j] += qd * kt[d * kBK + j];
    }
  }
#endif
}

// Online-softmax step of one row: turns s[0..c) into exp(s - m_new), rescales o and l by
// exp(m - m_new), accumulates p·V into o. s must have room up to c rounded up to 8.
void softmax_pv_row(float* s, int64_t c, float* o, int64_t hd, float& m, float& l,
                    const float* const* vrows) {
  float mx = -INFINITY;
  float sum = 0.0f;
#ifdef DPSERVE_HAVE_AVX2
  const int64_t c8 = (c + 7) / 8 * 8;
  for (int64_t j = c; j < c8; ++j) s[j] = -INFINITY;
  __m256 vmx = _mm256_set1_ps(-INFINITY);
  for (int64_t j = 0; j < c8; j += 8) vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(s + j));
  mx = vec::hmax8(vmx);
  const float m_new = std::max(m, mx);
  const __m256 mb = _mm256_set1_ps(m_new);
  __m256 vs = _mm256_setzero_ps();
  for (int64_t j = 0; j < c8; j += 8) {
    const __m256 p = vec::exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), mb));
    _mm256_storeu_ps(s + j, p);
    vs = _mm256_add_ps(vs, p);
  }
  sum = vec::hsum8(vs);
#else
  for (int64_t j = 0; j < c; ++j) mx = std::max(mx, s[j]);
  const float m_new = std::max(m, mx);
  for (int64_t j = 0; j < c; ++j) {
    s[j] = vec::exp1(s[j] - m_new);
    sum += s[j];
  }
#endif
  const float alpha = m == -INFINITY ? 0.0f : vec::exp1(m - m_new);
  l = l * alpha + sum;
  m = m_new;
  int64_t d0 = 0;
#ifdef DPSERVE_HAVE_AVX2
  for (; d0 + 64 <= hd; d0 += 64) pv_chunk<8>(o, d0, alpha, s, c, vrows);
  if (d0 + 32 <= hd) {
    pv_chunk<4>(o, d0, alpha, s, c, vrows);
    d0 += 32;
  }
  if (d0 + 16 <= hd) {
    pv_chunk<2>(o, d0, alpha, s, c, vrows);
    d0 += 16;
  }
  if (d0 + 8 <= hd) {
    pv_chunk<1>(o, d0, alpha, s, c, vrows);
    d0 += 8;
  }
#endif
  for (int64_t d = d0; d < hd; ++d) o[d] *= alpha;
  for (int64_t j = 0; j < c && d0 < hd; ++j) {
    const float p = s[j];
    const float* vr = vrows[j];
    for (int64_t d = d0; d < hd; ++d) o[d] += p * vr[d];
  }
}

}  // namespace

FlashAttentionBackend::FlashAttentionBackend(const AttentionShape& shape)
    : AttentionBackend(shape),
      group_(shape.num_q_heads / shape.num_kv_heads),
      tile_tokens_(std::max<int64_t>(1, kTileRows / group_)) {}

void FlashAttentionBackend::run_item(const WorkItem& item, const float* q,
                                     const ForwardBatch& batch, const KVPool& kv, int64_t layer,
                                     float* out, Scratch& sc) const {
  const int64_t nq = shape_.num_q_heads;
  const int64_t hd = shape_.head_dim;
  const int64_t g = group_;
  const int b = item.seq;
  const int64_t prefix = batch.extend_prefix_lens[b];
  const int64_t tok0 = token_start_[b] + item.q_begin;
  const int64_t ntok = item.q_end - item.q_begin;
  const int64_t rows = ntok * g;
  const int32_t* slots = batch.kv_indices.data() + batch.kv_indptr[b];
  const float* k_head = kv.k_head(layer, item.kv_head);
  const float* v_head = kv.v_head(layer, item.kv_head);

  // Q tile: the group's heads of each token are adjacent in q, so rows are contiguous per token.
  float* qt = sc.q.data();
  for (int64_t i = 0; i < ntok; ++i) {
    const float* src = q + (tok0 + i) * nq * hd + item.kv_head * g * hd;
    float* dst = qt + i * g * hd;
    for (int64_t e = 0; e < g * hd; ++e) dst[e] = src[e] * shape_.scale;
  }
  std::fill(sc.o.begin(), sc.o.begin() + rows * hd, 0.0f);
  std::fill(sc.m.begin(), sc.m.begin() + rows, -INFINITY);
  std::fill(sc.l.begin(), sc.l.begin() + rows, 0.0f);

  const int64_t kv_end = prefix + item.q_end;  // the tile's last token sees KV [0, kv_end)
  for (int64_t j0 = 0; j0 < kv_end; j0 += kBK) {
    const int64_t n = std::min(kBK, kv_end - j0);
    const int64_t ncols = (n + 31) / 32 * 32;
    // Transposed keys [hd][kBK], padded with zeros up to ncols.
    for (int64_t j = 0; j < n; ++j) {
      const int64_t slot = slots[j0 + j];
      const float* kr = k_head + slot * hd;
      for (int64_t d = 0; d < hd; ++d) sc.kt[d * kBK + j] = kr[d];
      sc.vrows[j] = v_head + slot * hd;
    }
    for (int64_t d = 0; d < hd; ++d) {
      std::fill(sc.kt.begin() + d * kBK + n, sc.kt.begin() + d * kBK + ncols, 0.0f);
    }
    // Only rows whose token sees some of this block.
    const int64_t first_tok = std::max<int64_t>(0, j0 - prefix - item.q_begin);
    if (first_tok >= ntok) continue;
    const int64_t r0 = first_tok * g;
    block_scores(qt + r0 * hd, rows - r0, hd, sc.kt.data(), ncols, sc.s.data() + r0 * kBK);
    for (int64_t r = r0; r < rows; ++r) {
      const int64_t i = item.q_begin + r / g;  // token index within the sequence's new tokens
      const int64_t c = std::min(n, prefix + i + 1 - j0);
      if (c <= 0) continue;
      softmax_pv_row(sc.s.data() + r * kBK, c, sc.o.data() + r * hd, hd, sc.m[r], sc.l[r],
                     sc.vrows.data());
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r / g;
    const int64_t h = item.kv_head * g + r % g;
    const float inv = 1.0f / sc.l[r];
    const float* o = sc.o.data() + r * hd;
    float* dst = out + (tok0 + i) * nq * hd + h * hd;
    for (int64_t d = 0; d < hd; ++d) dst[d] = o[d] * inv;
  }
}

void FlashAttentionBackend::forward(const float* q, const ForwardBatch& batch, const KVPool& kv,
                                    int64_t layer, float* out, ThreadPool& pool) {
  validate(batch, kv, token_start_);
  // Work items, later (costlier) tiles first so that dynamic scheduling balances the tail.
  items_.clear();
  for (int b = 0; b < batch.batch_size; ++b) {
    const int32_t ext = batch.extend_seq_lens[b];
    for (int32_t q1 = ext; q1 > 0; q1 -= static_cast<int32_t>(tile_tokens_)) {
      const int32_t q0 = std::max<int32_t>(0, q1 - static_cast<int32_t>(tile_tokens_));
      for (int32_t h = 0; h < shape_.num_kv_heads; ++h) items_.push_back({b, h, q0, q1});
    }
  }
  if (items_.empty()) return;

  const int64_t hd = shape_.head_dim;
  const int64_t max_rows = tile_tokens_ * group_;
  if (static_cast<int>(scratch_.size()) < pool.num_threads()) {
    scratch_.resize(pool.num_threads());
  }
  for (Scratch& sc : scratch_) {
    if (sc.q.size() == static_cast<size_t>(max_rows * hd)) continue;
    sc.q.assign(max_rows * hd, 0.0f);
    sc.o.assign(max_rows * hd, 0.0f);
    sc.s.assign(max_rows * kBK + 8, 0.0f);
    sc.kt.assign(hd * kBK, 0.0f);
    sc.m.assign(max_rows, 0.0f);
    sc.l.assign(max_rows, 0.0f);
    sc.vrows.assign(kBK, nullptr);
  }

  const int64_t num_items = static_cast<int64_t>(items_.size());
  if (num_items == 1 || pool.num_threads() == 1) {
    for (const WorkItem& it : items_) run_item(it, q, batch, kv, layer, out, scratch_[0]);
    return;
  }
  std::atomic<int64_t> next{0};
  pool.run_on_all([&](int t) {
    for (;;) {
      const int64_t k = next.fetch_add(1, std::memory_order_relaxed);
      if (k >= num_items) break;
      run_item(items_[k], q, batch, kv, layer, out, scratch_[t]);
    }
  });
}

}  // namespace dpserve
