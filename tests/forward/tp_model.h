#pragma once
// Tensor-parallel test rig: tp ranks as threads (ThreadGroup), each with its own model instance,
// KV pool and thread pool over one shared WeightStore; run() executes a function on every rank at
// once and checks that all ranks agree.

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dpserve/common/thread_pool.h"
#include "dpserve/model/models/llama.h"
#include "forward_test_util.h"
#include "thread_group.h"

namespace dpserve::testing {

// The parsed JSON file at `path` (a test failure if it cannot be read).
inline nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << path;
  return nlohmann::json::parse(f);
}

// One model instance, KV pool and thread pool (`threads` threads) per rank, all on one
// WeightStore, with ThreadGroup ranks.
struct TpModel {
  TpModel(const std::string& dir, int tp, ModelOptions opt = {}, int threads = 1) {
    const ModelConfig config = ModelConfig::from_dir(dir);
    auto weights = std::make_shared<const WeightStore>(dir);
    groups = ThreadGroup::create(tp);
    opt.show_progress = false;
    opt.tp_size = tp;
    for (int r = 0; r < tp; ++r) {
      opt.tp_rank = r;
      opt.tp_group = tp > 1 ? groups[r].get() : nullptr;
      models.push_back(std::make_unique<LlamaForCausalLM>(config, weights, opt));
      kvs.push_back(models.back()->make_kv_pool(1024));
      pools.push_back(std::make_unique<ThreadPool>(threads));
    }
  }
  int tp() const { return static_cast<int>(models.size()); }
  int64_t vocab() const { return models[0]->config().vocab_size; }

  // Runs fn(rank, model, kv, pool) on every rank at once; returns rank 0's result after checking
  // that every rank returned the same (bit-identical) value.
  template <typename Fn>
  auto run(const Fn& fn) {
    using R = decltype(fn(*models[0], kvs[0], *pools[0]));
    std::vector<R> out(models.size());
    testing::run_ranks(groups, [&](int r) { out[r] = fn(*models[r], kvs[r], *pools[r]); });
    for (int r = 1; r < tp(); ++r) EXPECT_TRUE(out[r] == out[0]) << "rank " << r << " differs";
    return out[0];
  }

  std::vector<std::unique_ptr<ThreadGroup>> groups;
  std::vector<std::unique_ptr<LlamaForCausalLM>> models;
  std::vector<KVPool> kvs;
  std::vector<std::unique_ptr<ThreadPool>> pools;
};

// Every step's logits of a mixed workload on every rank: four prompts prefilled in one batch with
// a fifth sequence's first prompt chunk, then batches that mix their decodes with the fifth's
// remaining chunks, then decodes of all five. Tokens fed back are greedy from the step's logits.
inline std::vector<std::vector<float>> mixed_batches(TpModel& m) {
  const int64_t vocab = m.vocab();
  return m.run([&](LlamaForCausalLM& model, KVPool& kv, ThreadPool& pool) {
    const std::vector<std::vector<int32_t>> prompts = {
        {1, 403, 407, 261, 378}, {1, 410, 469}, {1, 403, 407, 261, 378, 432, 383, 286}, {1}};
    const std::vector<int32_t> late = {1, 286, 261, 376, 410, 469, 407, 403, 378};
    std::vector<Seq> seqs(5);
    std::vector<std::vector<float>> steps;
    std::vector<Work> work;
    for (size_t s = 0; s < prompts.size(); ++s) work.push_back({&seqs[s], prompts[s]});
    work.push_back({&seqs[4], {late.begin(), late.begin() + 3}});
    steps.push_back(step(model, kv, pool, work, false));
    for (int i = 0; i < 5; ++i) {
      const auto& lg = steps.back();
      work.clear();
      for (size_t s = 0; s < 4; ++s) {
        work.push_back({&seqs[s], {argmax_row(lg, static_cast<int64_t>(s), vocab)}});
      }
      if (i < 2) {  // the late sequence's prompt, in chunks of 3, mixed with decodes
        work.push_back({&seqs[4], {late.begin() + 3 * (i + 1), late.begin() + 3 * (i + 2)}});
      } else {
        work.push_back({&seqs[4], {argmax_row(lg, 4, vocab)}});
      }
      steps.push_back(step(model, kv, pool, work, false));
    }
    for (auto& s : seqs) kv.free(s.slots);
    return steps;
  });
}

}  // namespace dpserve::testing
