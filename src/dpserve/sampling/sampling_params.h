#pragma once
// Per-request sampling parameters with SGLang's names, defaults and ranges
// (python/sglang/srt/sampling/sampling_params.py), parsed from the JSON object that SGLang's
// /generate takes as `sampling_params` (OpenAI requests are field-mapped into that shape).

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dpserve {

struct SamplingParams {
  // max_new_tokens value meaning "no limit of its own" (JSON null; the scheduler clips it to the
  // context length).
  static constexpr int64_t kNoMaxNewTokens = std::numeric_limits<int64_t>::max();
  // top_k value meaning "the whole vocabulary".
  static constexpr int64_t kTopKAll = -1;
  // Temperatures below this mean greedy decoding (SGLang's _SAMPLING_EPS).
  static constexpr double kGreedyEps = 1e-6;

  int64_t max_new_tokens = 128;         // most tokens to generate (>= 0)
  int64_t min_new_tokens = 0;           // EOS / stop_token_ids masked until this many
  double temperature = 1.0;             // >= 0; below kGreedyEps means greedy
  double top_p = 1.0;                   // nucleus mass in (0, 1]
  int64_t top_k = kTopKAll;             // -1 (all) or >= 1
  double min_p = 0.0;                   // [0, 1], relative to the top token's probability
  double frequency_penalty = 0.0;       // [-2, 2], times the token's output count
  double presence_penalty = 0.0;        // [-2, 2], once per token seen in the output
  double repetition_penalty = 1.0;      // (0, 2], on tokens seen in prompt or output
  std::vector<std::string> stop;        // stop strings, matched on decoded text
  std::vector<int32_t> stop_token_ids;  // token ids that end generation (deduplicated)
  std::vector<std::pair<int32_t, float>> logit_bias;  // additive bias per token id
  bool ignore_eos = false;                            // keep generating past EOS tokens
  bool skip_special_tokens = true;                    // drop special tokens from the output text
  bool spaces_between_special_tokens = true;          // accepted for SGLang compatibility
  bool no_stop_trim = false;               // keep the matched stop string / token in output
  int64_t n = 1;                           // completions per prompt (>= 1)
  std::optional<uint64_t> seed;            // per-request seed ("seed" or "sampling_seed")
  bool return_logprob = false;             // return the chosen token's logprob
  int64_t top_logprobs_num = 0;            // also return this many top (id, logprob) pairs
  std::optional<int64_t> stream_interval;  // accepted for SGLang compatibility

  // Throws dpserve::Error naming the first parameter out of range and its allowed range. With
  // vocab_size > 0, token ids (stop_token_ids, logit_bias) must lie in [0, vocab_size).
  void validate(int64_t vocab_size = 0) const;

  // Parses SGLang's `sampling_params` object (null values mean the default; `stop` may be a
  // string or a list). Throws dpserve::Error naming the parameter for a wrong JSON type, and for
  // unknown keys (SGLang's SamplingParams(**params) rejects them too). Does not validate ranges.
  static SamplingParams from_json(const nlohmann::json& j);

  // The parameters as a JSON object that from_json reads back.
  nlohmann::json to_json() const;

  // True when decoding is greedy (temperature below kGreedyEps, or top_k == 1).
  bool is_greedy() const { return temperature < kGreedyEps || top_k == 1; }

  // Temperature the logits are divided by: 1 for greedy-by-temperature, else temperature.
  double effective_temperature() const { return temperature < kGreedyEps ? 1.0 : temperature; }

  // Length in bytes of the longest stop string (0 without stop strings).
  size_t max_stop_len() const;
};

}  // namespace dpserve
