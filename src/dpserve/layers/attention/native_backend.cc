#include "dpserve/layers/attention/native_backend.h"

#include <algorithm>
#include <cmath>

namespace dpserve {

NativeAttentionBackend::NativeAttentionBackend(const AttentionShape& shape)
    : AttentionBackend(shape) {}

void NativeAttentionBackend::forward(const float* q, const ForwardBatch& batch, const KVPool& kv,
                                     int64_t layer, float* out, ThreadPool& pool) {
  validate(batch, kv, token_start_);
  const int64_t num_tokens = batch.num_tokens();
  token_seq_.resize(num_tokens);
  for (int b = 0; b < batch.batch_size; ++b) {
    for (int64_t t = token_start_[b]; t < token_start_[b + 1]; ++t) token_seq_[t] = b;
  }
  const int64_t nq = shape_.num_q_heads;
  const int64_t hd = shape_.head_dim;
  const int64_t group = nq / shape_.num_kv_heads;
  const double scale = shape_.scale;

  pool.parallel_for(num_tokens * nq, [&](int64_t w0, int64_t w1, int) {
    std::vector<double> scores;
    std::vector<double> acc(hd);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t t = w / nq;
      const int64_t h = w % nq;
      const int b = token_seq_[t];
      const int64_t i = t - token_start_[b];
      const int64_t visible = batch.extend_prefix_lens[b] + i + 1;
      const int32_t* slots = batch.kv_indices.data() + batch.kv_indptr[b];
      const float* k_head = kv.k_head(layer, h / group);
      const float* v_head = kv.v_head(layer, h / group);
      const float* qv = q + t * nq * hd + h * hd;

      scores.resize(visible);
      double mx = -INFINITY;
      for (int64_t j = 0; j < visible; ++j) {
        const float* kr = k_head + static_cast<int64_t>(slots[j]) * hd;
        double s = 0.0;
        for (int64_t d = 0; d < hd; ++d) s += static_cast<double>(qv[d]) * kr[d];
        scores[j] = s * scale;
        mx = std::max(mx, scores[j]);
      }
      double sum = 0.0;
      for (int64_t j = 0; j < visible; ++j) {
        scores[j] = std::exp(scores[j] - mx);
        sum += scores[j];
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < visible; ++j) {
        const float* vr = v_head + static_cast<int64_t>(slots[j]) * hd;
        for (int64_t d = 0; d < hd; ++d) acc[d] += scores[j] * vr[d];
      }
      float* o = out + t * nq * hd + h * hd;
      for (int64_t d = 0; d < hd; ++d) o[d] = static_cast<float>(acc[d] / sum);
    }
  });
}

}  // namespace dpserve
