// OpenAI request parsing: valid completions and chat bodies map onto SamplingParams field by
// field; every refusal is an ApiError with the right status, param and message.

#include <functional>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dpserve/chat_template/chat_template.h"
#include "dpserve/openai/protocol.h"

namespace dpserve {
namespace {

using ojson = nlohmann::ordered_json;

ojson J(const char* text) { return ojson::parse(text); }

OpenAIRequest completion(const char* body, const ParseOptions& opts = ParseOptions{}) {
  return parse_completion_request(J(body), opts);
}

OpenAIRequest chat(const char* body, const ParseOptions& opts = ParseOptions{}) {
  return parse_chat_request(J(body), opts);
}

// Runs f, expects an ApiError with `status`, `param` and a message containing `text`.
void expect_error(const std::function<void()>& f, int status, const std::string& param,
                  const std::string& text) {
  try {
    f();
    ADD_FAILURE() << "no error; expected " << status << " on " << param << ": " << text;
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), status) << e.what();
    EXPECT_EQ(e.param().value_or("<none>"), param) << e.what();
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos)
        << "message: " << e.what() << "\nexpected to contain: " << text;
    EXPECT_EQ(e.type(), status == 404 ? "model_not_found" : "invalid_request_error");
  }
}

void completion_error(const char* body, const std::string& param, const std::string& text,
                      const ParseOptions& opts = ParseOptions{}) {
  SCOPED_TRACE(body);
  expect_error([&] { completion(body, opts); }, 400, param, text);
}

void chat_error(const char* body, const std::string& param, const std::string& text,
                const ParseOptions& opts = ParseOptions{}) {
  SCOPED_TRACE(body);
  expect_error([&] { chat(body, opts); }, 400, param, text);
}

// ---- completions: prompt shapes ----

TEST(CompletionRequest, StringPromptAndOpenAIDefaults) {
  OpenAIRequest r = completion(R"({"model": "m", "prompt": "Hello"})");
  EXPECT_FALSE(r.is_chat());
  EXPECT_EQ(r.model, "m");
  ASSERT_TRUE(r.prompt_text.has_value());
  EXPECT_EQ(*r.prompt_text, "Hello");
  EXPECT_FALSE(r.prompt_ids.has_value());
  EXPECT_EQ(r.params.max_new_tokens, 16);  // OpenAI's completions default
  EXPECT_DOUBLE_EQ(r.params.temperature, 1.0);
  EXPECT_DOUBLE_EQ(r.params.top_p, 1.0);
  EXPECT_EQ(r.n, 1);
  EXPECT_EQ(r.params.n, 1);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_FALSE(r.logprobs);
  EXPECT_FALSE(r.params.return_logprob);
  EXPECT_FALSE(r.echo);
  EXPECT_TRUE(r.params.stop.empty());
  EXPECT_FALSE(r.params.seed.has_value());
}

TEST(CompletionRequest, ListOfOneStringAndTokenIds) {
  EXPECT_EQ(*completion(R"({"prompt": ["Once upon"]})").prompt_text, "Once upon");
  OpenAIRequest ids = completion(R"({"prompt": [1, 2, 3]})");
  ASSERT_TRUE(ids.prompt_ids.has_value());
  EXPECT_EQ(*ids.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_FALSE(ids.prompt_text.has_value());
  OpenAIRequest nested = completion(R"({"prompt": [[4, 5]]})");
  EXPECT_EQ(*nested.prompt_ids, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(completion(R"({"model": null, "prompt": "x"})").model, "");
}

TEST(CompletionRequest, BadPrompts) {
  completion_error(R"({"model": "m"})", "prompt", "prompt is required");
  completion_error(R"({"prompt": null})", "prompt", "prompt is required");
  completion_error(R"({"prompt": ""})", "prompt", "must not be empty");
  completion_error(R"({"prompt": []})", "prompt", "must not be empty");
  completion_error(R"({"prompt": [[]]})", "prompt", "must not be empty");
  completion_error(R"({"prompt": 5})", "prompt", "a string, a list of one string");
  completion_error(R"({"prompt": {"text": "x"}})", "prompt", "a string, a list of one string");
  completion_error(R"({"prompt": ["a", "b"]})", "prompt", "Batched prompts (a list of 2)");
  completion_error(R"({"prompt": [[1], [2]]})", "prompt", "Batched prompts");
  completion_error(R"({"prompt": [1, "a"]})", "prompt", "a list of token ids");
  completion_error(R"({"prompt": [1, 2.5]})", "prompt", "a list of token ids");
  completion_error(R"({"prompt": [1, -2]})", "prompt", "token id -2");
  ParseOptions small;
  small.vocab_size = 100;
  completion_error(R"({"prompt": [99, 100]})", "prompt", "token id 100, outside [0, 100)", small);
}

// ---- sampling field mapping ----

TEST(CompletionRequest, EveryFieldLandsInSamplingParams) {
  OpenAIRequest r = completion(R"({
    "model": "m", "prompt": "p", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
    "top_k": 40, "min_p": 0.1, "presence_penalty": 0.5, "frequency_penalty": -0.5,
    "repetition_penalty": 1.1, "stop": ["a", "bb"], "stop_token_ids": [5, 3, 5], "seed": 42,
    "n": 2, "logit_bias": {"7": -100, "3": 2.5}, "min_tokens": 2, "ignore_eos": true,
    "skip_special_tokens": false, "spaces_between_special_tokens": false, "no_stop_trim": true,
    "logprobs": 3, "echo": false, "user": "alice", "stream": true,
    "stream_options": {"include_usage": true}, "best_of": 2, "suffix": ""})");
  const SamplingParams& p = r.params;
  EXPECT_EQ(p.max_new_tokens, 7);
  EXPECT_DOUBLE_EQ(p.temperature, 0.5);
  EXPECT_DOUBLE_EQ(p.top_p, 0.9);
  EXPECT_EQ(p.top_k, 40);
  EXPECT_DOUBLE_EQ(p.min_p, 0.1);
  EXPECT_DOUBLE_EQ(p.presence_penalty, 0.5);
  EXPECT_DOUBLE_EQ(p.frequency_penalty, -0.5);
  EXPECT_DOUBLE_EQ(p.repetition_penalty, 1.1);
  EXPECT_EQ(p.stop, (std::vector<std::string>{"a", "bb"}));
  EXPECT_EQ(p.stop_token_ids, (std::vector<int32_t>{3, 5}));
  ASSERT_TRUE(p.seed.has_value());
  EXPECT_EQ(*p.seed, 42u);
  EXPECT_EQ(p.n, 2);
  EXPECT_EQ(r.n, 2);
  ASSERT_EQ(p.logit_bias.size(), 2u);
  EXPECT_EQ(p.logit_bias[0].first, 3);
  EXPECT_FLOAT_EQ(p.logit_bias[0].second, 2.5f);
  EXPECT_EQ(p.logit_bias[1].first, 7);
  EXPECT_FLOAT_EQ(p.logit_bias[1].second, -100.0f);
  EXPECT_EQ(p.min_new_tokens, 2);
  EXPECT_TRUE(p.ignore_eos);
  EXPECT_FALSE(p.skip_special_tokens);
  EXPECT_FALSE(p.spaces_between_special_tokens);
  EXPECT_TRUE(p.no_stop_trim);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
  EXPECT_TRUE(p.return_logprob);
  EXPECT_EQ(p.top_logprobs_num, 3);
  EXPECT_EQ(r.user, "alice");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
}

TEST(CompletionRequest, StopAsStringLogprobsZeroAndNulls) {
  OpenAIRequest r = completion(R"({"prompt": "p", "stop": "\n", "logprobs": 0})");
  EXPECT_EQ(r.params.stop, (std::vector<std::string>{"\n"}));
  EXPECT_TRUE(r.logprobs);  // 0: the chosen token's logprob, no alternatives
  EXPECT_EQ(r.params.top_logprobs_num, 0);
  EXPECT_TRUE(r.params.return_logprob);
  // null means absent, for every field.
  OpenAIRequest n = completion(
      R"({"prompt": "p", "max_tokens": null, "temperature": null, "stop": null, "n": null,
          "logprobs": null, "stream_options": null, "seed": null, "user": null})");
  EXPECT_EQ(n.params.max_new_tokens, 16);
  EXPECT_DOUBLE_EQ(n.params.temperature, 1.0);
  EXPECT_EQ(n.n, 1);
  EXPECT_FALSE(n.logprobs);
  // Negative seeds (allowed by OpenAI) are accepted.
  EXPECT_TRUE(completion(R"({"prompt": "p", "seed": -1})").params.seed.has_value());
  // Integral floats are integers (Python clients).
  EXPECT_EQ(completion(R"({"prompt": "p", "max_tokens": 8.0})").params.max_new_tokens, 8);
}

TEST(CompletionRequest, ServerDefaultsApplyWhenFieldsAbsent) {
  ParseOptions opts;
  opts.defaults.temperature = 0.6;
  opts.defaults.top_p = 0.95;
  opts.defaults.top_k = 20;
  OpenAIRequest r = completion(R"({"prompt": "p", "top_p": 0.5})", opts);
  EXPECT_DOUBLE_EQ(r.params.temperature, 0.6);
  EXPECT_DOUBLE_EQ(r.params.top_p, 0.5);
  EXPECT_EQ(r.params.top_k, 20);
  EXPECT_EQ(r.params.max_new_tokens, 16);
}

TEST(CompletionRequest, OutOfRangeValuesNameTheField) {
  completion_error(R"({"prompt": "p", "temperature": -1})", "temperature",
                   "temperature must be a non-negative finite number");
  completion_error(R"({"prompt": "p", "top_p": 0})", "top_p", "top_p must be in (0, 1]");
  completion_error(R"({"prompt": "p", "top_p": 1.5})", "top_p", "top_p must be in (0, 1]");
  completion_error(R"({"prompt": "p", "top_k": 0})", "top_k", "top_k must be -1");
  completion_error(R"({"prompt": "p", "min_p": 2})", "min_p", "min_p must be in [0, 1]");
  completion_error(R"({"prompt": "p", "presence_penalty": 3})", "presence_penalty",
                   "presence_penalty must be in [-2, 2]");
  completion_error(R"({"prompt": "p", "frequency_penalty": -2.5})", "frequency_penalty",
                   "frequency_penalty must be in [-2, 2]");
  completion_error(R"({"prompt": "p", "repetition_penalty": 0})", "repetition_penalty",
                   "repetition_penalty must be in (0, 2]");
  completion_error(R"({"prompt": "p", "max_tokens": -1})", "max_tokens",
                   "max_tokens must be at least 0, got -1");
  completion_error(R"({"prompt": "p", "max_tokens": 5, "min_tokens": 10})", "min_tokens",
                   "min_tokens must be in [0, max_tokens (5)], got 10");
  completion_error(R"({"prompt": "p", "n": 0})", "n", "n must be in [1, 128], got 0");
  completion_error(R"({"prompt": "p", "n": 129})", "n", "n must be in [1, 128]");
  completion_error(R"({"prompt": "p", "logprobs": 21})", "logprobs",
                   "logprobs must be in [0, 20], got 21");
  completion_error(R"({"prompt": "p", "logprobs": -1})", "logprobs", "logprobs must be in [0, 20]");
  completion_error(R"({"prompt": "p", "stop": [""]})", "stop", "stop must not contain empty");
  completion_error(R"({"prompt": "p", "stop_token_ids": [-1]})", "stop_token_ids",
                   "stop_token_ids");
  completion_error(R"({"prompt": "p", "logit_bias": {"x": 1}})", "logit_bias",
                   "logit_bias keys must be token ids");
  completion_error(R"({"prompt": "p", "logit_bias": {"5": 200}})", "logit_bias",
                   "logit_bias values must be in [-100, 100], got 200");
  completion_error(R"({"prompt": "p", "logit_bias": {"5": "a"}})", "logit_bias",
                   "logit_bias values must be numbers");
  ParseOptions small;
  small.vocab_size = 10;
  completion_error(R"({"prompt": "p", "stop_token_ids": [10]})", "stop_token_ids",
                   "stop_token_ids must be in [0, 9], got 10", small);
  completion_error(R"({"prompt": "p", "logit_bias": {"12": 1}})", "logit_bias",
                   "logit_bias keys must be in [0, 9], got 12", small);
}

TEST(CompletionRequest, WrongTypesNameTheField) {
  completion_error(R"({"prompt": "p", "temperature": "hot"})", "temperature",
                   "temperature must be a number");
  completion_error(R"({"prompt": "p", "max_tokens": "5"})", "max_tokens",
                   "max_tokens must be an integer, got \"5\"");
  completion_error(R"({"prompt": "p", "max_tokens": 1.5})", "max_tokens",
                   "max_tokens must be an integer");
  completion_error(R"({"prompt": "p", "n": 1.5})", "n", "n must be an integer");
  completion_error(R"({"prompt": "p", "stream": "yes"})", "stream",
                   "stream must be a boolean, got a string");
  completion_error(R"({"prompt": "p", "echo": 1})", "echo", "echo must be a boolean");
  completion_error(R"({"prompt": "p", "stop": 5})", "stop", "stop must be a string or a list");
  completion_error(R"({"prompt": "p", "stop": ["a", 1]})", "stop", "stop must be a string");
  completion_error(R"({"prompt": "p", "seed": "x"})", "seed", "seed must be an integer");
  completion_error(R"({"prompt": "p", "model": 5})", "model", "model must be a string");
  completion_error(R"({"prompt": "p", "user": 5})", "user", "user must be a string");
  completion_error(R"({"prompt": "p", "ignore_eos": "true"})", "ignore_eos",
                   "ignore_eos must be a boolean");
  completion_error(R"({"prompt": "p", "logit_bias": [1]})", "logit_bias",
                   "logit_bias must be an object");
  completion_error(R"({"prompt": "p", "logprobs": true})", "logprobs",
                   "logprobs must be an integer");
  completion_error(R"({"prompt": "p", "stream": true, "stream_options": true})", "stream_options",
                   "stream_options must be an object");
}

TEST(CompletionRequest, UnknownAndUnsupportedFields) {
  completion_error(R"({"prompt": "p", "foo": 1})", "foo",
                   "Unrecognized request argument supplied: foo");
  completion_error(R"({"prompt": "p", "max_new_tokens": 5})", "max_new_tokens",
                   "Unrecognized request argument supplied: max_new_tokens");
  completion_error(R"({"prompt": "p", "messages": []})", "messages", "Unrecognized");
  completion_error(R"({"prompt": "p", "top_logprobs": 2})", "top_logprobs", "Unrecognized");
  completion_error(R"({"prompt": "p", "response_format": {"type": "json_object"}})",
                   "response_format", "response_format type 'json_object' is not supported");
  completion_error(R"({"prompt": "p", "regex": "a+"})", "regex", "('regex') is not supported");
  completion_error(R"({"prompt": "p", "json_schema": "{}"})", "json_schema", "not supported");
  completion_error(R"({"prompt": "p", "suffix": "end"})", "suffix", "suffix is not supported");
  completion_error(R"({"prompt": "p", "best_of": 3})", "best_of",
                   "best_of (3) other than n (1) is not supported");
  completion_error(R"({"prompt": "p", "echo": true, "logprobs": 1})", "echo",
                   "echo together with logprobs is not supported");
  completion_error(R"({"prompt": "p", "stream_options": {"include_usage": true}})",
                   "stream_options", "only allowed when 'stream' is true");
  completion_error(R"({"prompt": "p", "stream": true, "stream_options": {"foo": 1}})",
                   "stream_options.foo", "Unrecognized request argument supplied");
  // Documented fields that do not change generation are accepted and reported.
  OpenAIRequest r = completion(
      R"({"prompt": "p", "metadata": {"a": "b"}, "store": false, "response_format": {"type": "text"}})");
  EXPECT_EQ(r.ignored_fields, (std::vector<std::string>{"metadata", "store"}));
  OpenAIRequest s =
      completion(R"({"prompt": "p", "stream": true, "stream_options": {"include_usage": false,
                     "continuous_usage_stats": true}})");
  EXPECT_FALSE(s.include_usage);
  EXPECT_TRUE(s.continuous_usage_stats);
}

TEST(RequestBody, MalformedJsonAndNonObjects) {
  expect_error([] { parse_json_body("{\"prompt\": "); }, 400, "<none>", "Invalid JSON body");
  expect_error([] { parse_json_body(""); }, 400, "<none>", "Invalid JSON body");
  expect_error([] { parse_json_body("[1, 2]"); }, 400, "<none>",
               "must be a JSON object, got an array");
  expect_error([] { parse_json_body("{\"prompt\": \"\xff\xfe\"}"); }, 400, "<none>",
               "Invalid JSON body");
  expect_error([] { parse_completion_request(ojson::array()); }, 400, "<none>",
               "must be a JSON object");
  expect_error([] { parse_chat_request(ojson("x")); }, 400, "<none>", "must be a JSON object");
  ojson ok = parse_json_body(R"({"b": 1, "a": 2})");
  EXPECT_EQ(ok.begin().key(), "b");  // key order kept
}

// Found by fuzz/fuzz_request: a number out of double's range escaped as nlohmann's out_of_range
// instead of an ApiError, and deep nesting (recursive copies / dumps) overflowed the stack.
TEST(RequestBody, NumberOutOfRangeAndDeepNesting) {
  expect_error([] { parse_json_body(R"({"prompt": "a", "temperature": 1e400})"); }, 400, "<none>",
               "Invalid JSON body");
  const std::string deep = std::string(1u << 20, '[') + std::string(1u << 20, ']');
  expect_error([&] { parse_json_body("{\"prompt\": \"a\", \"stop\": " + deep + "}"); }, 400,
               "<none>", "nested deeper than 256 levels");
  std::string ok_depth = std::string(255, '[') + std::string(255, ']');
  EXPECT_NO_THROW(parse_json_body("{\"x\": " + ok_depth + "}"));  // 256 levels with the object
}

// ---- chat ----

TEST(ChatRequest, MultiTurnWithSystemToolsAndContentParts) {
  OpenAIRequest r = chat(R"({
    "model": "m",
    "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "developer", "content": [{"type": "text", "text": "Rule 1"}]},
      {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                   {"type": "text", "text": "there"}], "name": "bob"},
      {"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"C\"}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
      {"role": "assistant", "content": "It is 18C."},
      {"role": "user", "content": "Thanks"}
    ]})");
  EXPECT_TRUE(r.is_chat());
  ASSERT_EQ(r.messages.size(), 7u);
  EXPECT_EQ(r.messages[0], J(R"({"role": "system", "content": "Be brief."})"));
  EXPECT_EQ(r.messages[1], J(R"({"role": "system", "content": "Rule 1"})"));
  EXPECT_EQ(r.messages[2], J(R"({"role": "user", "content": "Hello\nthere", "name": "bob"})"));
  EXPECT_EQ(r.messages[3]["content"], "");
  const ojson& args = r.messages[3]["tool_calls"][0]["function"]["arguments"];
  ASSERT_TRUE(args.is_object());
  EXPECT_EQ(args.begin().key(), "city");
  EXPECT_EQ(args["unit"], "C");
  EXPECT_EQ(r.messages[3]["tool_calls"][0]["id"], "call_1");
  EXPECT_EQ(r.messages[4], J(R"({"role": "tool", "content": "18C", "tool_call_id": "call_1"})"));
  EXPECT_EQ(r.messages[6]["content"], "Thanks");
  // Chat defaults: no max_tokens limit of its own (the scheduler clips to the context).
  EXPECT_EQ(r.params.max_new_tokens, SamplingParams::kNoMaxNewTokens);
  EXPECT_TRUE(r.add_generation_prompt);
  EXPECT_FALSE(r.prompt_text.has_value());
  ChatTemplateOptions o = r.chat_template_options();
  EXPECT_TRUE(o.add_generation_prompt);
  EXPECT_TRUE(o.tools.is_null());
  EXPECT_TRUE(o.extra.empty());
}

TEST(ChatRequest, MaxCompletionTokensWinsAndSamplingMaps) {
  OpenAIRequest r = chat(
      R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
          "max_completion_tokens": 20, "temperature": 0, "seed": 7, "n": 3, "stop": "END",
          "stream": true, "stream_options": {"include_usage": true}})");
  EXPECT_EQ(r.params.max_new_tokens, 20);
  EXPECT_DOUBLE_EQ(r.params.temperature, 0.0);
  EXPECT_TRUE(r.params.is_greedy());
  EXPECT_EQ(*r.params.seed, 7u);
  EXPECT_EQ(r.n, 3);
  EXPECT_EQ(r.params.stop, (std::vector<std::string>{"END"}));
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(chat(R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10})")
                .params.max_new_tokens,
            10);
  chat_error(R"({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -2})",
             "max_completion_tokens", "max_completion_tokens must be at least 0");
}

TEST(ChatRequest, Logprobs) {
  OpenAIRequest r = chat(R"({"messages": [{"role": "user", "content": "hi"}],
                             "logprobs": true, "top_logprobs": 5})");
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 5);
  EXPECT_TRUE(r.params.return_logprob);
  EXPECT_EQ(r.params.top_logprobs_num, 5);
  OpenAIRequest plain =
      chat(R"({"messages": [{"role": "user", "content": "hi"}], "logprobs": true})");
  EXPECT_TRUE(plain.params.return_logprob);
  EXPECT_EQ(plain.params.top_logprobs_num, 0);
  OpenAIRequest off = chat(R"({"messages": [{"role": "user", "content": "hi"}], "logprobs": false,
               "top_logprobs": 0})");
  EXPECT_FALSE(off.params.return_logprob);
  chat_error(R"({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2})",
             "top_logprobs", "top_logprobs requires logprobs to be true");
  chat_error(R"({"messages": [{"role": "user", "content": "hi"}], "logprobs": true,
                 "top_logprobs": 21})",
             "top_logprobs", "top_logprobs must be in [0, 20], got 21");
  chat_error(R"({"messages": [{"role": "user", "content": "hi"}], "logprobs": 2})", "logprobs",
             "logprobs must be a boolean, got an integer");
}

TEST(ChatRequest, ToolsToolChoiceAndTemplateKwargs) {
  OpenAIRequest r = chat(R"({
    "messages": [{"role": "user", "content": "weather?"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
               "parameters": {"type": "object", "properties": {"z": {"type": "string"},
                              "a": {"type": "string"}}, "required": ["z"]}}}],
    "tool_choice": "auto", "parallel_tool_calls": false,
    "chat_template_kwargs": {"enable_thinking": false}, "add_generation_prompt": true,
    "separate_reasoning": false})");
  ASSERT_TRUE(r.tools.is_array());
  // Key order of tool schemas is kept (templates print them with tojson).
  EXPECT_EQ(r.tools[0]["function"]["parameters"]["properties"].dump(),
            R"({"z":{"type":"string"},"a":{"type":"string"}})");
  EXPECT_EQ(r.tool_choice, "auto");
  EXPECT_FALSE(r.separate_reasoning);
  EXPECT_EQ(r.ignored_fields, (std::vector<std::string>{"parallel_tool_calls"}));
  ChatTemplateOptions o = r.chat_template_options();
  EXPECT_EQ(o.tools, r.tools);
  EXPECT_EQ(o.extra, J(R"({"enable_thinking": false})"));

  OpenAIRequest none = chat(R"({"messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"})");
  EXPECT_TRUE(none.chat_template_options().tools.is_null());
  EXPECT_FALSE(chat(R"({"messages": [{"role": "user", "content": "x"}],
                        "add_generation_prompt": false})")
                   .chat_template_options()
                   .add_generation_prompt);

  const char* base = R"({"messages": [{"role": "user", "content": "x"}], )";
  auto with = [&](const char* rest) { return std::string(base) + rest + "}"; };
  chat_error(with(R"("tool_choice": "required")").c_str(), "tool_choice",
             "tool_choice \"required\" is not supported");
  chat_error(with(R"("tool_choice": {"type": "function", "function": {"name": "f"}})").c_str(),
             "tool_choice", "tool_choice naming a function is not supported");
  chat_error(with(R"("tool_choice": "sometimes")").c_str(), "tool_choice",
             "tool_choice must be \"none\", \"auto\"");
  chat_error(with(R"("tools": {"type": "function"})").c_str(), "tools", "tools must be a list");
  chat_error(with(R"("tools": [{"type": "code", "function": {"name": "f"}}])").c_str(),
             "tools[0].type", "tools[0].type must be \"function\"");
  chat_error(with(R"("tools": [{"type": "function"}])").c_str(), "tools[0].function",
             "tools[0].function is required");
  chat_error(with(R"("tools": [{"type": "function", "function": {"description": "x"}}])").c_str(),
             "tools[0].function.name", "tools[0].function.name is required");
  chat_error(with(R"("tools": [{"type": "function", "function": {"name": "f", "parameters": 1}}])")
                 .c_str(),
             "tools[0].function.parameters", "must be an object");
  chat_error(with(R"("chat_template_kwargs": [1])").c_str(), "chat_template_kwargs",
             "chat_template_kwargs must be an object");
  chat_error(with(R"("response_format": {"type": "json_schema", "json_schema": {}})").c_str(),
             "response_format", "response_format type 'json_schema' is not supported");
  chat_error(with(R"("response_format": {})").c_str(), "response_format",
             "response_format.type is required");
  chat_error(with(R"("echo": true)").c_str(), "echo", "Unrecognized request argument");
  chat_error(with(R"("prompt": "x")").c_str(), "prompt", "Unrecognized request argument");
  chat_error(with(R"("functions": [])").c_str(), "functions", "'functions' is not supported");
  chat_error(with(R"("modalities": ["text", "audio"])").c_str(), "modalities",
             "Output modality \"audio\" is not supported");
  EXPECT_NO_THROW(chat(with(R"("modalities": ["text"], "reasoning_effort": "low")").c_str()));
}

TEST(ChatRequest, MalformedMessages) {
  chat_error(R"({"model": "m"})", "messages", "messages is required");
  chat_error(R"({"messages": "hi"})", "messages", "messages must be a list, got a string");
  chat_error(R"({"messages": []})", "messages", "messages must not be empty");
  chat_error(R"({"messages": ["hi"]})", "messages[0]", "messages[0] must be an object");
  chat_error(R"({"messages": [{"content": "hi"}]})", "messages[0].role",
             "messages[0].role is required");
  chat_error(R"({"messages": [{"role": 1, "content": "hi"}]})", "messages[0].role",
             "messages[0].role must be a string");
  chat_error(
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "hi"}]})",
      "messages[1].role", "messages[1].role 'bot' is unknown");
  chat_error(R"({"messages": [{"role": "user"}]})", "messages[0].content",
             "messages[0].content is required");
  chat_error(R"({"messages": [{"role": "user", "content": null}]})", "messages[0].content",
             "messages[0].content is required");
  chat_error(R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content",
             "must be a string or a list of content parts, got an integer");
  chat_error(R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
             {"type": "image_url", "image_url": {"url": "http://x"}}]}]})",
             "messages[0].content[1]", "Content part type 'image_url'");
  chat_error(R"({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]})",
             "messages[0].content[0]", "is not supported");
  chat_error(R"({"messages": [{"role": "user", "content": [{"type": "blob"}]}]})",
             "messages[0].content[0]", "messages[0].content[0].type 'blob' is unknown");
  chat_error(R"({"messages": [{"role": "user", "content": [{"text": "a"}]}]})",
             "messages[0].content[0]", "messages[0].content[0].type is required");
  chat_error(R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})",
             "messages[0].content[0]", "messages[0].content[0].text is required");
  chat_error(R"({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]})",
             "messages[0].content[0].text", "must be a string");
  chat_error(R"({"messages": [{"role": "user", "content": "a", "name": 3}]})", "messages[0].name",
             "messages[0].name must be a string");
  chat_error(R"({"messages": [{"role": "user", "content": "a", "tool_calls": []}]})",
             "messages[0].tool_calls", "only allowed on assistant messages");
  chat_error(R"({"messages": [{"role": "assistant", "tool_calls": [{"type": "function",
             "function": {"name": "f", "arguments": "{bad"}}]}]})",
             "messages[0].tool_calls[0].function.arguments", "must be a JSON object");
  chat_error(R"({"messages": [{"role": "assistant", "tool_calls": [{"type": "function"}]}]})",
             "messages[0].tool_calls[0]", "messages[0].tool_calls[0].function is required");
}

TEST(ChatRequest, NormalizedMessagesRenderWithAChatTemplate) {
  ChatTemplate t(
      "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
      "{% if tools %}{{ tools | tojson }}\n{% endif %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}"
      "{% if enable_thinking is defined and not enable_thinking %}/no_think{% endif %}");
  OpenAIRequest r = chat(R"({"messages": [
      {"role": "system", "content": [{"type": "text", "text": "S"}]},
      {"role": "user", "content": "U"}, {"role": "assistant", "content": null}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"b": 1, "a": 2}}}],
      "chat_template_kwargs": {"enable_thinking": false}})");
  const std::string out = t.render(r.messages, r.chat_template_options());
  EXPECT_EQ(out.substr(0, 23), "<system>S\n<user>U\n<assi");
  EXPECT_NE(out.find(R"("parameters": {"b": 1, "a": 2})"), std::string::npos) << out;
  EXPECT_NE(out.find("<assistant>/no_think"), std::string::npos) << out;
}

// ---- model and prompt-length checks ----

TEST(ModelCheck, EmptyOrServedNameAcceptedOthers404) {
  EXPECT_NO_THROW(check_model("", "stories"));
  EXPECT_NO_THROW(check_model("stories", "stories"));
  expect_error([] { check_model("gpt-4", "stories"); }, 404, "model",
               "The model `gpt-4` does not exist.");
  try {
    check_model("gpt-4", "stories");
  } catch (const ApiError& e) {
    // OpenAI's error body: {"error": {"message", "type", "param", "code"}}.
    const nlohmann::json body = e.to_json();
    EXPECT_EQ(body["error"]["type"], "model_not_found");
    EXPECT_EQ(body["error"]["param"], "model");
    EXPECT_EQ(body["error"]["code"], 404);
    EXPECT_TRUE(body["error"]["message"].is_string());
  }
}

TEST(PromptLength, EmptyOverlongAndOutOfVocab) {
  OpenAIRequest c = completion(R"({"prompt": "p", "max_tokens": 10})");
  EXPECT_NO_THROW(check_prompt_length(c, {1, 2, 3}, 13));
  expect_error([&] { check_prompt_length(c, {}, 100); }, 400, "prompt", "The prompt is empty");
  expect_error(
      [&] {
        check_prompt_length(c, {1, 2, 3, 4}, 13);
      },
      400, "prompt",
      "This model's maximum context length is 13 tokens. However, you requested 14 "
      "tokens (4 in the prompt, 10 in the completion)");
  expect_error(
      [&] {
        check_prompt_length(c, {1, 2, 3}, 3);
      },
      400, "prompt", "your prompt has 3 tokens");
  expect_error(
      [&] {
        check_prompt_length(c, {1, 50}, 100, 50);
      },
      400, "prompt", "Token id 50 is out of vocabulary [0, 50)");
  OpenAIRequest ch = chat(R"({"messages": [{"role": "user", "content": "x"}]})");
  EXPECT_NO_THROW(
      check_prompt_length(ch, std::vector<int32_t>(99, 1), 100));  // no limit of its own
  expect_error([&] { check_prompt_length(ch, std::vector<int32_t>(100, 1), 100); }, 400, "messages",
               "maximum context length is 100 tokens");
}

// Found by fuzz/fuzz_request (UBSan: signed overflow in prompt + max_tokens): a max_tokens near
// INT64_MAX wrapped the sum negative and the request passed the context check.
TEST(PromptLength, HugeMaxTokensDoesNotOverflow) {
  OpenAIRequest c = completion(R"({"prompt": "p", "max_tokens": 9223372036854775806})");
  expect_error(
      [&] {
        check_prompt_length(c, {1, 2, 3}, 4096);
      },
      400, "prompt",
      "However, you requested 9223372036854775809 tokens (3 in the prompt, "
      "9223372036854775806 in the completion)");
}

}  // namespace
}  // namespace dpserve
