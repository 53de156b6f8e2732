#include "dpserve/model/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"

namespace dpserve {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

nlohmann::json base_config(const std::string& arch) {
  return {{"architectures", {arch}},  {"vocab_size", 100},
          {"hidden_size", 64},        {"intermediate_size", 128},
          {"num_hidden_layers", 2},   {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"max_position_embeddings", 256}};
}

std::string error_of(const nlohmann::json& j) {
  try {
    ModelConfig::from_json(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a dpserve::Error";
  return "";
}

TEST(ModelConfig, Stories260K) {
  ModelConfig c = ModelConfig::from_dir(DPSERVE_SHARED_DIR "/models/stories260K");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kNone);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2}));
}

TEST(ModelConfig, ArchitectureFeatures) {
  auto q2 = ModelConfig::from_json(base_config("Qwen2ForCausalLM"), "x");
  EXPECT_TRUE(q2.attention_bias);
  EXPECT_FALSE(q2.qk_norm);
  auto j = base_config("Qwen3ForCausalLM");
  j["head_dim"] = 32;
  auto q3 = ModelConfig::from_json(j, "x");
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_EQ(q3.head_dim, 32);  // explicit, not hidden / heads = 16
  auto m = ModelConfig::from_json(base_config("MistralForCausalLM"), "x");
  EXPECT_EQ(m.head_dim, 16);
  EXPECT_FALSE(m.attention_bias);
}

TEST(ModelConfig, RopeScaling) {
  auto j = base_config("LlamaForCausalLM");
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  auto c = ModelConfig::from_json(j, "x");
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(ModelConfig::from_json(j, "x").rope_scaling.type, RopeScalingType::kLinear);
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 2.0}};
  EXPECT_THAT(error_of(j),
              AllOf(HasSubstr("cfg.json"), HasSubstr("unsupported rope_scaling type 'yarn'")));
}

TEST(ModelConfig, Errors) {
  EXPECT_THAT(
      error_of(base_config("GPT2LMHeadModel")),
      AllOf(HasSubstr("cfg.json"), HasSubstr("unsupported architecture 'GPT2LMHeadModel'")));
  auto j = base_config("LlamaForCausalLM");
  j.erase("hidden_size");
  EXPECT_THAT(error_of(j), HasSubstr("missing field 'hidden_size'"));
  j = base_config("LlamaForCausalLM");
  j["num_key_value_heads"] = 3;
  EXPECT_THAT(error_of(j), HasSubstr("multiple of num_key_value_heads"));
  j = base_config("LlamaForCausalLM");
  j["vocab_size"] = "big";
  EXPECT_THAT(error_of(j), HasSubstr("'vocab_size' must be an integer"));
  try {
    ModelConfig::from_dir("/nonexistent_model_dir");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("/nonexistent_model_dir/config.json"));
  }
}

}  // namespace
}  // namespace dpserve
