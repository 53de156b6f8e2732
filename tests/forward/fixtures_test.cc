// Tiny checkpoints of every supported architecture variant (Qwen2 bias, Qwen3 q/k norm, llama3
// and linear rope scaling, sharded BF16 Mistral, F16 Llama) against float64 numpy references
// (tests/fixtures/models/<name>/reference.json): all-position logits and greedy tokens, with both
// attention backends and with the prompt fed whole and in chunks through the KV cache.

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "forward_test_util.h"

namespace dpserve {
namespace {

using testing::Seq;

const std::string kFixtures = std::string(DPSERVE_SOURCE_DIR) + "/tests/fixtures/models";

struct FixtureCase {
  std::string name;     // fixture directory
  std::string backend;  // attention backend
  std::vector<int> chunks;
};

std::string case_name(const ::testing::TestParamInfo<FixtureCase>& info) {
  std::string s = info.param.name;
  s += '_';
  s += info.param.backend;
  for (int c : info.param.chunks) {
    s += '_';
    s += c == 0 ? std::string("whole") : std::to_string(c);
  }
  for (char& ch : s) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return s;
}

class Fixture : public ::testing::TestWithParam<FixtureCase> {
 protected:
  void SetUp() override {
    dir_ = kFixtures + "/" + GetParam().name;
    if (!std::filesystem::exists(dir_ + "/reference.json")) {
      GTEST_SKIP() << "fixture " << dir_ << " not generated";
    }
    std::ifstream f(dir_ + "/reference.json");
    ref_ = nlohmann::json::parse(f);
    ModelOptions opt;
    opt.attention_backend = GetParam().backend;
    opt.show_progress = false;
    model_ = load_model(dir_, opt);
    // F32 weights: only f32-vs-f64 arithmetic differs from the reference. BF16/F16: the reference
    // reads the same rounded weights, so the gap stays small, but allow more for accumulation.
    const auto dtypes = ref_["weights_dtype"].get<std::vector<std::string>>();
    const bool f32 = dtypes.size() == 1 && dtypes[0] == "F32";
    tol_ = f32 ? 1e-4 : 2e-4;
  }

  std::string dir_;
  nlohmann::json ref_;
  std::unique_ptr<LlamaForCausalLM> model_;
  double tol_ = 1e-4;
};

TEST_P(Fixture, AllPositionLogits) {
  KVPool kv = model_->make_kv_pool(512);
  ThreadPool pool(2);
  const auto prompt = ref_["prompt_ids"].get<std::vector<int32_t>>();
  Seq seq;
  const auto lg = testing::prefill(*model_, kv, pool, seq, prompt, GetParam().chunks);
  const int64_t vocab = model_->config().vocab_size;
  ASSERT_EQ(lg.size(), prompt.size() * vocab);
  const auto positions = ref_["logits_positions"].get<std::vector<int64_t>>();
  const auto& logits = ref_["logits"];
  ASSERT_EQ(positions.size(), logits.size());
  double max_err = 0.0;
  for (size_t i = 0; i < positions.size(); ++i) {
    const auto row = logits[i].get<std::vector<double>>();
    ASSERT_EQ(static_cast<int64_t>(row.size()), vocab);
    for (int64_t j = 0; j < vocab; ++j) {
      const double got = lg[positions[i] * vocab + j];
      const double err = std::fabs(got - row[j]);
      max_err = std::max(max_err, err);
      ASSERT_LE(err, tol_ * (1.0 + std::fabs(row[j])))
          << "position " << positions[i] << " id " << j << " ref " << row[j] << " got " << got;
    }
  }
  RecordProperty("max_abs_err", std::to_string(max_err));
}

TEST_P(Fixture, GreedyTokens) {
  KVPool kv = model_->make_kv_pool(512);
  ThreadPool pool(2);
  const auto prompt = ref_["prompt_ids"].get<std::vector<int32_t>>();
  const auto& g = ref_["greedy"];
  const auto expect = g["ids"].get<std::vector<int32_t>>();
  std::vector<int32_t> stop;
  if (g["stop_on_eos"].get<bool>()) {
    for (int64_t e : model_->config().eos_token_ids) stop.push_back(static_cast<int32_t>(e));
  }
  const auto got = testing::greedy(*model_, kv, pool, prompt, g["max_new_tokens"].get<int>(), stop,
                                   GetParam().chunks);
  EXPECT_EQ(got, expect);
}

std::vector<FixtureCase> all_cases() {
  const std::vector<std::string> names = {"tiny-qwen2",
                                          "tiny-qwen3",
                                          "tiny-llama3-rope",
                                          "tiny-llama-linear-rope",
                                          "tiny-mistral-bf16-sharded",
                                          "tiny-llama-f16"};
  std::vector<FixtureCase> out;
  for (const auto& n : names) {
    out.push_back({n, "flash", {0}});
    out.push_back({n, "native", {0}});
    out.push_back({n, "flash", {1, 3}});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Models, Fixture, ::testing::ValuesIn(all_cases()), case_name);

}  // namespace
}  // namespace dpserve
