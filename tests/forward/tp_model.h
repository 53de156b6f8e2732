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

}  // namespace dpserve::testing
