#pragma once
// OpenAI request bodies (POST /v1/completions, POST /v1/chat/completions): parsing and validation
// into one internal request, with OpenAI's field names mapped onto SamplingParams.
//
// Every refusal is an ApiError (400 "invalid_request_error" naming the field in `param`; 404
// "model_not_found" for another model). Policy on fields:
// - null means "absent" for every field (OpenAI's SDKs send nulls for unset optionals);
// - OpenAI's documented fields that do not change generation (user, metadata, store, ...) are
//   accepted and ignored; those dpserve cannot honour (response_format other than text, image or
//   audio content, tool_choice "required" or a named function, echo with logprobs, suffix,
//   best_of > n, SGLang's regex/json_schema/ebnf) are a 400 "... is not supported";
// - unknown fields are a 400 "Unrecognized request argument supplied: <name>" (OpenAI's own
//   behaviour; vLLM only warns, but a silently ignored misspelt parameter changes results).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dpserve/chat_template/chat_template.h"
#include "dpserve/openai/api_error.h"
#include "dpserve/sampling/sampling_params.h"

namespace dpserve {

// Which OpenAI endpoint a request came to.
enum class OpenAIEndpoint { kCompletions, kChatCompletions };

// Server facts that parsing needs.
struct ParseOptions {
  // Sampling defaults before the request's fields apply (e.g. from generation_config.json).
  // max_new_tokens here is ignored: the endpoint's default applies (16 for completions as in
  // OpenAI, no limit of its own for chat).
  SamplingParams defaults;
  // One past the largest valid token id; 0 skips token id range checks.
  int64_t vocab_size = 0;
  // Most values accepted for `n`, completions `logprobs` and chat `top_logprobs`.
  int64_t max_n = 128;
  // Most top logprobs per position (OpenAI allows 20 for chat, 5 for completions; dpserve: 20).
  int64_t max_top_logprobs = 20;
};

// A parsed OpenAI request, endpoint-independent where possible.
struct OpenAIRequest {
  // The endpoint the body was parsed for.
  OpenAIEndpoint endpoint = OpenAIEndpoint::kCompletions;
  // The `model` field ("" when absent); check with check_model().
  std::string model;

  // Completions: the prompt text (when given as a string or a list of one string).
  std::optional<std::string> prompt_text;
  // Completions: the prompt token ids (when given as ids or a list of one id list).
  std::optional<std::vector<int32_t>> prompt_ids;
  // Completions: prepend the prompt to the output text.
  bool echo = false;

  // Chat: the conversation, normalized for the chat template: content null -> "", text parts
  // joined with "\n", tool_calls[].function.arguments parsed from a JSON string to an object.
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  // Chat: tool definitions passed to the template (null when none, or tool_choice "none").
  nlohmann::ordered_json tools = nullptr;
  // Chat: "auto" or "none" (the only tool_choice values dpserve honours).
  std::string tool_choice = "auto";
  // Chat: extra template variables (chat_template_kwargs, e.g. {"enable_thinking": false}).
  nlohmann::ordered_json chat_template_kwargs = nlohmann::ordered_json::object();
  // Chat: append the assistant header (vLLM's add_generation_prompt; default true).
  bool add_generation_prompt = true;
  // Chat: return reasoning (<think>...</think>) separately as reasoning_content (SGLang's
  // separate_reasoning; default true).
  bool separate_reasoning = true;

  // Sampling parameters with OpenAI fields mapped on (n, seed, stop, logprobs, ...). Validated.
  SamplingParams params;
  // Completions per prompt (== params.n).
  int64_t n = 1;
  // Stream Server-Sent Events.
  bool stream = false;
  // stream_options.include_usage: a last chunk with empty choices and the usage.
  bool include_usage = false;
  // stream_options.continuous_usage_stats (vLLM): usage in every chunk.
  bool continuous_usage_stats = false;
  // Return logprobs (completions: `logprobs` given; chat: `logprobs: true`).
  bool logprobs = false;
  // Top alternatives per position (completions: the `logprobs` value; chat: `top_logprobs`).
  int64_t top_logprobs = 0;
  // The `user` field (logged only).
  std::string user;
  // Fields that were accepted and ignored (for a log line).
  std::vector<std::string> ignored_fields;

  // True for /v1/chat/completions.
  bool is_chat() const { return endpoint == OpenAIEndpoint::kChatCompletions; }
  // Template options for ChatTemplate::render: add_generation_prompt, tools, kwargs.
  ChatTemplateOptions chat_template_options() const;
};

// Parses a request body; throws ApiError 400 for malformed JSON (including invalid UTF-8, numbers
// out of range and nesting deeper than 256 levels) or a body that is not a JSON object. Keeps
// key order (tool schemas are printed by templates).
nlohmann::ordered_json parse_json_body(std::string_view body);

// Parses and validates a /v1/completions body. Throws ApiError.
OpenAIRequest parse_completion_request(const nlohmann::ordered_json& body,
                                       const ParseOptions& opts = ParseOptions{});

// Parses and validates a /v1/chat/completions body. Throws ApiError.
OpenAIRequest parse_chat_request(const nlohmann::ordered_json& body,
                                 const ParseOptions& opts = ParseOptions{});

// Throws ApiError 404 "model_not_found" unless `requested` is empty or equals `served`.
void check_model(const std::string& requested, const std::string& served);

// Checks a tokenized prompt against the context: throws ApiError 400 (param "messages" for chat,
// "prompt" otherwise) for an empty prompt, token ids outside [0, vocab_size) (vocab_size > 0), or
// prompt + max_new_tokens over context_len (when max_new_tokens has a limit of its own; the
// prompt alone must leave room for one token).
void check_prompt_length(const OpenAIRequest& req, const std::vector<int32_t>& prompt_ids,
                         int64_t context_len, int64_t vocab_size = 0);

}  // namespace dpserve
