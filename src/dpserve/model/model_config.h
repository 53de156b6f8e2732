#pragma once
// ModelConfig: the parts of a Hugging Face config.json that the decoder models need.

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dpserve {

enum class RopeScalingType { kNone, kLinear, kLlama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;                              // linear and llama3
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  std::string model_type;    // e.g. "llama"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // explicit in Qwen3/Mistral configs, else hidden_size / heads
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2)
  bool qk_norm = false;         // per-head RMSNorm on q and k before RoPE (Qwen3)
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype;  // as written in config.json, informational

  // Mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE); num_experts == 0 for dense models.
  int64_t num_experts = 0;  // routed experts per MoE layer (num_local_experts / num_experts)
  int64_t num_experts_per_tok = 0;              // experts each token is routed to (top-k)
  int64_t moe_intermediate_size = 0;            // one routed expert's hidden features
  int64_t shared_expert_intermediate_size = 0;  // Qwen2-MoE's shared expert; 0 = none
  bool norm_topk_prob = false;                  // renormalise the top-k router weights to sum to 1
  int64_t decoder_sparse_step = 1;       // layer l is MoE if (l + 1) % step == 0 (and not MLP-only)
  std::vector<int64_t> mlp_only_layers;  // layers that keep a dense MLP (intermediate_size)

  // True for a mixture-of-experts architecture.
  bool is_moe() const { return num_experts > 0; }
  // True if decoder layer `layer` has a sparse MoE block instead of a dense MLP (HF's rule).
  bool is_moe_layer(int64_t layer) const;
  // True if at least one layer has a dense MLP of intermediate_size.
  bool has_dense_layers() const;

  // Parses and validates config.json in `model_dir`; throws dpserve::Error naming the file and
  // the field on anything missing, malformed or unsupported.
  static ModelConfig from_dir(const std::string& model_dir);
  // Same from an already-parsed object; `source` names the file in error messages.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
};

}  // namespace dpserve
