// OpenAI response objects, streaming chunk sequences, logprobs shapes and SSE framing. Expected
// objects are written by hand from OpenAI's API reference (completion, chat.completion,
// chat.completion.chunk, the legacy completions logprobs object), not from this code's output.

#include <filesystem>
#include <memory>
#include <set>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dpserve/openai/protocol.h"
#include "dpserve/openai/response.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {
namespace {

using ojson = nlohmann::ordered_json;
using json = nlohmann::json;

// Order-insensitive comparison form.
json plain(const ojson& j) { return json::parse(j.dump()); }

OpenAIRequest completion(const char* body) { return parse_completion_request(ojson::parse(body)); }

OpenAIRequest chat_req(const char* extra = "") {
  return parse_chat_request(ojson::parse(
      std::string(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}])") + extra +
      "}"));
}

ResponseMeta meta(const char* id, std::string echo = "") {
  ResponseMeta m;
  m.id = id;
  m.created = 1700000000;
  m.model = "stories";
  m.echo_text = std::move(echo);
  return m;
}

ChoiceDelta delta(int64_t index, std::string text, int64_t tokens, json finish = nullptr) {
  ChoiceDelta d;
  d.index = index;
  d.text = std::move(text);
  d.num_tokens = tokens;
  d.finish_reason = std::move(finish);
  return d;
}

const json kLength = {{"type", "length"}, {"length", 2}};

TEST(FinishReason, SGLangToOpenAI) {
  EXPECT_EQ(openai_finish_reason(json{{"type", "stop"}, {"matched", 2}}), "stop");
  EXPECT_EQ(openai_finish_reason(json{{"type", "stop"}, {"matched", "###"}}), "stop");
  EXPECT_EQ(openai_finish_reason(kLength), "length");
  EXPECT_EQ(openai_finish_reason(json{{"type", "abort"}, {"message", "client gone"}}), "abort");
  EXPECT_TRUE(openai_finish_reason(nullptr).is_null());
  EXPECT_EQ(matched_stop(json{{"type", "stop"}, {"matched", 2}}), 2);
  EXPECT_EQ(matched_stop(json{{"type", "stop"}, {"matched", "###"}}), "###");
  EXPECT_TRUE(matched_stop(kLength).is_null());
  EXPECT_TRUE(matched_stop(nullptr).is_null());
}

TEST(CompletionResponse, MatchesOpenAISchema) {
  OpenAIRequest req = completion(R"({"model": "stories", "prompt": "Once", "max_tokens": 2})");
  ResponseBuilder b(req, meta("cmpl-abc"));
  ChoiceDelta first = delta(0, "Hello", 1);
  first.prompt_tokens = 5;
  first.cached_tokens = 2;
  EXPECT_TRUE(b.add(first).empty() == false);
  EXPECT_FALSE(b.all_finished());
  b.add(delta(0, " world", 1, kLength));
  EXPECT_TRUE(b.all_finished());
  const json expected = json::parse(R"({
    "id": "cmpl-abc",
    "object": "text_completion",
    "created": 1700000000,
    "model": "stories",
    "choices": [{"index": 0, "text": "Hello world", "logprobs": null,
                 "finish_reason": "length", "matched_stop": null}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
              "prompt_tokens_details": {"cached_tokens": 2}}
  })");
  EXPECT_EQ(plain(b.response()), expected);
  // The documented key order of the top-level object.
  std::vector<std::string> keys;
  const ojson response = b.response();
  for (const auto& [k, v] : response.items()) keys.push_back(k);
  EXPECT_EQ(keys,
            (std::vector<std::string>{"id", "object", "created", "model", "choices", "usage"}));
}

TEST(CompletionResponse, NChoicesEchoAndUsageSums) {
  OpenAIRequest req = completion(R"({"prompt": "Once", "n": 2, "echo": true})");
  ResponseBuilder b(req, meta("cmpl-n", "Once"));
  b.set_prompt_tokens(3, 0);
  b.add(delta(1, " there", 1));
  b.add(delta(0, " upon", 1));
  b.add(delta(1, " was", 1, json{{"type", "stop"}, {"matched", 2}}));
  EXPECT_FALSE(b.all_finished());
  b.add(delta(0, "", 0, json{{"type", "abort"}, {"message", "x"}}));
  const json r = plain(b.response());
  ASSERT_EQ(r["choices"].size(), 2u);
  EXPECT_EQ(r["choices"][0]["index"], 0);
  EXPECT_EQ(r["choices"][0]["text"], "Once upon");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "abort");
  EXPECT_EQ(r["choices"][1]["text"], "Once there was");
  EXPECT_EQ(r["choices"][1]["finish_reason"], "stop");
  EXPECT_EQ(r["choices"][1]["matched_stop"], 2);
  EXPECT_EQ(r["usage"], json::parse(R"({"prompt_tokens": 3, "completion_tokens": 3,
      "total_tokens": 6, "prompt_tokens_details": {"cached_tokens": 0}})"));
  EXPECT_EQ(b.text(1), "Once there was");
}

TEST(ChatResponse, MatchesOpenAISchema) {
  OpenAIRequest req = chat_req();
  ResponseBuilder b(req, meta("chatcmpl-xyz"));
  b.set_prompt_tokens(9, 4);
  b.add(delta(0, "Hi", 1));
  b.add(delta(0, " there!", 2, json{{"type", "stop"}, {"matched", "###"}}));
  const json expected = json::parse(R"({
    "id": "chatcmpl-xyz",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "stories",
    "choices": [{"index": 0,
                 "message": {"role": "assistant", "content": "Hi there!", "refusal": null},
                 "logprobs": null, "finish_reason": "stop", "matched_stop": "###"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
              "prompt_tokens_details": {"cached_tokens": 4}}
  })");
  EXPECT_EQ(plain(b.response()), expected);
}

TEST(ChatStreaming, RoleFirstFinishLastUsageChunkAndDone) {
  OpenAIRequest req = chat_req(R"(, "stream": true, "stream_options": {"include_usage": true})");
  ResponseBuilder b(req, meta("chatcmpl-s"));
  std::vector<ojson> chunks = b.start();
  for (auto c : b.add(delta(0, "Hel", 1))) chunks.push_back(c);
  for (auto c : b.add(delta(0, "", 0))) chunks.push_back(c);  // nothing visible: no chunk
  for (auto c : b.add(delta(0, "lo", 1))) chunks.push_back(c);
  ChoiceDelta last = delta(0, "", 1, kLength);
  last.prompt_tokens = 4;
  for (auto c : b.add(last)) chunks.push_back(c);
  for (auto c : b.end()) chunks.push_back(c);
  EXPECT_TRUE(b.start().empty());  // role chunk only once

  const char* kHead = R"("id": "chatcmpl-s", "object": "chat.completion.chunk",
                         "created": 1700000000, "model": "stories")";
  auto expect_chunk = [&](const ojson& got, const std::string& choices, const std::string& usage) {
    EXPECT_EQ(plain(got), json::parse("{" + std::string(kHead) + R"(, "choices": )" + choices +
                                      R"(, "usage": )" + usage + "}"));
  };
  ASSERT_EQ(chunks.size(), 5u);
  expect_chunk(chunks[0], R"([{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "logprobs": null, "finish_reason": null}])",
               "null");
  expect_chunk(chunks[1], R"([{"index": 0, "delta": {"content": "Hel"}, "logprobs": null,
                              "finish_reason": null}])",
               "null");
  expect_chunk(chunks[2], R"([{"index": 0, "delta": {"content": "lo"}, "logprobs": null,
                              "finish_reason": null}])",
               "null");
  expect_chunk(chunks[3], R"([{"index": 0, "delta": {}, "logprobs": null,
                              "finish_reason": "length", "matched_stop": null}])",
               "null");
  expect_chunk(chunks[4], "[]", R"({"prompt_tokens": 4, "completion_tokens": 3,
      "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 0}})");

  // SSE framing: one "data: <json>\n\n" event per chunk, then "data: [DONE]\n\n".
  std::string body;
  for (const ojson& c : chunks) body += sse_event(c);
  body += sse_done();
  size_t pos = 0, events = 0;
  while (pos < body.size()) {
    const size_t end = body.find("\n\n", pos);
    ASSERT_NE(end, std::string::npos);
    const std::string ev = body.substr(pos, end - pos);
    ASSERT_EQ(ev.rfind("data: ", 0), 0u) << ev;
    EXPECT_EQ(ev.find('\n'), std::string::npos) << "one line per event";
    const std::string payload = ev.substr(6);
    if (payload == "[DONE]") {
      EXPECT_EQ(end + 2, body.size()) << "[DONE] is the last event";
    } else {
      EXPECT_EQ(json::parse(payload), plain(chunks[events]));
    }
    ++events;
    pos = end + 2;
  }
  EXPECT_EQ(events, chunks.size() + 1);
  // The non-streaming object from the same builder agrees with the stream.
  EXPECT_EQ(b.response()["choices"][0]["message"]["content"], "Hello");
}

TEST(ChatStreaming, WithoutUsageAndWithNChoices) {
  OpenAIRequest req = chat_req(R"(, "stream": true, "n": 2)");
  ResponseBuilder b(req, meta("chatcmpl-n"));
  std::vector<ojson> chunks = b.add(delta(1, "B", 1));  // first output of choice 1: role first
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0]["choices"][0]["index"], 1);
  EXPECT_EQ(chunks[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(chunks[1]["choices"][0]["delta"]["content"], "B");
  EXPECT_FALSE(chunks[1].contains("usage"));
  std::vector<ojson> rest = b.start();  // choice 0's role chunk
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0]["choices"][0]["index"], 0);
  EXPECT_TRUE(b.end().empty());
}

TEST(ChatStreaming, ContinuousUsageStats) {
  OpenAIRequest req =
      chat_req(R"(, "stream": true, "stream_options": {"continuous_usage_stats": true})");
  ResponseBuilder b(req, meta("chatcmpl-c"));
  b.set_prompt_tokens(2);
  std::vector<ojson> chunks = b.add(delta(0, "a", 1));
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[1]["usage"]["completion_tokens"], 1);
  EXPECT_EQ(chunks[1]["usage"]["total_tokens"], 3);
}

TEST(CompletionStreaming, TextChunksAndEcho) {
  OpenAIRequest req = completion(R"({"prompt": "Once", "stream": true, "echo": true})");
  ResponseBuilder b(req, meta("cmpl-s", "Once"));
  std::vector<ojson> chunks = b.start();
  for (auto c : b.add(delta(0, " upon", 1, kLength))) chunks.push_back(c);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(plain(chunks[0]), json::parse(R"({"id": "cmpl-s", "object": "text_completion",
      "created": 1700000000, "model": "stories", "choices": [{"index": 0, "text": "Once",
      "logprobs": null, "finish_reason": null}]})"));
  EXPECT_EQ(plain(chunks[1]), json::parse(R"({"id": "cmpl-s", "object": "text_completion",
      "created": 1700000000, "model": "stories", "choices": [{"index": 0, "text": " upon",
      "logprobs": null, "finish_reason": "length", "matched_stop": null}]})"));
  EXPECT_EQ(b.response()["choices"][0]["text"], "Once upon");

  // Without echo nothing is sent before the first token.
  OpenAIRequest plain_req = completion(R"({"prompt": "Once", "stream": true})");
  ResponseBuilder p(plain_req, meta("cmpl-p"));
  EXPECT_TRUE(p.start().empty());
  EXPECT_EQ(p.add(delta(0, "x", 1)).size(), 1u);
}

std::vector<TokenLogprobEntry> two_entries() {
  return {{"Hel", -0.5f, {{"Hel", -0.5f}, {"He", -1.5f}}},
          {"lo", -0.25f, {{"p", -0.125f}, {"x", -2.0f}}}};  // chosen token not in the top list
}

TEST(Logprobs, CompletionsShape) {
  OpenAIRequest req = completion(R"({"prompt": "p", "logprobs": 2, "stream": true})");
  ResponseBuilder b(req, meta("cmpl-l"));
  std::vector<TokenLogprobEntry> e = two_entries();
  ChoiceDelta d1 = delta(0, "Hel", 1);
  d1.logprobs = {e[0]};
  ChoiceDelta d2 = delta(0, "lo", 1, kLength);
  d2.logprobs = {e[1]};
  std::vector<ojson> c1 = b.add(d1), c2 = b.add(d2);
  // OpenAI's legacy logprobs object: tokens, token_logprobs, top_logprobs (a dict per position
  // with up to logprobs + 1 entries: the alternatives and the chosen token), text_offset.
  const json expected = json::parse(R"({
    "tokens": ["Hel", "lo"], "token_logprobs": [-0.5, -0.25],
    "top_logprobs": [{"Hel": -0.5, "He": -1.5}, {"p": -0.125, "x": -2.0, "lo": -0.25}],
    "text_offset": [0, 3]})");
  EXPECT_EQ(plain(b.response()["choices"][0]["logprobs"]), expected);
  // Each chunk carries its own tokens, text_offset continuing across chunks.
  EXPECT_EQ(plain(c1[0]["choices"][0]["logprobs"]),
            json::parse(R"({"tokens": ["Hel"], "token_logprobs": [-0.5],
                            "top_logprobs": [{"Hel": -0.5, "He": -1.5}], "text_offset": [0]})"));
  EXPECT_EQ(c2[0]["choices"][0]["logprobs"]["text_offset"], json::parse("[3]"));
}

TEST(Logprobs, ChatShape) {
  OpenAIRequest req = chat_req(R"(, "logprobs": true, "top_logprobs": 2)");
  ResponseBuilder b(req, meta("chatcmpl-l"));
  ChoiceDelta d = delta(0, "Hello", 2, kLength);
  d.logprobs = two_entries();
  b.add(d);
  // {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal"}
  const json expected = json::parse(R"({"content": [
    {"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108],
     "top_logprobs": [{"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108]},
                      {"token": "He", "logprob": -1.5, "bytes": [72, 101]}]},
    {"token": "lo", "logprob": -0.25, "bytes": [108, 111],
     "top_logprobs": [{"token": "p", "logprob": -0.125, "bytes": [112]},
                      {"token": "x", "logprob": -2.0, "bytes": [120]}]}],
    "refusal": null})");
  EXPECT_EQ(plain(b.response()["choices"][0]["logprobs"]), expected);
}

TEST(Logprobs, NonFiniteAndFloatFormatting) {
  OpenAIRequest req = chat_req(R"(, "logprobs": true)");
  ResponseBuilder b(req, meta("chatcmpl-f"));
  ChoiceDelta d = delta(0, "ab", 2, kLength);
  d.logprobs = {{"a", -std::numeric_limits<float>::infinity(), {}}, {"b", -0.1f, {}}};
  b.add(d);
  const std::string text = dump_json(b.response());
  EXPECT_NE(text.find(R"("logprob":-9999.0)"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("logprob":-0.1,)"), std::string::npos) << text;  // not -0.10000000149
}

TEST(Logprobs, EntriesFromARealTokenizer) {
  const std::string dir = std::string(DPSERVE_SHARED_DIR) + "/models/stories260K";
  if (!std::filesystem::exists(dir + "/tokenizer.json")) GTEST_SKIP() << "no " << dir;
  std::unique_ptr<Tokenizer> tok = load_tokenizer(dir);
  const std::vector<int32_t> ids = tok->encode("Once upon a time", false);
  ASSERT_GE(ids.size(), 2u);
  std::vector<float> lps(ids.size(), -1.0f);
  std::vector<std::vector<std::pair<int32_t, float>>> top = {{{ids[1], -0.5f}, {ids[0], -1.0f}}};
  std::vector<TokenLogprobEntry> e = make_logprob_entries(*tok, ids, lps, top);
  ASSERT_EQ(e.size(), ids.size());
  // Token texts keep their leading spaces, so they concatenate to the decoded text.
  std::string joined;
  for (const TokenLogprobEntry& x : e) joined += x.token;
  EXPECT_EQ(joined, " " + tok->decode(ids)) << joined;
  ASSERT_EQ(e[0].top.size(), 2u);
  EXPECT_EQ(e[0].top[0].first, e[1].token);
  EXPECT_FLOAT_EQ(e[0].top[0].second, -0.5f);
  EXPECT_TRUE(e[1].top.empty());
}

TEST(Reasoning, SplitterAcrossChunkBoundaries) {
  ReasoningSplitter s;
  std::string reasoning, content;
  for (const char* piece : {"<th", "ink>ab", "c</thi", "nk>\n\nans", "wer <", "b>"}) {
    auto [r, c] = s.add(piece);
    reasoning += r;
    content += c;
  }
  auto [r, c] = s.flush();
  reasoning += r;
  content += c;
  EXPECT_EQ(reasoning, "abc");
  EXPECT_EQ(content, "\n\nanswer <b>");

  ReasoningSplitter open(/*starts_in_reasoning=*/true);
  auto [r2, c2] = open.add("plan</think>done");
  EXPECT_EQ(r2, "plan");
  EXPECT_EQ(c2, "done");
}

TEST(Reasoning, ChatMessageGetsReasoningContent) {
  OpenAIRequest req = chat_req(R"(, "stream": true)");
  ResponseMeta m = meta("chatcmpl-r");
  m.split_reasoning = true;
  ResponseBuilder b(req, m);
  std::vector<ojson> chunks = b.start();
  for (const char* p : {"<think>hmm", "</think>\n\n", "Yes"}) {
    for (auto c : b.add(delta(0, p, 1))) chunks.push_back(c);
  }
  for (auto c : b.add(delta(0, ".", 1, kLength))) chunks.push_back(c);
  const json msg = plain(b.response()["choices"][0]["message"]);
  EXPECT_EQ(msg, json::parse(R"({"role": "assistant", "content": "Yes.",
                                 "reasoning_content": "hmm", "refusal": null})"));
  ASSERT_EQ(chunks.size(), 4u);  // role, reasoning, content, last content with finish
  EXPECT_EQ(chunks[1]["choices"][0]["delta"], ojson::parse(R"({"reasoning_content": "hmm"})"));
  EXPECT_EQ(chunks[2]["choices"][0]["delta"], ojson::parse(R"({"content": "Yes"})"));
}

TEST(Framing, SseErrorDumpAndIds) {
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
  EXPECT_EQ(sse_event(ojson{{"a", 1}}), "data: {\"a\":1}\n\n");
  const std::string err = sse_error(ApiError(400, "bad", "invalid_request_error", "n"));
  EXPECT_EQ(err.rfind("data: ", 0), 0u);
  EXPECT_EQ(json::parse(err.substr(6)),
            json::parse(R"({"error": {"message": "bad", "type": "invalid_request_error",
                                      "param": "n", "code": 400}})"));
  // Invalid UTF-8 in text never throws: it becomes U+FFFD.
  EXPECT_EQ(dump_json(ojson(std::string("a\xff"))), "\"a\xEF\xBF\xBD\"");
  std::set<std::string> ids;
  for (int i = 0; i < 100; ++i) ids.insert(make_response_id(i % 2 == 0));
  EXPECT_EQ(ids.size(), 100u);
  const std::string id = make_response_id(false);
  EXPECT_EQ(id.rfind("cmpl-", 0), 0u);
  EXPECT_EQ(id.size(), 5u + 32u);
  EXPECT_EQ(make_response_id(true).rfind("chatcmpl-", 0), 0u);
  EXPECT_GT(unix_time_now(), 1700000000);
}

TEST(Models, ListShape) {
  // OpenAI's list: {"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}
  const json got = plain(models_list("stories", 1700000000, "/models/stories260K", 512));
  EXPECT_EQ(got, json::parse(R"({"object": "list", "data": [{"id": "stories", "object": "model",
      "created": 1700000000, "owned_by": "dpserve", "root": "/models/stories260K",
      "max_model_len": 512}]})"));
}

}  // namespace
}  // namespace dpserve
