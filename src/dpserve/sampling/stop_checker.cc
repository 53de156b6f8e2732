// StopChecker: stop strings matched on the detokenized text with a held-back tail, stop tokens,
// EOS and length.

#include "dpserve/sampling/stop_checker.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"

namespace dpserve {

FinishReason FinishReason::stop_token(int32_t id) {
  FinishReason r;
  r.type = Type::kStop;
  r.matched = id;
  return r;
}

FinishReason FinishReason::stop_string(std::string s) {
  FinishReason r;
  r.type = Type::kStop;
  r.matched = std::move(s);
  return r;
}

FinishReason FinishReason::max_length(int64_t length) {
  FinishReason r;
  r.type = Type::kLength;
  r.length = length;
  return r;
}

FinishReason FinishReason::abort(std::string message) {
  FinishReason r;
  r.type = Type::kAbort;
  r.message = std::move(message);
  return r;
}

const char* FinishReason::type_name() const {
  switch (type) {
    case Type::kStop:
      return "stop";
    case Type::kLength:
      return "length";
    case Type::kAbort:
      return "abort";
  }
  return "abort";
}

nlohmann::json FinishReason::to_json() const {
  nlohmann::json j;
  j["type"] = type_name();
  switch (type) {
    case Type::kStop:
      if (const auto* id = std::get_if<int32_t>(&matched)) j["matched"] = *id;
      if (const auto* s = std::get_if<std::string>(&matched)) j["matched"] = *s;
      break;
    case Type::kLength:
      j["length"] = length;
      break;
    case Type::kAbort:
      j["message"] = message;
      break;
  }
  return j;
}

StopChecker::StopChecker(const Tokenizer& tokenizer, const SamplingParams& params,
                         std::vector<int32_t> prompt_ids, std::span<const int32_t> extra_eos_ids)
    : params_(params), detok_(tokenizer, params.skip_special_tokens, std::move(prompt_ids)) {
  if (!params_.ignore_eos) {
    eos_ids_ = tokenizer.eos_token_ids();
    eos_ids_.insert(eos_ids_.end(), extra_eos_ids.begin(), extra_eos_ids.end());
  }
}

bool StopChecker::is_stop_token(int32_t token) const {
  return std::find(eos_ids_.begin(), eos_ids_.end(), token) != eos_ids_.end() ||
         std::find(params_.stop_token_ids.begin(), params_.stop_token_ids.end(), token) !=
             params_.stop_token_ids.end();
}

std::string StopChecker::emit(size_t n) {
  std::string out = pending_.substr(0, n);
  pending_.erase(0, n);
  text_ += out;
  return out;
}

std::string StopChecker::add(int32_t token) {
  DPSERVE_CHECK(!finished(), "StopChecker::add after the sequence finished");
  ++num_tokens_;

  if (is_stop_token(token)) {
    // The stop token itself is not part of the output text unless no_stop_trim.
    if (params_.no_stop_trim) pending_ += detok_.add(token);
    pending_ += detok_.flush();
    finish_ = FinishReason::stop_token(token);
    return emit(pending_.size());
  }

  pending_ += detok_.add(token);
  const bool at_length = num_tokens_ >= params_.max_new_tokens;
  if (at_length) pending_ += detok_.flush();

  // Earliest complete stop string in the unemitted text (ties: the one listed first). Matches
  // cannot start in emitted text: any suffix that could begin one was held back.
  size_t best_pos = std::string::npos;
  const std::string* best = nullptr;
  for (const std::string& s : params_.stop) {
    if (s.empty()) continue;
    const size_t pos = pending_.find(s);
    if (pos != std::string::npos && pos < best_pos) {
      best_pos = pos;
      best = &s;
    }
  }
  if (best != nullptr) {
    finish_ = FinishReason::stop_string(*best);
    // no_stop_trim keeps everything decoded so far, as SGLang's output does.
    std::string out = emit(params_.no_stop_trim ? pending_.size() : best_pos);
    pending_.clear();
    return out;
  }
  if (at_length) {
    finish_ = FinishReason::max_length(params_.max_new_tokens);
    return emit(pending_.size());
  }

  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : params_.stop) {
    if (s.empty()) continue;
    const size_t max_len = std::min(s.size() - 1, pending_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  return emit(pending_.size() - hold);
}

std::string StopChecker::flush() {
  pending_ += detok_.flush();
  return emit(pending_.size());
}

}  // namespace dpserve
