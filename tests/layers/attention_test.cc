// The flash attention backend against the native reference on random batches: several sequences
// with different prefix/extend lengths, GQA ratios and head dims, slots scattered in the pool.

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <random>

#include <gtest/gtest.h>

#include "dpserve/common/errors.h"
#include "dpserve/layers/attention/attention_backend.h"

namespace dpserve {
namespace {

struct SeqSpec {
  int prefix;
  int extend;
};

struct Case {
  int q_heads;
  int kv_heads;
  int head_dim;
  std::vector<SeqSpec> seqs;
};

// Builds a batch over `seqs`, fills the pool's K/V for all their positions with random values
// (slots shuffled across the pool), and returns random q.
std::vector<float> make_batch(const Case& c, KVPool& pool, std::mt19937& rng, ForwardBatch& fb) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  int total = 0;
  for (const SeqSpec& s : c.seqs) total += s.prefix + s.extend;
  std::vector<int32_t> slots(pool.size());
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  fb = ForwardBatch{};
  fb.batch_size = static_cast<int>(c.seqs.size());
  fb.kv_indptr.push_back(0);
  int next_slot = 0;
  for (const SeqSpec& s : c.seqs) {
    for (int p = 0; p < s.prefix + s.extend; ++p) {
      const int32_t slot = slots[next_slot++];
      fb.kv_indices.push_back(slot);
      if (p >= s.prefix) {
        fb.input_ids.push_back(0);
        fb.positions.push_back(p);
        fb.out_cache_loc.push_back(slot);
      }
    }
    fb.seq_lens.push_back(s.prefix + s.extend);
    fb.extend_prefix_lens.push_back(s.prefix);
    fb.extend_seq_lens.push_back(s.extend);
    fb.kv_indptr.push_back(static_cast<int32_t>(fb.kv_indices.size()));
  }
  EXPECT_LE(total, pool.size());
  const int64_t hd = c.head_dim;
  for (int64_t layer = 0; layer < pool.num_layers(); ++layer) {
    for (int64_t h = 0; h < pool.num_kv_heads(); ++h) {
      for (int32_t slot : fb.kv_indices) {
        for (int64_t d = 0; d < hd; ++d) {
          pool.k_head(layer, h)[slot * hd + d] = nd(rng);
          pool.v_head(layer, h)[slot * hd + d] = nd(rng);
        }
      }
    }
  }
  std::vector<float> q(fb.num_tokens() * c.q_heads * hd);
  for (float& x : q) x = nd(rng) * 1.5f;
  return q;
}

TEST(Attention, FlashMatchesNative) {
  const std::vector<std::vector<SeqSpec>> batches = {
      {{0, 1}},
      {{0, 7}},
      {{0, 200}},
      {{5, 1}, {100, 1}, {0, 1}, {63, 1}, {64, 1}, {129, 1}},  // decode
      {{0, 5}, {17, 3}, {64, 70}, {1, 1}, {130, 33}},          // mixed extend
      {{300, 2}, {0, 65}, {31, 97}},
  };
  const std::vector<std::array<int, 3>> shapes = {
      {8, 4, 8}, {4, 4, 64}, {8, 2, 64}, {32, 4, 64}, {16, 2, 128}, {6, 3, 128}, {4, 1, 12},
  };
  std::mt19937 rng(1234);
  ThreadPool pool(3);
  for (const auto& sh : shapes) {
    for (const auto& seqs : batches) {
      Case c{sh[0], sh[1], sh[2], seqs};
      KVPool kv(1024, 2, c.kv_heads, c.head_dim);
      ForwardBatch fb;
      const std::vector<float> q = make_batch(c, kv, rng, fb);
      AttentionShape shape{c.q_heads, c.kv_heads, c.head_dim,
                           1.0f / std::sqrt(static_cast<float>(c.head_dim))};
      auto native = make_attention_backend("native", shape);
      auto flash = make_attention_backend("flash", shape);
      EXPECT_EQ(native->name(), "native");
      EXPECT_EQ(flash->name(), "flash");
      for (int64_t layer = 0; layer < 2; ++layer) {
        std::vector<float> a(q.size(), NAN), b(q.size(), NAN);
        native->forward(q.data(), fb, kv, layer, a.data(), pool);
        flash->forward(q.data(), fb, kv, layer, b.data(), pool);
        double max_err = 0.0;
        for (size_t i = 0; i < a.size(); ++i) {
          ASSERT_TRUE(std::isfinite(b[i])) << i;
          max_err = std::max(max_err, static_cast<double>(std::fabs(a[i] - b[i])));
        }
        EXPECT_LT(max_err, 1e-5) << "q_heads=" << c.q_heads << " kv_heads=" << c.kv_heads
                                 << " head_dim=" << c.head_dim << " seqs=" << seqs.size();
      }
    }
  }
}

TEST(Attention, SingleTokenAttendsToItself) {
  // With one visible position the output is exactly that position's V.
  AttentionShape shape{4, 2, 8, 0.5f};
  KVPool kv(16, 1, 2, 8);
  ForwardBatch fb;
  fb.batch_size = 1;
  fb.input_ids = {0};
  fb.positions = {0};
  fb.out_cache_loc = {9};
  fb.seq_lens = {1};
  fb.extend_prefix_lens = {0};
  fb.extend_seq_lens = {1};
  fb.kv_indptr = {0, 1};
  fb.kv_indices = {9};
  for (int h = 0; h < 2; ++h) {
    for (int d = 0; d < 8; ++d) {
      kv.k_head(0, h)[9 * 8 + d] = 1.0f;
      kv.v_head(0, h)[9 * 8 + d] = static_cast<float>(h * 10 + d);
    }
  }
  std::vector<float> q(32, 0.3f), out(32);
  ThreadPool pool(2);
  for (const char* name : {"native", "flash"}) {
    make_attention_backend(name, shape)->forward(q.data(), fb, kv, 0, out.data(), pool);
    for (int h = 0; h < 4; ++h) {
      for (int d = 0; d < 8; ++d) EXPECT_FLOAT_EQ(out[h * 8 + d], (h / 2) * 10 + d) << name;
    }
  }
}

TEST(Attention, UnknownBackendIsAnError) {
  EXPECT_THROW(make_attention_backend("paged", AttentionShape{2, 1, 8, 1.0f}), Error);
}

}  // namespace
}  // namespace dpserve
