#pragma once
// OpenAI response bodies: completion / chat.completion objects, their streaming chunks, SSE
// framing, and the /v1/models list.
//
// One code path for streaming and non-streaming: a ResponseBuilder is fed the deltas of every
// choice as the engine produces them (text piece, token count, logprobs, finish reason). Each
// add() updates the choice's state and returns the chunks to send now; a non-streaming caller
// ignores them and asks response() for the final object at the end.
//
// Streaming sequence (per OpenAI): chat sends a first chunk per choice with
// delta {"role": "assistant", "content": ""}; then content deltas; the chunk carrying a choice's
// finish_reason may also carry its last text. With stream_options.include_usage every chunk has
// "usage": null and end() adds one chunk with "choices": [] and the usage. The stream ends with
// sse_done().

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "dpserve/openai/api_error.h"
#include "dpserve/openai/protocol.h"

namespace dpserve {

class Tokenizer;

// One generated token's logprob as OpenAI shows it.
struct TokenLogprobEntry {
  std::string token;                               // the token's text
  float logprob = 0.0f;                            // natural-log probability
  std::vector<std::pair<std::string, float>> top;  // most likely alternatives, best first
};

// Entries for generated tokens: each token's text as it reads in context (leading space kept,
// e.g. " upon" for SentencePiece's "▁upon"), logprobs[i] for ids[i], and
// top[i] (token id, logprob) alternatives when given (top may be empty or shorter).
std::vector<TokenLogprobEntry> make_logprob_entries(
    const Tokenizer& tok, std::span<const int32_t> ids, std::span<const float> logprobs,
    const std::vector<std::vector<std::pair<int32_t, float>>>& top = {});

// OpenAI's finish_reason for SGLang's {"type": "stop"|"length"|"abort", ...}: "stop", "length",
// "abort" (SGLang's and vLLM's word; OpenAI has none); null for null.
nlohmann::ordered_json openai_finish_reason(const nlohmann::json& sglang_finish);

// The stop token id or stop string that ended a choice (SGLang's matched_stop), else null.
nlohmann::ordered_json matched_stop(const nlohmann::json& sglang_finish);

// What one engine step produced for one choice.
struct ChoiceDelta {
  int64_t index = 0;                        // choice index in [0, n)
  std::string text;                         // new output text (may be empty)
  int64_t num_tokens = 0;                   // new tokens generated (for usage)
  std::vector<TokenLogprobEntry> logprobs;  // one per new token, when logprobs were asked
  nlohmann::json finish_reason = nullptr;   // SGLang's finish reason when the choice finished
  int64_t prompt_tokens = -1;               // prompt length, if known (-1: unchanged)
  int64_t cached_tokens = -1;               // prompt tokens served from cache (-1: unchanged)
};

// Fixed facts of one response.
struct ResponseMeta {
  std::string id;                // "cmpl-..." / "chatcmpl-..." (make_response_id)
  int64_t created = 0;           // Unix seconds
  std::string model;             // the served model name
  std::string echo_text;         // completions with echo: the prompt text prepended to outputs
  bool split_reasoning = false;  // chat: move <think>...</think> text into reasoning_content
};

// Splits streamed text into reasoning (inside <think>...</think>) and content, across chunk
// boundaries (a tag split over two pieces is held back until it is complete).
class ReasoningSplitter {
 public:
  // starts_in_reasoning: the template already opened <think> (e.g. Qwen3 with thinking on).
  explicit ReasoningSplitter(bool starts_in_reasoning = false)
      : in_reasoning_(starts_in_reasoning) {}
  // Adds a piece; returns {reasoning, content} that can be emitted now.
  std::pair<std::string, std::string> add(std::string_view text);
  // Returns what was held back (at the end of the output).
  std::pair<std::string, std::string> flush();

 private:
  bool in_reasoning_;    // inside <think>
  std::string pending_;  // a possible tag prefix held back
};

// Builds the chunks and the final object of one request's choices.
class ResponseBuilder {
 public:
  // req: the parsed request (endpoint, n, stream options, logprobs).
  ResponseBuilder(const OpenAIRequest& req, ResponseMeta meta);
  ~ResponseBuilder();

  // Streaming start: chat role chunks (and completions echo chunks) for choices that have not
  // had them yet. Optional: add() emits a choice's first chunk itself.
  std::vector<nlohmann::ordered_json> start();

  // Feeds one delta; returns the chunks to stream now (none when it adds nothing visible).
  std::vector<nlohmann::ordered_json> add(const ChoiceDelta& delta);

  // Streaming end: the usage chunk when include_usage was asked (else nothing).
  std::vector<nlohmann::ordered_json> end();

  // The non-streaming completion / chat.completion object with all choices and usage.
  nlohmann::ordered_json response() const;

  // The usage object so far.
  nlohmann::ordered_json usage() const;

  // Sets prompt_tokens / cached_tokens (also taken from deltas).
  void set_prompt_tokens(int64_t prompt_tokens, int64_t cached_tokens = 0);

  // True when every choice has its finish reason.
  bool all_finished() const;

  // The completion text of choice `index` so far (with the echo prefix).
  const std::string& text(int64_t index) const;

 private:
  struct Choice;
  Choice& choice(int64_t index);
  nlohmann::ordered_json chunk(nlohmann::ordered_json choice) const;
  nlohmann::ordered_json first_chunk(Choice& c);
  nlohmann::ordered_json logprobs_json(const std::vector<TokenLogprobEntry>& entries,
                                       int64_t* text_offset) const;

  bool chat_;                                     // chat.completion vs text_completion
  bool stream_usage_;                             // include_usage
  bool continuous_usage_;                         // usage in every chunk
  bool logprobs_;                                 // logprobs asked
  ResponseMeta meta_;                             // id, created, model, echo
  int64_t prompt_tokens_ = 0;                     // prompt length
  int64_t cached_tokens_ = 0;                     // cached prompt tokens
  std::vector<std::unique_ptr<Choice>> choices_;  // per choice state
};

// "cmpl-<32 hex>" for completions, "chatcmpl-<32 hex>" for chat (random, thread-safe).
std::string make_response_id(bool chat);

// Seconds since the Unix epoch.
int64_t unix_time_now();

// JSON text of a body (invalid UTF-8 replaced by U+FFFD instead of throwing).
std::string dump_json(const nlohmann::ordered_json& j);

// One Server-Sent Event: "data: <json>\n\n".
std::string sse_event(const nlohmann::ordered_json& j);

// The stream terminator: "data: [DONE]\n\n".
std::string sse_done();

// An error event for a failure after the stream started: "data: {"error": ...}\n\n".
std::string sse_error(const ApiError& err);

// One /v1/models entry: {id, object: "model", created, owned_by: "dpserve", root, max_model_len}.
nlohmann::ordered_json model_card(const std::string& served_name, int64_t created,
                                  const std::string& root, int64_t max_model_len);

// The GET /v1/models body: {"object": "list", "data": [model_card]}.
nlohmann::ordered_json models_list(const std::string& served_name, int64_t created,
                                   const std::string& root, int64_t max_model_len);

}  // namespace dpserve
