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

nlohmann::json qwen_moe_config(const std::string& arch) {
  auto j = base_config(arch);
  j["num_experts"] = 8;
  j["num_experts_per_tok"] = 2;
  j["moe_intermediate_size"] = 32;
  if (arch == "Qwen2MoeForCausalLM") j["shared_expert_intermediate_size"] = 64;
  return j;
}

TEST(ModelConfig, MoeFields) {
  auto mix = base_config("MixtralForCausalLM");
  mix["num_local_experts"] = 8;
  mix["num_experts_per_tok"] = 2;
  const auto m = ModelConfig::from_json(mix, "x");
  EXPECT_TRUE(m.is_moe());
  EXPECT_EQ(m.num_experts, 8);
  EXPECT_EQ(m.moe_intermediate_size, 128);  // Mixtral: intermediate_size is the expert size
  EXPECT_TRUE(m.norm_topk_prob);
  EXPECT_FALSE(m.has_dense_layers());
  EXPECT_FALSE(m.attention_bias);

  const auto q2 = ModelConfig::from_json(qwen_moe_config("Qwen2MoeForCausalLM"), "x");
  EXPECT_TRUE(q2.attention_bias);
  EXPECT_EQ(q2.shared_expert_intermediate_size, 64);
  EXPECT_FALSE(q2.norm_topk_prob);  // HF's default

  auto j = qwen_moe_config("Qwen3MoeForCausalLM");
  j["num_hidden_layers"] = 6;
  j["norm_topk_prob"] = true;
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  const auto q3 = ModelConfig::from_json(j, "x");
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_TRUE(q3.norm_topk_prob);
  EXPECT_EQ(q3.shared_expert_intermediate_size, 0);
  std::vector<bool> sparse;
  for (int64_t l = 0; l < 6; ++l) sparse.push_back(q3.is_moe_layer(l));
  EXPECT_EQ(sparse, (std::vector<bool>{false, true, false, false, false, true}));
  EXPECT_TRUE(q3.has_dense_layers());

  const auto dense = ModelConfig::from_json(base_config("Qwen3ForCausalLM"), "x");
  EXPECT_FALSE(dense.is_moe());
  EXPECT_FALSE(dense.is_moe_layer(0));
}

TEST(ModelConfig, MoeErrors) {
  auto j = base_config("MixtralForCausalLM");
  j["num_experts_per_tok"] = 2;
  EXPECT_THAT(error_of(j), AllOf(HasSubstr("cfg.json"), HasSubstr("'num_local_experts'")));
  j["num_local_experts"] = 2;
  j["num_experts_per_tok"] = 3;
  EXPECT_THAT(error_of(j),
              HasSubstr("num_experts_per_tok (3) must not exceed num_local_experts (2)"));
  j["num_experts_per_tok"] = 0;
  EXPECT_THAT(error_of(j), HasSubstr("'num_experts_per_tok' must be positive"));

  j = qwen_moe_config("Qwen3MoeForCausalLM");
  j.erase("moe_intermediate_size");
  EXPECT_THAT(error_of(j), HasSubstr("missing field 'moe_intermediate_size'"));
  j = qwen_moe_config("Qwen3MoeForCausalLM");
  j.erase("num_experts");
  EXPECT_THAT(error_of(j), HasSubstr("missing field 'num_experts'"));
  j = qwen_moe_config("Qwen3MoeForCausalLM");
  j["decoder_sparse_step"] = 0;
  EXPECT_THAT(error_of(j), HasSubstr("'decoder_sparse_step' must be at least 1"));
  j = qwen_moe_config("Qwen3MoeForCausalLM");
  j["mlp_only_layers"] = {0, 2};
  EXPECT_THAT(error_of(j), HasSubstr("mlp_only_layers entry 2 is not a layer index"));
  j["mlp_only_layers"] = "all";
  EXPECT_THAT(error_of(j), HasSubstr("'mlp_only_layers' must be a list"));
  j = qwen_moe_config("Qwen3MoeForCausalLM");
  j["norm_topk_prob"] = "yes";
  EXPECT_THAT(error_of(j), HasSubstr("'norm_topk_prob' must be true or false"));
  j = qwen_moe_config("Qwen2MoeForCausalLM");
  j.erase("shared_expert_intermediate_size");
  EXPECT_THAT(error_of(j), HasSubstr("missing field 'shared_expert_intermediate_size'"));
}

}  // namespace
}  // namespace dpserve
