// RMSNorm, rotary embedding, SwiGLU, embedding lookup and the KV pool against direct double
// computations of their definitions.

#include <cmath>
#include <numbers>
#include <random>

#include <gtest/gtest.h>

#include "dpserve/common/errors.h"
#include "dpserve/layers/activation.h"
#include "dpserve/layers/embedding.h"
#include "dpserve/layers/rms_norm.h"
#include "dpserve/layers/rotary_embedding.h"
#include "dpserve/mem_cache/kv_pool.h"

namespace dpserve {
namespace {

std::vector<float> random_vec(size_t n, std::mt19937& rng, float sd = 1.0f) {
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

TEST(RmsNorm, MatchesDefinition) {
  std::mt19937 rng(1);
  ThreadPool pool(2);
  for (int64_t dim : {8, 13, 64, 2048}) {
    const int64_t rows = 37;
    auto x = random_vec(rows * dim, rng);
    auto w = random_vec(dim, rng);
    std::vector<float> y(x.size());
    rms_norm(x.data(), w.data(), rows, dim, 1e-5f, y.data(), &pool);
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0.0;
      for (int64_t i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
      const double inv = 1.0 / std::sqrt(ss / dim + 1e-5);
      for (int64_t i = 0; i < dim; ++i) {
        EXPECT_NEAR(y[r * dim + i], x[r * dim + i] * inv * w[i], 1e-5);
      }
    }
    // Fused add: residual += delta, y = norm(residual); output aliasing delta is allowed.
    auto res = random_vec(rows * dim, rng);
    auto delta = random_vec(rows * dim, rng);
    std::vector<float> sum(res.size());
    for (size_t i = 0; i < res.size(); ++i) sum[i] = res[i] + delta[i];
    std::vector<float> expect(res.size());
    rms_norm(sum.data(), w.data(), rows, dim, 1e-5f, expect.data(), nullptr);
    add_rms_norm(res.data(), delta.data(), w.data(), rows, dim, 1e-5f, delta.data(), &pool);
    for (size_t i = 0; i < res.size(); ++i) {
      EXPECT_FLOAT_EQ(res[i], sum[i]);
      EXPECT_FLOAT_EQ(delta[i], expect[i]);
    }
  }
}

TEST(Rotary, InvFreqPlainAndLinear) {
  RopeScaling none;
  auto f = rope_inv_freq(8, 10000.0, none);
  ASSERT_EQ(f.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(f[i], 1.0 / std::pow(10000.0, 2.0 * i / 8));
  RopeScaling lin;
  lin.type = RopeScalingType::kLinear;
  lin.factor = 4.0;
  auto g = rope_inv_freq(8, 10000.0, lin);
  for (int i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(g[i], f[i] / 4.0);
}

TEST(Rotary, InvFreqLlama3) {
  RopeScaling s;
  s.type = RopeScalingType::kLlama3;
  s.factor = 8.0;
  s.low_freq_factor = 1.0;
  s.high_freq_factor = 4.0;
  s.original_max_position_embeddings = 8192;
  const int64_t hd = 128;
  auto base = rope_inv_freq(hd, 500000.0, RopeScaling{});
  auto f = rope_inv_freq(hd, 500000.0, s);
  int low = 0, mid = 0, high = 0;
  for (int64_t i = 0; i < hd / 2; ++i) {
    const double wavelen = 2 * std::numbers::pi / base[i];
    if (wavelen < 8192.0 / 4.0) {  // high frequency: unchanged
      EXPECT_DOUBLE_EQ(f[i], base[i]);
      ++high;
    } else if (wavelen > 8192.0) {  // low frequency: divided by factor
      EXPECT_DOUBLE_EQ(f[i], base[i] / 8.0);
      ++low;
    } else {  // in between: interpolation weight from the wavelength
      const double smooth = (8192.0 / wavelen - 1.0) / 3.0;
      EXPECT_NEAR(f[i], (1 - smooth) * base[i] / 8.0 + smooth * base[i], 1e-15);
      EXPECT_LT(f[i], base[i]);
      EXPECT_GT(f[i], base[i] / 8.0);
      ++mid;
    }
  }
  EXPECT_GT(low, 0);
  EXPECT_GT(mid, 0);
  EXPECT_GT(high, 0);
}

TEST(Rotary, RotateHalfConventionAndRelativePositions) {
  std::mt19937 rng(2);
  const int64_t hd = 16, heads = 3;
  RopeScaling none;
  RotaryEmbedding rope(hd, 4096, 10000.0, none);
  auto inv = rope_inv_freq(hd, 10000.0, none);
  auto x = random_vec(2 * heads * hd, rng);
  auto y = x;
  const int32_t pos[2] = {0, 1234};
  rope.apply(y.data(), 2, heads, heads * hd, pos, nullptr);
  for (int t = 0; t < 2; ++t) {
    for (int h = 0; h < heads; ++h) {
      const float* a = x.data() + t * heads * hd + h * hd;
      const float* b = y.data() + t * heads * hd + h * hd;
      for (int i = 0; i < hd / 2; ++i) {
        const double ang = pos[t] * inv[i];
        EXPECT_NEAR(b[i], a[i] * std::cos(ang) - a[i + hd / 2] * std::sin(ang), 2e-5);
        EXPECT_NEAR(b[i + hd / 2], a[i + hd / 2] * std::cos(ang) + a[i] * std::sin(ang), 2e-5);
      }
    }
  }
  // q·k after rotation depends only on the position difference.
  auto q = random_vec(hd, rng), k = random_vec(hd, rng);
  auto dot_at = [&](int32_t pq, int32_t pk) {
    auto qq = q, kk = k;
    rope.apply(qq.data(), 1, 1, hd, &pq, nullptr);
    rope.apply(kk.data(), 1, 1, hd, &pk, nullptr);
    double d = 0;
    for (int i = 0; i < hd; ++i) d += double(qq[i]) * kk[i];
    return d;
  };
  EXPECT_NEAR(dot_at(10, 3), dot_at(107, 100), 1e-4);
  const int32_t bad = 4096;
  EXPECT_THROW(rope.apply(q.data(), 1, 1, hd, &bad, nullptr), Error);
}

TEST(Activation, SiluAndMul) {
  std::mt19937 rng(3);
  ThreadPool pool(2);
  for (int64_t n : {1, 7, 8, 100, 200000}) {
    auto g = random_vec(n, rng, 4.0f), u = random_vec(n, rng);
    g[0] = -100.0f;  // exp overflow side must give -0, not NaN
    std::vector<float> out(n);
    silu_and_mul(g.data(), u.data(), n, out.data(), &pool);
    for (int64_t i = 0; i < n; ++i) {
      const double e = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
      EXPECT_NEAR(out[i], e, 1e-6 + 1e-6 * std::fabs(e)) << i;
    }
  }
}

TEST(Embedding, F32AndBf16Rows) {
  std::vector<float> tf = {0, 1, 2, 10, 11, 12, 20, 21, 22};
  std::vector<uint16_t> tb(tf.size());
  for (size_t i = 0; i < tf.size(); ++i) tb[i] = f32_to_bf16(tf[i]);
  for (int which = 0; which < 2; ++which) {
    kernels::WeightMatrix w{which ? DType::BF16 : DType::F32, 3, 3,
                            which ? static_cast<const void*>(tb.data()) : tf.data()};
    Embedding e(w);
    EXPECT_EQ(e.vocab_size(), 3);
    const int32_t ids[3] = {2, 0, 2};
    std::vector<float> out(9);
    e.forward(ids, 3, out.data());
    EXPECT_EQ(out, (std::vector<float>{20, 21, 22, 0, 1, 2, 20, 21, 22}));
    const int32_t bad = 3;
    EXPECT_THROW(e.forward(&bad, 1, out.data()), Error);
  }
}

TEST(KVPool, AllocatorAndStorage) {
  KVPool pool(8, 2, 2, 4);
  EXPECT_EQ(pool.available(), 8);
  auto a = pool.alloc(3);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(*a, (std::vector<int32_t>{0, 1, 2}));
  auto b = pool.alloc(5);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(pool.available(), 0);
  EXPECT_FALSE(pool.alloc(1).has_value());
  pool.free(*a);
  EXPECT_EQ(pool.available(), 3);
  EXPECT_DEATH(pool.free(std::vector<int32_t>{1}), "");  // double free

  // store(): token t's heads land in each head's row `slot`.
  const int32_t locs[2] = {5, 2};
  std::vector<float> k(2 * 8), v(2 * 8);
  for (int i = 0; i < 16; ++i) {
    k[i] = static_cast<float>(i);
    v[i] = static_cast<float>(100 + i);
  }
  pool.store(1, locs, 2, k.data(), v.data(), 8);
  for (int t = 0; t < 2; ++t) {
    for (int h = 0; h < 2; ++h) {
      for (int d = 0; d < 4; ++d) {
        EXPECT_EQ(pool.k_head(1, h)[locs[t] * 4 + d], k[t * 8 + h * 4 + d]);
        EXPECT_EQ(pool.v_head(1, h)[locs[t] * 4 + d], v[t * 8 + h * 4 + d]);
      }
    }
  }
  EXPECT_EQ(pool.bytes(), 2 * 2 * 2 * 8 * 4 * 4);
}

}  // namespace
}  // namespace dpserve
