#include "dpserve/model/model_config.h"

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"

namespace dpserve {

namespace {

int64_t require_int(const nlohmann::json& j, const char* key, const std::string& source) {
  if (!j.contains(key)) throw_error("{}: missing field '{}'", source, key);
  if (!j[key].is_number_integer()) throw_error("{}: field '{}' must be an integer", source, key);
  const int64_t v = j[key].get<int64_t>();
  if (v <= 0) throw_error("{}: field '{}' must be positive, got {}", source, key, v);
  return v;
}

double get_number(const nlohmann::json& j, const char* key, double dflt,
                  const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_number()) throw_error("{}: field '{}' must be a number", source, key);
  return j[key].get<double>();
}

bool get_bool(const nlohmann::json& j, const char* key, bool dflt, const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_boolean()) throw_error("{}: field '{}' must be true or false", source, key);
  return j[key].get<bool>();
}

int64_t get_int(const nlohmann::json& j, const char* key, int64_t dflt, const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_number_integer()) throw_error("{}: field '{}' must be an integer", source, key);
  return j[key].get<int64_t>();
}

// The MoE fields of Mixtral / Qwen2-MoE / Qwen3-MoE configs (dense sizes already parsed into c).
void parse_moe(const nlohmann::json& j, const std::string& source, ModelConfig& c) {
  const bool mixtral = c.architecture == "MixtralForCausalLM";
  const char* experts_key = mixtral ? "num_local_experts" : "num_experts";
  c.num_experts = require_int(j, experts_key, source);
  c.num_experts_per_tok = require_int(j, "num_experts_per_tok", source);
  if (c.num_experts_per_tok > c.num_experts) {
    throw_error("{}: num_experts_per_tok ({}) must not exceed {} ({})", source,
                c.num_experts_per_tok, experts_key, c.num_experts);
  }
  if (mixtral) {
    // Every Mixtral layer is sparse; an expert has intermediate_size features and the top-k
    // weights are always renormalised.
    c.moe_intermediate_size = c.intermediate_size;
    c.norm_topk_prob = true;
    return;
  }
  c.moe_intermediate_size = require_int(j, "moe_intermediate_size", source);
  c.norm_topk_prob = get_bool(j, "norm_topk_prob", false, source);
  c.decoder_sparse_step = get_int(j, "decoder_sparse_step", 1, source);
  if (c.decoder_sparse_step < 1) {
    throw_error("{}: field 'decoder_sparse_step' must be at least 1, got {}", source,
                c.decoder_sparse_step);
  }
  if (j.contains("mlp_only_layers") && !j["mlp_only_layers"].is_null()) {
    const auto& m = j["mlp_only_layers"];
    if (!m.is_array())
      throw_error("{}: field 'mlp_only_layers' must be a list of layer indices", source);
    for (const auto& v : m) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 ||
          v.get<int64_t>() >= c.num_hidden_layers) {
        throw_error(
            "{}: mlp_only_layers entry {} is not a layer index in [0, num_hidden_layers {})",
            source, v.dump(), c.num_hidden_layers);
      }
      c.mlp_only_layers.push_back(v.get<int64_t>());
    }
  }
  if (c.architecture == "Qwen2MoeForCausalLM") {
    c.shared_expert_intermediate_size = require_int(j, "shared_expert_intermediate_size", source);
  }
}

RopeScaling parse_rope_scaling(const nlohmann::json& j, const std::string& source) {
  RopeScaling rs;
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return rs;
  const auto& r = j["rope_scaling"];
  if (!r.is_object()) throw_error("{}: field 'rope_scaling' must be an object or null", source);
  std::string type;
  if (r.contains("rope_type")) {
    type = r["rope_type"].get<std::string>();
  } else if (r.contains("type")) {
    type = r["type"].get<std::string>();
  } else {
    throw_error("{}: rope_scaling has no 'rope_type'", source);
  }
  if (type == "default") return rs;
  if (type == "linear") {
    rs.type = RopeScalingType::kLinear;
  } else if (type == "llama3") {
    rs.type = RopeScalingType::kLlama3;
    rs.low_freq_factor = get_number(r, "low_freq_factor", 1.0, source);
    rs.high_freq_factor = get_number(r, "high_freq_factor", 4.0, source);
    if (!r.contains("original_max_position_embeddings")) {
      throw_error("{}: rope_scaling llama3 needs 'original_max_position_embeddings'", source);
    }
    rs.original_max_position_embeddings = r["original_max_position_embeddings"].get<int64_t>();
  } else {
    throw_error("{}: unsupported rope_scaling type '{}' (supported: linear, llama3)", source, type);
  }
  rs.factor = get_number(r, "factor", 1.0, source);
  if (rs.factor <= 0) throw_error("{}: rope_scaling.factor must be positive", source);
  return rs;
}

}  // namespace

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw_error("{}: expected a JSON object", source);
  ModelConfig c;
  if (!j.contains("architectures") || !j["architectures"].is_array() ||
      j["architectures"].empty() || !j["architectures"][0].is_string()) {
    throw_error("{}: missing 'architectures' list", source);
  }
  c.architecture = j["architectures"][0].get<std::string>();
  c.model_type = j.value("model_type", "");
  if (c.architecture == "LlamaForCausalLM" || c.architecture == "MistralForCausalLM") {
    c.attention_bias = get_bool(j, "attention_bias", false, source);
  } else if (c.architecture == "Qwen2ForCausalLM") {
    c.attention_bias = true;
  } else if (c.architecture == "Qwen3ForCausalLM" || c.architecture == "Qwen3MoeForCausalLM") {
    c.attention_bias = get_bool(j, "attention_bias", false, source);
    c.qk_norm = true;
  } else if (c.architecture == "MixtralForCausalLM") {
    c.attention_bias = false;
  } else if (c.architecture == "Qwen2MoeForCausalLM") {
    c.attention_bias = true;  // q/k/v biases, as Qwen2
  } else {
    throw_error(
        "{}: unsupported architecture '{}' (supported: LlamaForCausalLM, MistralForCausalLM, "
        "Qwen2ForCausalLM, Qwen3ForCausalLM, MixtralForCausalLM, Qwen2MoeForCausalLM, "
        "Qwen3MoeForCausalLM)",
        source, c.architecture);
  }
  c.vocab_size = require_int(j, "vocab_size", source);
  c.hidden_size = require_int(j, "hidden_size", source);
  c.intermediate_size = require_int(j, "intermediate_size", source);
  c.num_hidden_layers = require_int(j, "num_hidden_layers", source);
  c.num_attention_heads = require_int(j, "num_attention_heads", source);
  c.num_key_value_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                              ? require_int(j, "num_key_value_heads", source)
                              : c.num_attention_heads;
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    throw_error("{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                source, c.num_attention_heads, c.num_key_value_heads);
  }
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    c.head_dim = require_int(j, "head_dim", source);
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      throw_error("{}: hidden_size ({}) is not a multiple of num_attention_heads ({})", source,
                  c.hidden_size, c.num_attention_heads);
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0)
    throw_error("{}: head_dim ({}) must be even for RoPE", source, c.head_dim);
  c.max_position_embeddings = j.contains("max_position_embeddings")
                                  ? require_int(j, "max_position_embeddings", source)
                                  : 2048;
  c.rms_norm_eps = get_number(j, "rms_norm_eps", 1e-6, source);
  c.rope_theta = get_number(j, "rope_theta", 10000.0, source);
  c.rope_scaling = parse_rope_scaling(j, source);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, source);
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) {
    c.bos_token_id = j["bos_token_id"].get<int64_t>();
  }
  if (j.contains("eos_token_id")) {
    const auto& e = j["eos_token_id"];
    if (e.is_number_integer()) {
      c.eos_token_ids.push_back(e.get<int64_t>());
    } else if (e.is_array()) {
      for (const auto& v : e) {
        if (v.is_number_integer()) c.eos_token_ids.push_back(v.get<int64_t>());
      }
    }
  }
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) {
    c.torch_dtype = j["torch_dtype"].get<std::string>();
  }
  if (c.architecture == "MixtralForCausalLM" || c.architecture == "Qwen2MoeForCausalLM" ||
      c.architecture == "Qwen3MoeForCausalLM") {
    parse_moe(j, source, c);
  }
  return c;
}

bool ModelConfig::is_moe_layer(int64_t layer) const {
  if (num_experts <= 0) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) {
    return false;
  }
  return (layer + 1) % decoder_sparse_step == 0;
}

bool ModelConfig::has_dense_layers() const {
  for (int64_t l = 0; l < num_hidden_layers; ++l) {
    if (!is_moe_layer(l)) return true;
  }
  return false;
}

ModelConfig ModelConfig::from_dir(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path);
  if (!in) throw_error("{}: cannot open (is --model-path a Hugging Face model directory?)", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw_error("{}: invalid JSON: {}", path, e.what());
  }
  try {
    return from_json(j, path);
  } catch (const nlohmann::json::exception& e) {
    throw_error("{}: wrong type in a field: {}", path, e.what());
  }
}

}  // namespace dpserve
