#include "dpserve/layers/rotary_embedding.h"

#include <cmath>
#include <numbers>

#include "dpserve/common/errors.h"

namespace dpserve {

std::vector<double> rope_inv_freq(int64_t head_dim, double theta, const RopeScaling& scaling) {
  DPSERVE_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope head_dim {} must be even", head_dim);
  const int64_t half = head_dim / 2;
  std::vector<double> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    inv[i] = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(head_dim));
  }
  switch (scaling.type) {
    case RopeScalingType::kNone:
      break;
    case RopeScalingType::kLinear:
      // Positions divided by the factor is the same as frequencies divided by it.
      for (double& f : inv) f /= scaling.factor;
      break;
    case RopeScalingType::kLlama3: {
      // Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth blend between.
      const double old_len = static_cast<double>(scaling.original_max_position_embeddings);
      const double low_wavelen = old_len / scaling.low_freq_factor;
      const double high_wavelen = old_len / scaling.high_freq_factor;
      for (double& f : inv) {
        const double wavelen = 2.0 * std::numbers::pi / f;
        if (wavelen > low_wavelen) {
          f = f / scaling.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth = (old_len / wavelen - scaling.low_freq_factor) /
                                (scaling.high_freq_factor - scaling.low_freq_factor);
          f = (1.0 - smooth) * f / scaling.factor + smooth * f;
        }
      }
      break;
    }
  }
  return inv;
}

RotaryEmbedding::RotaryEmbedding(int64_t head_dim, int64_t max_positions, double theta,
                                 const RopeScaling& scaling)
    : head_dim_(head_dim), max_positions_(max_positions) {
  DPSERVE_CHECK(max_positions > 0, "rope max_positions {} must be positive", max_positions);
  const std::vector<double> inv = rope_inv_freq(head_dim, theta, scaling);
  const int64_t half = head_dim / 2;
  cos_.resize(max_positions * half);
  sin_.resize(max_positions * half);
  for (int64_t p = 0; p < max_positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(p) * inv[i];
      cos_[p * half + i] = static_cast<float>(std::cos(a));
      sin_[p * half + i] = static_cast<float>(std::sin(a));
    }
  }
}

void RotaryEmbedding::apply(float* x, int64_t num_tokens, int64_t num_heads, int64_t row_stride,
                            const int32_t* positions, ThreadPool* pool) const {
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (positions[t] < 0 || positions[t] >= max_positions_) {
      throw_error("position {} is outside the rotary table [0, {}) (context too long)",
                  positions[t], max_positions_);
    }
  }
  const int64_t half = head_dim_ / 2;
  auto body = [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* c = cos_.data() + positions[t] * half;
      const float* s = sin_.data() + positions[t] * half;
      float* row = x + t * row_stride;
      for (int64_t h = 0; h < num_heads; ++h) {
        float* a = row + h * head_dim_;
        float* b = a + half;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = a[i];
          const float x2 = b[i];
          a[i] = x1 * c[i] - x2 * s[i];
          b[i] = x2 * c[i] + x1 * s[i];
        }
      }
    }
  };
  const int64_t work = num_tokens * num_heads * head_dim_;
  if (pool == nullptr || pool->num_threads() == 1 || work < 32768) {
    body(0, num_tokens, 0);
  } else {
    pool->parallel_for(num_tokens, body);
  }
}

}  // namespace dpserve
