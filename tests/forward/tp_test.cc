// Tensor parallelism in LlamaForCausalLM with threads as ranks (ThreadGroup): TP=2 and TP=4 give
// the TP=1 logits (within 1e-4) and the same greedy tokens, for prefill, decode and mixed batches,
// on stories260K (against its reference outputs too) and on the generated fixtures (Qwen3 q/k
// norm, Qwen2 biases, BF16 sharded, F16, GQA with fewer KV heads than ranks). Sizes that cannot be
// split are clear errors.

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"
#include "forward_test_util.h"
#include "thread_group.h"
#include "tp_model.h"

namespace dpserve {
namespace {

using testing::mixed_batches;
using testing::read_json;
using testing::Seq;
using testing::ThreadGroup;
using testing::TpModel;
using testing::Work;

const std::string kStories = std::string(DPSERVE_SHARED_DIR) + "/models/stories260K";
const std::string kFixtures = std::string(DPSERVE_SOURCE_DIR) + "/tests/fixtures/models";

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double max_err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    max_err = std::max(max_err, static_cast<double>(std::fabs(got[i] - want[i])));
  }
  EXPECT_LE(max_err, tol) << what;
}

// All-position logits of `prompt` fed in `chunks`.
std::vector<float> prompt_logits(TpModel& m, const std::vector<int32_t>& prompt,
                                 const std::vector<int>& chunks) {
  return m.run([&](LlamaForCausalLM& model, KVPool& kv, ThreadPool& pool) {
    Seq seq;
    auto lg = testing::prefill(model, kv, pool, seq, prompt, chunks);
    kv.free(seq.slots);
    return lg;
  });
}

std::vector<int32_t> greedy(TpModel& m, const std::vector<int32_t>& prompt, int max_new,
                            const std::vector<int32_t>& stop, const std::vector<int>& chunks) {
  return m.run([&](LlamaForCausalLM& model, KVPool& kv, ThreadPool& pool) {
    return testing::greedy(model, kv, pool, prompt, max_new, stop, chunks);
  });
}

// ---------------------------------------------------------------------------------------------
// stories260K: 8 heads, 4 KV heads, intermediate 172 (both divisible by 2 and 4).

class Stories260KTp : public ::testing::TestWithParam<int> {};

TEST_P(Stories260KTp, PromptLogitsMatchTp1AndReference) {
  const auto ref = read_json(kStories + "/reference_outputs.json");
  const auto prompt = ref["prompt_ids_with_bos"].get<std::vector<int32_t>>();
  TpModel one(kStories, 1);
  TpModel tp(kStories, GetParam());
  EXPECT_EQ(tp.models[0]->num_local_q_heads(), 8 / GetParam());
  EXPECT_EQ(tp.models[0]->num_local_kv_heads(), 4 / GetParam());
  EXPECT_EQ(tp.kvs[0].num_kv_heads(), 4 / GetParam());
  const int64_t vocab = tp.vocab();
  for (const std::vector<int>& chunks : {std::vector<int>{0}, std::vector<int>{2, 3}}) {
    const auto want = prompt_logits(one, prompt, chunks);
    const auto got = prompt_logits(tp, prompt, chunks);
    expect_close(got, want, 1e-4, "prompt logits vs TP=1");
    for (const auto& pos : ref["prompt_logits_top5"]) {
      const int64_t p = pos["position"].get<int64_t>();
      const auto ids = pos["top5_ids"].get<std::vector<int32_t>>();
      const auto vals = pos["top5_logits"].get<std::vector<double>>();
      for (int i = 0; i < 5; ++i) {
        EXPECT_NEAR(got[p * vocab + ids[i]], vals[i], 1e-4) << "position " << p << " id " << ids[i];
      }
    }
  }
}

TEST_P(Stories260KTp, GreedyMatchesReference) {
  const auto ref = read_json(kStories + "/reference_outputs.json");
  TpModel tp(kStories, GetParam());
  const auto prompt = ref["prompt_ids_with_bos"].get<std::vector<int32_t>>();
  EXPECT_EQ(greedy(tp, prompt, ref["greedy"]["max_new_tokens"].get<int>(), {1, 2}, {0}),
            ref["greedy"]["ids"].get<std::vector<int32_t>>());
  // 256 decode steps from BOS alone.
  EXPECT_EQ(greedy(tp, {1}, 256, {1, 2}, {0}),
            ref["greedy_from_bos_only"]["ids"].get<std::vector<int32_t>>());
  for (int r = 0; r < tp.tp(); ++r) EXPECT_EQ(tp.kvs[r].available(), tp.kvs[r].size());
}

TEST_P(Stories260KTp, MixedBatchesMatchTp1) {
  TpModel one(kStories, 1);
  TpModel tp(kStories, GetParam());
  const auto want = mixed_batches(one);
  const auto got = mixed_batches(tp);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    expect_close(got[i], want[i], 1e-4, "mixed step " + std::to_string(i));
  }
}

// The other vocab layouts: split embedding (+ all-reduce), replicated LM head; native attention.
TEST_P(Stories260KTp, VocabLayoutsAndNativeBackend) {
  const auto ref = read_json(kStories + "/reference_outputs.json");
  const auto prompt = ref["prompt_ids_with_bos"].get<std::vector<int32_t>>();
  TpModel one(kStories, 1);
  const auto want = prompt_logits(one, prompt, {0});
  for (int variant = 0; variant < 3; ++variant) {
    ModelOptions opt;
    opt.vocab_parallel_embedding = variant != 1;
    opt.vocab_parallel_lm_head = variant != 0;
    opt.attention_backend = variant == 2 ? "native" : "flash";
    TpModel tp(kStories, GetParam(), opt);
    expect_close(prompt_logits(tp, prompt, {0}), want, 1e-4, "variant " + std::to_string(variant));
    EXPECT_EQ(greedy(tp, prompt, 16, {1, 2}, {1}),
              std::vector<int32_t>(ref["greedy"]["ids"].begin(), ref["greedy"]["ids"].begin() + 16))
        << "variant " << variant;
  }
}

INSTANTIATE_TEST_SUITE_P(Tp, Stories260KTp, ::testing::Values(2, 4),
                         [](const auto& info) { return "tp" + std::to_string(info.param); });

// ---------------------------------------------------------------------------------------------
// Generated fixtures (tests/fixtures/models): logits vs TP=1 and vs the float64 reference, greedy
// tokens vs the reference.

struct FixtureTp {
  std::string name;
  int tp;
  int64_t local_kv_heads;  // expected
};

void PrintTo(const FixtureTp& f, std::ostream* os) { *os << f.name << " tp=" << f.tp; }

class FixturesTp : public ::testing::TestWithParam<FixtureTp> {};

TEST_P(FixturesTp, LogitsAndGreedy) {
  const std::string dir = kFixtures + "/" + GetParam().name;
  if (!std::filesystem::exists(dir + "/reference.json")) GTEST_SKIP() << dir << " not generated";
  const auto ref = read_json(dir + "/reference.json");
  TpModel one(dir, 1);
  TpModel tp(dir, GetParam().tp);
  EXPECT_EQ(tp.models[0]->num_local_kv_heads(), GetParam().local_kv_heads);
  const auto prompt = ref["prompt_ids"].get<std::vector<int32_t>>();
  const int64_t vocab = tp.vocab();
  for (const std::vector<int>& chunks : {std::vector<int>{0}, std::vector<int>{1, 3}}) {
    const auto got = prompt_logits(tp, prompt, chunks);
    expect_close(got, prompt_logits(one, prompt, chunks), 1e-4, "logits vs TP=1");
    const auto positions = ref["logits_positions"].get<std::vector<int64_t>>();
    const auto dtypes = ref["weights_dtype"].get<std::vector<std::string>>();
    const double tol = dtypes.size() == 1 && dtypes[0] == "F32" ? 1e-4 : 2e-4;
    for (size_t i = 0; i < positions.size(); ++i) {
      const auto row = ref["logits"][i].get<std::vector<double>>();
      for (int64_t j = 0; j < vocab; ++j) {
        ASSERT_LE(std::fabs(got[positions[i] * vocab + j] - row[j]), tol * (1 + std::fabs(row[j])))
            << "position " << positions[i] << " id " << j;
      }
    }
    const auto& g = ref["greedy"];
    std::vector<int32_t> stop;
    if (g["stop_on_eos"].get<bool>()) {
      for (int64_t e : tp.models[0]->config().eos_token_ids)
        stop.push_back(static_cast<int32_t>(e));
    }
    EXPECT_EQ(greedy(tp, prompt, g["max_new_tokens"].get<int>(), stop, chunks),
              g["ids"].get<std::vector<int32_t>>());
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, FixturesTp,
    ::testing::Values(FixtureTp{"tiny-qwen3", 2, 1},        // q/k norm, head_dim != hidden/heads
                      FixtureTp{"tiny-qwen3", 4, 1},        // 2 KV heads over 4 ranks: replicated
                      FixtureTp{"tiny-qwen2", 2, 1},        // q/k/v bias, untied head
                      FixtureTp{"tiny-qwen2", 4, 1},        // replicated KV heads with biases
                      FixtureTp{"tiny-llama3-rope", 2, 1},  // 1 KV head over 2 ranks
                      FixtureTp{"tiny-mistral-bf16-sharded", 4, 1},  // BF16 slices, 3 files
                      FixtureTp{"tiny-llama-f16", 2, 1}),            // F16 rows converted
    [](const auto& info) {
      std::string s = info.param.name + "_tp" + std::to_string(info.param.tp);
      for (char& ch : s) {
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      }
      return s;
    });

// ---------------------------------------------------------------------------------------------
// The vocab-parallel layers alone, with a vocabulary that does not split evenly (10 over 3 ranks:
// 4, 3, 3 rows).

TEST(VocabParallel, UnevenSplitEmbeddingAndLmHead) {
  const int64_t vocab = 10, dim = 3, rows = 4;
  std::vector<float> table(vocab * dim);
  for (size_t i = 0; i < table.size(); ++i) table[i] = 0.25f * static_cast<float>(i % 7) - 0.5f;
  std::vector<float> x(rows * dim);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.1f * static_cast<float>(i) - 0.3f;
  const std::vector<int32_t> ids = {9, 0, 4, 3, 7};
  auto groups = ThreadGroup::create(3);
  std::vector<std::vector<float>> emb(3), logits(3);
  testing::run_ranks(groups, [&](int r) {
    const ShardRange part = shard_range(vocab, r, 3);
    const kernels::WeightMatrix shard{DType::F32, part.size(), dim,
                                      table.data() + part.begin * dim};
    VocabParallelEmbedding embed(shard, part, vocab, groups[r].get());
    emb[r].resize(ids.size() * dim);
    embed.forward(ids.data(), static_cast<int64_t>(ids.size()), emb[r].data());
    ParallelLMHead head(shard, vocab, groups[r].get());
    ThreadPool pool(1);
    logits[r].resize(rows * vocab);
    head.forward(x.data(), rows, logits[r].data(), pool);
    head.forward(x.data(), 1, logits[r].data(), pool);  // the single-row path, over row 0
  });
  for (int r = 0; r < 3; ++r) {
    for (size_t t = 0; t < ids.size(); ++t) {
      for (int64_t i = 0; i < dim; ++i) {
        EXPECT_EQ(emb[r][t * dim + i], table[ids[t] * dim + i]) << "rank " << r;
      }
    }
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t v = 0; v < vocab; ++v) {
        double want = 0;
        for (int64_t d = 0; d < dim; ++d) want += x[i * dim + d] * table[v * dim + d];
        EXPECT_NEAR(logits[r][i * vocab + v], want, 1e-6) << "rank " << r << " row " << i;
      }
    }
  }
  // An id outside the vocabulary is an error on every rank, before any collective.
  EXPECT_THROW(testing::run_ranks(groups,
                                  [&](int r) {
                                    const ShardRange part = shard_range(vocab, r, 3);
                                    VocabParallelEmbedding embed({DType::F32, part.size(), dim,
                                                                  table.data() + part.begin * dim},
                                                                 part, vocab, groups[r].get());
                                    const int32_t bad = 10;
                                    float out[3];
                                    embed.forward(&bad, 1, out);
                                  }),
               Error);
}

// ---------------------------------------------------------------------------------------------
// Sizes that cannot be split.

std::string tp_error(const std::string& dir, int tp, ProcessGroup* group = nullptr, int rank = 0) {
  ModelOptions opt;
  opt.show_progress = false;
  opt.tp_size = tp;
  opt.tp_rank = rank;
  opt.tp_group = group;
  try {
    load_model(dir, opt);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(TpErrors, HeadsNotDivisible) {
  const std::string err = tp_error(kStories, 3);
  EXPECT_TRUE(contains(err, "stories260K") && contains(err, "num_attention_heads (8)") &&
              contains(err, "tp_size (3)"))
      << err;
  const std::string err2 = tp_error(kFixtures + "/tiny-llama3-rope", 4);
  EXPECT_TRUE(contains(err2, "tiny-llama3-rope") && contains(err2, "num_attention_heads (2)") &&
              contains(err2, "tp_size (4)"))
      << err2;
}

TEST(TpErrors, IntermediateNotDivisible) {
  // 8 heads and 4 KV heads split over 8 ranks, but 172 does not.
  const std::string err = tp_error(kStories, 8);
  EXPECT_TRUE(contains(err, "stories260K") && contains(err, "intermediate_size (172)") &&
              contains(err, "tp_size (8)"))
      << err;
}

TEST(TpErrors, KvHeadsNotSplittable) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.num_attention_heads = 24;
  c.num_key_value_heads = 6;
  c.intermediate_size = 96;
  EXPECT_NO_THROW(check_tensor_parallel(c, 2, "m"));
  EXPECT_NO_THROW(check_tensor_parallel(c, 12, "m"));  // each KV head on 2 of the 12 ranks
  try {
    check_tensor_parallel(c, 4, "my-model");
    ADD_FAILURE() << "6 KV heads over 4 ranks accepted";
  } catch (const Error& e) {
    const std::string err = e.what();
    EXPECT_TRUE(contains(err, "my-model") && contains(err, "num_key_value_heads (6)") &&
                contains(err, "tp_size (4)"))
        << err;
  }
}

TEST(TpErrors, GroupRequiredAndMatching) {
  EXPECT_TRUE(contains(tp_error(kStories, 2), "process group")) << tp_error(kStories, 2);
  auto groups = ThreadGroup::create(4);
  const std::string err = tp_error(kStories, 2, groups[1].get(), 1);
  EXPECT_TRUE(contains(err, "rank 1 of 4") && contains(err, "tp_size 2")) << err;
  EXPECT_TRUE(contains(tp_error(kStories, 2, groups[1].get(), 2), "tp_rank 2"));
}

}  // namespace
}  // namespace dpserve
