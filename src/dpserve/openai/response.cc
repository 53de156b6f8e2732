// OpenAI response objects and streaming chunks, built from per-choice deltas.

#include "dpserve/openai/response.h"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <random>

#include <fmt/format.h>

#include "dpserve/common/errors.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {
namespace {

using ojson = nlohmann::ordered_json;

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";

// A logprob as JSON: the float's shortest decimal form (not its widened double digits);
// -inf and NaN become -9999.0 as in OpenAI's API.
ojson logprob_value(float lp) {
  if (!std::isfinite(lp)) return -9999.0;
  return std::strtod(fmt::format("{}", lp).c_str(), nullptr);
}

// UTF-8 bytes of a token text as a list of integers (OpenAI chat logprobs `bytes`).
ojson utf8_bytes(const std::string& s) {
  ojson out = ojson::array();
  for (unsigned char c : s) out.push_back(static_cast<int>(c));
  return out;
}

// Length of the longest suffix of `s` that is a proper prefix of `tag`.
size_t partial_tag_suffix(std::string_view s, std::string_view tag) {
  for (size_t len = std::min(s.size(), tag.size() - 1); len > 0; --len) {
    if (s.substr(s.size() - len) == tag.substr(0, len)) return len;
  }
  return 0;
}

// A token's text as it reads inside a sequence, leading space included: decoders drop the
// leading space of a sequence's first SentencePiece token ("▁upon" alone decodes to "upon"), so
// the token is decoded after a copy of itself and the copy's text is removed.
std::string token_text(const Tokenizer& tok, int32_t id) {
  const std::string alone = tok.decode({id}, false);
  const std::string twice = tok.decode({id, id}, false);
  if (twice.size() >= alone.size() && twice.compare(0, alone.size(), alone) == 0) {
    return twice.substr(alone.size());
  }
  return alone;
}

}  // namespace

std::vector<TokenLogprobEntry> make_logprob_entries(
    const Tokenizer& tok, std::span<const int32_t> ids, std::span<const float> logprobs,
    const std::vector<std::vector<std::pair<int32_t, float>>>& top) {
  DPSERVE_CHECK(logprobs.size() == ids.size(), "{} logprobs for {} tokens", logprobs.size(),
                ids.size());
  std::vector<TokenLogprobEntry> out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    out[i].token = token_text(tok, ids[i]);
    out[i].logprob = logprobs[i];
    if (i < top.size()) {
      for (const auto& [id, lp] : top[i]) out[i].top.emplace_back(token_text(tok, id), lp);
    }
  }
  return out;
}

nlohmann::ordered_json openai_finish_reason(const nlohmann::json& f) {
  if (f.is_null()) return nullptr;
  const std::string type = f.is_object() ? f.value("type", "") : "";
  // "stop", "length" and "abort" pass through; a kind without an OpenAI word ends like a stop.
  return type.empty() ? std::string("stop") : type;
}

nlohmann::ordered_json matched_stop(const nlohmann::json& f) {
  if (!f.is_object() || f.value("type", "") != "stop") return nullptr;
  auto it = f.find("matched");
  if (it == f.end() || it->is_null()) return nullptr;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_string()) return it->get<std::string>();
  return nullptr;
}

// ---- ReasoningSplitter ----

std::pair<std::string, std::string> ReasoningSplitter::add(std::string_view text) {
  std::string buf = std::move(pending_);
  pending_.clear();
  buf.append(text);
  std::pair<std::string, std::string> out;
  std::string_view rest = buf;
  while (!rest.empty()) {
    const std::string_view tag = in_reasoning_ ? kThinkClose : kThinkOpen;
    std::string& sink = in_reasoning_ ? out.first : out.second;
    const size_t pos = rest.find(tag);
    if (pos != std::string_view::npos) {
      sink.append(rest.substr(0, pos));
      rest.remove_prefix(pos + tag.size());
      in_reasoning_ = !in_reasoning_;
      continue;
    }
    const size_t held = partial_tag_suffix(rest, tag);
    sink.append(rest.substr(0, rest.size() - held));
    pending_ = std::string(rest.substr(rest.size() - held));
    break;
  }
  return out;
}

std::pair<std::string, std::string> ReasoningSplitter::flush() {
  std::pair<std::string, std::string> out;
  (in_reasoning_ ? out.first : out.second) = std::move(pending_);
  pending_.clear();
  return out;
}

// ---- ResponseBuilder ----

struct ResponseBuilder::Choice {
  int64_t index = 0;                          // choice index
  bool started = false;                       // first chunk sent (streaming)
  std::string text;                           // content so far (with echo prefix)
  std::string reasoning;                      // reasoning_content so far
  int64_t tokens = 0;                         // completion tokens
  std::vector<TokenLogprobEntry> logprobs;    // all entries
  int64_t text_offset = 0;                    // next completions text_offset
  ojson finish_reason = nullptr;              // OpenAI string once finished
  ojson matched = nullptr;                    // matched stop
  std::optional<ReasoningSplitter> splitter;  // when splitting reasoning
};

ResponseBuilder::ResponseBuilder(const OpenAIRequest& req, ResponseMeta meta)
    : chat_(req.is_chat()),
      stream_usage_(req.include_usage || req.continuous_usage_stats),
      continuous_usage_(req.continuous_usage_stats),
      logprobs_(req.logprobs),
      meta_(std::move(meta)) {
  DPSERVE_CHECK(req.n >= 1, "n = {}", req.n);
  for (int64_t i = 0; i < req.n; ++i) {
    auto c = std::make_unique<Choice>();
    c->index = i;
    if (!chat_) {
      c->text = meta_.echo_text;
      c->text_offset = static_cast<int64_t>(meta_.echo_text.size());
    } else if (meta_.split_reasoning) {
      c->splitter.emplace();
    }
    choices_.push_back(std::move(c));
  }
}

ResponseBuilder::~ResponseBuilder() = default;

ResponseBuilder::Choice& ResponseBuilder::choice(int64_t index) {
  DPSERVE_CHECK(index >= 0 && index < static_cast<int64_t>(choices_.size()),
                "choice index {} of {}", index, choices_.size());
  return *choices_[index];
}

const std::string& ResponseBuilder::text(int64_t index) const {
  DPSERVE_CHECK(index >= 0 && index < static_cast<int64_t>(choices_.size()), "index {}", index);
  return choices_[index]->text;
}

void ResponseBuilder::set_prompt_tokens(int64_t prompt_tokens, int64_t cached_tokens) {
  prompt_tokens_ = prompt_tokens;
  cached_tokens_ = cached_tokens;
}

bool ResponseBuilder::all_finished() const {
  for (const auto& c : choices_) {
    if (c->finish_reason.is_null()) return false;
  }
  return true;
}

nlohmann::ordered_json ResponseBuilder::usage() const {
  int64_t completion = 0;
  for (const auto& c : choices_) completion += c->tokens;
  ojson u = ojson::object();
  u["prompt_tokens"] = prompt_tokens_;
  u["completion_tokens"] = completion;
  u["total_tokens"] = prompt_tokens_ + completion;
  u["prompt_tokens_details"] = {{"cached_tokens", cached_tokens_}};
  return u;
}

nlohmann::ordered_json ResponseBuilder::chunk(nlohmann::ordered_json choice) const {
  ojson c = ojson::object();
  c["id"] = meta_.id;
  c["object"] = chat_ ? "chat.completion.chunk" : "text_completion";
  c["created"] = meta_.created;
  c["model"] = meta_.model;
  c["choices"] = ojson::array();
  if (!choice.is_null()) c["choices"].push_back(std::move(choice));
  if (stream_usage_) c["usage"] = continuous_usage_ ? usage() : ojson(nullptr);
  return c;
}

nlohmann::ordered_json ResponseBuilder::logprobs_json(const std::vector<TokenLogprobEntry>& entries,
                                                      int64_t* text_offset) const {
  if (!logprobs_) return nullptr;
  if (chat_) {
    ojson content = ojson::array();
    for (const TokenLogprobEntry& e : entries) {
      ojson top = ojson::array();
      for (const auto& [tok, lp] : e.top) {
        top.push_back({{"token", tok}, {"logprob", logprob_value(lp)}, {"bytes", utf8_bytes(tok)}});
      }
      content.push_back({{"token", e.token},
                         {"logprob", logprob_value(e.logprob)},
                         {"bytes", utf8_bytes(e.token)},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}, {"refusal", nullptr}};
  }
  ojson tokens = ojson::array(), token_logprobs = ojson::array(), top = ojson::array(),
        offsets = ojson::array();
  for (const TokenLogprobEntry& e : entries) {
    tokens.push_back(e.token);
    token_logprobs.push_back(logprob_value(e.logprob));
    // Up to logprobs + 1 entries: the alternatives and the chosen token (OpenAI's rule).
    ojson alts = ojson::object();
    for (const auto& [tok, lp] : e.top) {
      if (!alts.contains(tok)) alts[tok] = logprob_value(lp);
    }
    if (!alts.contains(e.token)) alts[e.token] = logprob_value(e.logprob);
    top.push_back(std::move(alts));
    offsets.push_back(*text_offset);
    *text_offset += static_cast<int64_t>(e.token.size());
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top)},
          {"text_offset", std::move(offsets)}};
}

nlohmann::ordered_json ResponseBuilder::first_chunk(Choice& c) {
  c.started = true;
  ojson ch = ojson::object();
  ch["index"] = c.index;
  if (chat_) {
    ch["delta"] = {{"role", "assistant"}, {"content", ""}};
  } else {
    ch["text"] = meta_.echo_text;
  }
  ch["logprobs"] = nullptr;
  ch["finish_reason"] = nullptr;
  return chunk(std::move(ch));
}

std::vector<nlohmann::ordered_json> ResponseBuilder::start() {
  std::vector<ojson> out;
  for (auto& c : choices_) {
    // Completions without echo have nothing to say before the first token.
    if (!c->started && (chat_ || !meta_.echo_text.empty())) out.push_back(first_chunk(*c));
  }
  return out;
}

std::vector<nlohmann::ordered_json> ResponseBuilder::add(const ChoiceDelta& d) {
  Choice& c = choice(d.index);
  DPSERVE_CHECK(c.finish_reason.is_null(), "delta for finished choice {}", d.index);
  if (d.prompt_tokens >= 0) prompt_tokens_ = d.prompt_tokens;
  if (d.cached_tokens >= 0) cached_tokens_ = d.cached_tokens;
  std::vector<ojson> out;
  if (!c.started && (chat_ || !meta_.echo_text.empty())) out.push_back(first_chunk(c));
  c.started = true;

  std::string content = d.text, reasoning;
  const bool finished = !d.finish_reason.is_null();
  if (c.splitter) {
    auto [r, t] = c.splitter->add(d.text);
    if (finished) {
      auto [r2, t2] = c.splitter->flush();
      r += r2;
      t += t2;
    }
    reasoning = std::move(r);
    content = std::move(t);
    // Content after </think> starts with the model's separator newlines; drop them.
    if (c.text.empty() && (!c.reasoning.empty() || !reasoning.empty()))
      content.erase(0, content.find_first_not_of(" \t\r\n"));
  }
  c.text += content;
  c.reasoning += reasoning;
  c.tokens += d.num_tokens;
  int64_t offset = c.text_offset;
  ojson lp = logprobs_json(d.logprobs, &offset);
  c.text_offset = offset;
  if (logprobs_) c.logprobs.insert(c.logprobs.end(), d.logprobs.begin(), d.logprobs.end());
  if (finished) {
    c.finish_reason = openai_finish_reason(d.finish_reason);
    c.matched = matched_stop(d.finish_reason);
  }
  if (content.empty() && reasoning.empty() && d.logprobs.empty() && !finished) return out;

  ojson ch = ojson::object();
  ch["index"] = c.index;
  if (chat_) {
    ojson delta = ojson::object();
    if (!reasoning.empty()) delta["reasoning_content"] = reasoning;
    if (!content.empty()) delta["content"] = content;
    ch["delta"] = std::move(delta);
  } else {
    ch["text"] = content;
  }
  ch["logprobs"] = std::move(lp);
  ch["finish_reason"] = c.finish_reason;
  if (finished) ch["matched_stop"] = c.matched;
  out.push_back(chunk(std::move(ch)));
  return out;
}

std::vector<nlohmann::ordered_json> ResponseBuilder::end() {
  std::vector<ojson> out;
  if (stream_usage_) {
    ojson c = chunk(nullptr);
    c["usage"] = usage();
    out.push_back(std::move(c));
  }
  return out;
}

nlohmann::ordered_json ResponseBuilder::response() const {
  ojson r = ojson::object();
  r["id"] = meta_.id;
  r["object"] = chat_ ? "chat.completion" : "text_completion";
  r["created"] = meta_.created;
  r["model"] = meta_.model;
  r["choices"] = ojson::array();
  for (const auto& c : choices_) {
    ojson ch = ojson::object();
    ch["index"] = c->index;
    int64_t offset = static_cast<int64_t>(meta_.echo_text.size());
    if (chat_) {
      ojson msg = ojson::object();
      msg["role"] = "assistant";
      msg["content"] = c->text;
      if (!c->reasoning.empty()) msg["reasoning_content"] = c->reasoning;
      msg["refusal"] = nullptr;
      ch["message"] = std::move(msg);
    } else {
      ch["text"] = c->text;
    }
    ch["logprobs"] = logprobs_json(c->logprobs, &offset);
    ch["finish_reason"] = c->finish_reason;
    ch["matched_stop"] = c->matched;
    r["choices"].push_back(std::move(ch));
  }
  r["usage"] = usage();
  return r;
}

// ---- ids, SSE, models ----

std::string make_response_id(bool chat) {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  uint64_t a, b;
  {
    std::lock_guard<std::mutex> lock(mu);
    a = rng();
    b = rng();
  }
  return fmt::format("{}{:016x}{:016x}", chat ? "chatcmpl-" : "cmpl-", a, b);
}

int64_t unix_time_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string dump_json(const nlohmann::ordered_json& j) {
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string sse_event(const nlohmann::ordered_json& j) { return "data: " + dump_json(j) + "\n\n"; }

std::string sse_done() { return "data: [DONE]\n\n"; }

std::string sse_error(const ApiError& err) {
  return "data: " + err.to_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
         "\n\n";
}

nlohmann::ordered_json model_card(const std::string& served_name, int64_t created,
                                  const std::string& root, int64_t max_model_len) {
  ojson m = ojson::object();
  m["id"] = served_name;
  m["object"] = "model";
  m["created"] = created;
  m["owned_by"] = "dpserve";
  m["root"] = root;
  m["max_model_len"] = max_model_len;
  return m;
}

nlohmann::ordered_json models_list(const std::string& served_name, int64_t created,
                                   const std::string& root, int64_t max_model_len) {
  ojson l = ojson::object();
  l["object"] = "list";
  l["data"] = ojson::array({model_card(served_name, created, root, max_model_len)});
  return l;
}

}  // namespace dpserve
