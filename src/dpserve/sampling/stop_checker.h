#pragma once
// Finish detection for one generated sequence: stop strings on the decoded text (across token
// boundaries), stop_token_ids, EOS and max_new_tokens, with the streaming text to emit.
//
// Text is produced through an IncrementalDetokenizer. Every piece add() returns is final: a tail
// that could still be the start of a stop string is held back until it is resolved, so streamed
// text is never retracted and never contains (part of) a matched stop string. As in SGLang, the
// matched stop string (or stop token) is cut from the output unless no_stop_trim is set.
//
// Priorities when one token meets several conditions: stop token, then stop string, then length
// (SGLang checks length first; dpserve prefers "stop" so a stop string never reaches the output).
// ignore_eos disables EOS only; stop_token_ids always apply.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "dpserve/sampling/sampling_params.h"
#include "dpserve/tokenizer/detokenizer.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {

// Why a sequence finished, in SGLang's meta_info form.
struct FinishReason {
  // The kinds SGLang reports.
  enum class Type { kStop, kLength, kAbort };

  Type type = Type::kStop;                                     // kind of finish
  std::variant<std::monostate, int32_t, std::string> matched;  // stop token id or stop string
  int64_t length = 0;                                          // max_new_tokens, for kLength
  std::string message;                                         // reason, for kAbort

  // A stop on token `id` (EOS or stop_token_ids).
  static FinishReason stop_token(int32_t id);
  // A stop on the stop string `s`.
  static FinishReason stop_string(std::string s);
  // The max_new_tokens limit `length` reached.
  static FinishReason max_length(int64_t length);
  // An abort with a message.
  static FinishReason abort(std::string message);

  // "stop", "length" or "abort" (also OpenAI's finish_reason).
  const char* type_name() const;

  // {"type": "stop", "matched": id|str} / {"type": "length", "length": n} /
  // {"type": "abort", "message": m}.
  nlohmann::json to_json() const;
};

class StopChecker {
 public:
  // `tokenizer` must outlive this object. `prompt_ids` give the detokenizer its context;
  // `extra_eos_ids` (e.g. generation_config.json's eos_token_id) add to the tokenizer's EOS ids.
  StopChecker(const Tokenizer& tokenizer, const SamplingParams& params,
              std::vector<int32_t> prompt_ids = {}, std::span<const int32_t> extra_eos_ids = {});

  // Adds one generated token; returns the text that may be emitted now (final: never retracted).
  // Once finished() is true, the returned text completes the output and add must not be called.
  std::string add(int32_t token);

  // Ends the sequence early (abort): returns the held-back text, without stop-string trimming.
  std::string flush();

  // True once a finish condition was met.
  bool finished() const { return finish_.has_value(); }

  // The finish reason (set once finished).
  const std::optional<FinishReason>& finish_reason() const { return finish_; }

  // All text emitted so far (the final output text once finished).
  const std::string& text() const { return text_; }

  // Number of tokens added.
  int64_t num_tokens() const { return num_tokens_; }

 private:
  bool is_stop_token(int32_t token) const;
  std::string emit(size_t n);

  const SamplingParams params_;
  IncrementalDetokenizer detok_;
  std::vector<int32_t> eos_ids_;  // EOS ids (empty when ignore_eos)
  std::string pending_;           // decoded text not yet emitted
  std::string text_;              // emitted text
  int64_t num_tokens_ = 0;
  std::optional<FinishReason> finish_;
};

}  // namespace dpserve
