// SamplingParams: SGLang's ranges (validate) and its /generate JSON shape (from_json).

#include "dpserve/sampling/sampling_params.h"

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"

namespace dpserve {
namespace {

using json = nlohmann::json;

double get_number(const json& v, const char* name) {
  if (!v.is_number()) throw_error("{} must be a number, got {}", name, v.dump());
  return v.get<double>();
}

int64_t get_integer(const json& v, const char* name) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    // 128.0 is accepted as 128 (Python clients sometimes send floats); 1.5 is not.
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18) {
      return static_cast<int64_t>(d);
    }
  }
  throw_error("{} must be an integer, got {}", name, v.dump());
}

bool get_bool(const json& v, const char* name) {
  if (!v.is_boolean()) throw_error("{} must be a boolean, got {}", name, v.dump());
  return v.get<bool>();
}

int32_t get_token_id(const json& v, const char* name) {
  const int64_t id = get_integer(v, name);
  if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
    throw_error("{} must hold token ids in [0, {}], got {}", name,
                std::numeric_limits<int32_t>::max(), id);
  }
  return static_cast<int32_t>(id);
}

std::vector<std::string> get_stop(const json& v) {
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array()) throw_error("stop must be a string or a list of strings, got {}", v.dump());
  std::vector<std::string> out;
  for (const json& s : v) {
    if (!s.is_string()) throw_error("stop must be a string or a list of strings, got {}", v.dump());
    out.push_back(s.get<std::string>());
  }
  return out;
}

std::vector<int32_t> get_stop_token_ids(const json& v) {
  if (!v.is_array()) throw_error("stop_token_ids must be a list of integers, got {}", v.dump());
  std::vector<int32_t> out;
  for (const json& id : v) {
    if (id.is_null()) continue;  // SGLang filters out None entries
    out.push_back(get_token_id(id, "stop_token_ids"));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::vector<std::pair<int32_t, float>> get_logit_bias(const json& v) {
  if (!v.is_object()) {
    throw_error("logit_bias must be an object of token id -> number, got {}", v.dump());
  }
  std::vector<std::pair<int32_t, float>> out;
  for (const auto& [key, bias] : v.items()) {
    size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(key, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != key.size() || key.empty() || id < 0 || id > std::numeric_limits<int32_t>::max()) {
      throw_error("logit_bias keys must be token ids, got \"{}\"", key);
    }
    out.emplace_back(static_cast<int32_t>(id), static_cast<float>(get_number(bias, "logit_bias")));
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Parameters SGLang accepts that dpserve does not implement: an error unless null.
constexpr const char* kUnsupported[] = {"json_schema", "regex", "ebnf", "structural_tag",
                                        "stop_regex"};

bool in_closed(double v, double lo, double hi) { return v >= lo && v <= hi; }

}  // namespace

void SamplingParams::validate(int64_t vocab_size) const {
  if (!std::isfinite(temperature) || temperature < 0.0) {
    throw_error("temperature must be a non-negative finite number, got {}", temperature);
  }
  if (!(top_p > 0.0 && top_p <= 1.0)) throw_error("top_p must be in (0, 1], got {}", top_p);
  if (top_k != kTopKAll && top_k < 1) {
    throw_error("top_k must be -1 (whole vocabulary) or at least 1, got {}", top_k);
  }
  if (!in_closed(min_p, 0.0, 1.0)) throw_error("min_p must be in [0, 1], got {}", min_p);
  if (!in_closed(frequency_penalty, -2.0, 2.0)) {
    throw_error("frequency_penalty must be in [-2, 2], got {}", frequency_penalty);
  }
  if (!in_closed(presence_penalty, -2.0, 2.0)) {
    throw_error("presence_penalty must be in [-2, 2], got {}", presence_penalty);
  }
  if (!(repetition_penalty > 0.0 && repetition_penalty <= 2.0)) {
    throw_error("repetition_penalty must be in (0, 2] (1 = no penalty), got {}",
                repetition_penalty);
  }
  if (max_new_tokens < 0) throw_error("max_new_tokens must be at least 0, got {}", max_new_tokens);
  if (min_new_tokens < 0 || min_new_tokens > max_new_tokens) {
    if (max_new_tokens == kNoMaxNewTokens) {
      throw_error("min_new_tokens must be at least 0, got {}", min_new_tokens);
    }
    throw_error("min_new_tokens must be in [0, max_new_tokens ({})], got {}", max_new_tokens,
                min_new_tokens);
  }
  if (n < 1) throw_error("n must be at least 1, got {}", n);
  if (top_logprobs_num < 0) {
    throw_error("top_logprobs_num must be at least 0, got {}", top_logprobs_num);
  }
  if (stream_interval && *stream_interval < 1) {
    throw_error("stream_interval must be at least 1, got {}", *stream_interval);
  }
  for (const std::string& s : stop) {
    if (s.empty()) throw_error("stop must not contain empty strings");
  }
  for (int32_t id : stop_token_ids) {
    if (id < 0 || (vocab_size > 0 && id >= vocab_size)) {
      throw_error("stop_token_ids must be in [0, {}], got {}", vocab_size - 1, id);
    }
  }
  for (const auto& [id, bias] : logit_bias) {
    if (id < 0 || (vocab_size > 0 && id >= vocab_size)) {
      throw_error("logit_bias keys must be in [0, {}], got {}", vocab_size - 1, id);
    }
    if (!std::isfinite(bias)) throw_error("logit_bias values must be finite, got {}", bias);
  }
}

SamplingParams SamplingParams::from_json(const nlohmann::json& j) {
  SamplingParams p;
  if (j.is_null()) return p;
  if (!j.is_object()) throw_error("sampling_params must be a JSON object, got {}", j.dump());
  for (const auto& [key, v] : j.items()) {
    if (v.is_null()) {
      // null means the default, as in SGLang's __post_init__; for max_new_tokens (Optional in
      // SGLang) it means no limit of its own.
      if (key == "max_new_tokens") p.max_new_tokens = kNoMaxNewTokens;
      continue;
    }
    const char* k = key.c_str();
    if (key == "max_new_tokens") {
      p.max_new_tokens = get_integer(v, k);
    } else if (key == "min_new_tokens") {
      p.min_new_tokens = get_integer(v, k);
    } else if (key == "temperature") {
      p.temperature = get_number(v, k);
    } else if (key == "top_p") {
      p.top_p = get_number(v, k);
    } else if (key == "top_k") {
      p.top_k = get_integer(v, k);
      if (p.top_k >= (int64_t{1} << 30)) p.top_k = kTopKAll;  // SGLang's TOP_K_ALL
    } else if (key == "min_p") {
      p.min_p = get_number(v, k);
    } else if (key == "frequency_penalty") {
      p.frequency_penalty = get_number(v, k);
    } else if (key == "presence_penalty") {
      p.presence_penalty = get_number(v, k);
    } else if (key == "repetition_penalty") {
      p.repetition_penalty = get_number(v, k);
    } else if (key == "stop") {
      p.stop = get_stop(v);
    } else if (key == "stop_token_ids") {
      p.stop_token_ids = get_stop_token_ids(v);
    } else if (key == "logit_bias") {
      p.logit_bias = get_logit_bias(v);
    } else if (key == "ignore_eos") {
      p.ignore_eos = get_bool(v, k);
    } else if (key == "skip_special_tokens") {
      p.skip_special_tokens = get_bool(v, k);
    } else if (key == "spaces_between_special_tokens") {
      p.spaces_between_special_tokens = get_bool(v, k);
    } else if (key == "no_stop_trim") {
      p.no_stop_trim = get_bool(v, k);
    } else if (key == "n") {
      p.n = get_integer(v, k);
    } else if (key == "seed" || key == "sampling_seed") {
      // Negative seeds (allowed by OpenAI) wrap to their two's-complement value.
      p.seed = static_cast<uint64_t>(get_integer(v, k));
    } else if (key == "return_logprob") {
      p.return_logprob = get_bool(v, k);
    } else if (key == "top_logprobs_num") {
      p.top_logprobs_num = get_integer(v, k);
    } else if (key == "stream_interval") {
      p.stream_interval = get_integer(v, k);
    } else if (key == "custom_params") {
      // Opaque to the engine (SGLang passes it to custom logit processors, which dpserve lacks).
    } else if (std::find_if(std::begin(kUnsupported), std::end(kUnsupported),
                            [&name = key](const char* u) { return name == u; }) !=
               std::end(kUnsupported)) {
      throw_error("sampling parameter '{}' is not supported by dpserve", key);
    } else {
      throw_error("unknown sampling parameter '{}'", key);
    }
  }
  return p;
}

nlohmann::json SamplingParams::to_json() const {
  json j;
  j["max_new_tokens"] = max_new_tokens == kNoMaxNewTokens ? json(nullptr) : json(max_new_tokens);
  j["min_new_tokens"] = min_new_tokens;
  j["temperature"] = temperature;
  j["top_p"] = top_p;
  j["top_k"] = top_k;
  j["min_p"] = min_p;
  j["frequency_penalty"] = frequency_penalty;
  j["presence_penalty"] = presence_penalty;
  j["repetition_penalty"] = repetition_penalty;
  j["stop"] = stop;
  j["stop_token_ids"] = stop_token_ids;
  json bias = json::object();
  for (const auto& [id, b] : logit_bias) bias[std::to_string(id)] = b;
  j["logit_bias"] = bias;
  j["ignore_eos"] = ignore_eos;
  j["skip_special_tokens"] = skip_special_tokens;
  j["spaces_between_special_tokens"] = spaces_between_special_tokens;
  j["no_stop_trim"] = no_stop_trim;
  j["n"] = n;
  j["seed"] = seed ? json(*seed) : json(nullptr);
  j["return_logprob"] = return_logprob;
  j["top_logprobs_num"] = top_logprobs_num;
  j["stream_interval"] = stream_interval ? json(*stream_interval) : json(nullptr);
  return j;
}

size_t SamplingParams::max_stop_len() const {
  size_t m = 0;
  for (const std::string& s : stop) m = std::max(m, s.size());
  return m;
}

}  // namespace dpserve
