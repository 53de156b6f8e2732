// End-to-end tests of the OpenAI routes (/v1/models, /v1/completions, /v1/chat/completions) and
// /metrics of a real `dpserve serve` on stories260K, over real HTTP (cpp-httplib, raw sockets,
// curl). Expected texts come from the offline engine (`dpserve generate --prompts-file`) and from
// stories260K's independent float64 reference, never from this server.

#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "server_process.h"

namespace {

using dpserve_test::kStories;
using dpserve_test::offline_outputs;
using dpserve_test::reference_outputs;
using dpserve_test::ServerProcess;
using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// One answer of a /v1 route, streamed or not, reduced to what both forms share.
struct Answer {
  int status = 0;
  json body;                         // the final object (non-streaming) or the error
  std::vector<std::string> texts;    // per choice
  std::vector<json> finish_reasons;  // per choice
  std::vector<json> logprobs;        // per choice: token entries (chat content / completions)
  json usage;                        // the usage object (streaming: the include_usage chunk)
  std::vector<json> chunks;          // streaming: every chunk
};

class OpenAITest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = std::make_unique<ServerProcess>(
        std::vector<std::string>{"--max-total-tokens", "8192", "--log-requests"});
    ASSERT_TRUE(server_->wait_healthy()) << server_->log();
  }
  static void TearDownTestSuite() { server_.reset(); }

  static json server_info() { return dpserve_test::server_info(*server_); }
  static void expect_all_pages_free() { dpserve_test::expect_all_pages_free(*server_); }

  static std::string model() { return kStories; }

  // POSTs a /v1 request and reduces the answer (parsing SSE when body["stream"] is true).
  static Answer post(const std::string& path, const json& body) {
    Answer a;
    httplib::Client c = server_->client();
    auto r = c.Post(path, body.dump(), "application/json");
    if (!r) return a;
    a.status = r->status;
    const bool chat = path == "/v1/chat/completions";
    if (r->status != 200 || !body.value("stream", false)) {
      a.body = json::parse(r->body, nullptr, false);
      if (r->status != 200) return a;
      EXPECT_THAT(r->get_header_value("Content-Type"), HasSubstr("application/json"));
      for (const json& ch : a.body["choices"]) {
        a.texts.push_back(chat ? ch["message"]["content"] : ch["text"]);
        a.finish_reasons.push_back(ch["finish_reason"]);
        if (ch["logprobs"].is_null()) {
          a.logprobs.push_back(nullptr);
        } else {
          a.logprobs.push_back(chat ? ch["logprobs"]["content"] : ch["logprobs"]);
        }
      }
      a.usage = a.body["usage"];
      return a;
    }
    EXPECT_THAT(r->get_header_value("Content-Type"), HasSubstr("text/event-stream"));
    const std::vector<std::string> events = dpserve_test::sse_payloads(r->body);
    EXPECT_FALSE(events.empty());
    EXPECT_EQ(events.empty() ? "" : events.back(), "[DONE]");
    const int64_t n = body.value("n", 1);
    a.texts.assign(n, "");
    a.finish_reasons.assign(n, nullptr);
    a.logprobs.assign(n, json::array());
    std::string id;
    for (size_t i = 0; i + 1 < events.size(); ++i) {
      const json chunk = json::parse(events[i]);
      a.chunks.push_back(chunk);
      EXPECT_EQ(chunk["object"], chat ? "chat.completion.chunk" : "text_completion");
      if (id.empty()) id = chunk["id"];
      EXPECT_EQ(chunk["id"], id) << "one id per stream";
      if (chunk.contains("usage") && !chunk["usage"].is_null()) a.usage = chunk["usage"];
      for (const json& ch : chunk["choices"]) {
        const int64_t k = ch["index"];
        EXPECT_TRUE(a.finish_reasons[k].is_null()) << "chunk after finish_reason: " << chunk;
        if (chat) {
          if (ch["delta"].contains("content")) a.texts[k] += ch["delta"]["content"];
        } else {
          a.texts[k] += ch["text"];
        }
        if (!ch["logprobs"].is_null()) {
          const json& entries = chat ? ch["logprobs"]["content"] : ch["logprobs"]["tokens"];
          for (const json& e : entries) a.logprobs[k].push_back(e);
        }
        if (!ch["finish_reason"].is_null()) a.finish_reasons[k] = ch["finish_reason"];
      }
    }
    return a;
  }

  static std::unique_ptr<ServerProcess> server_;
};

std::unique_ptr<ServerProcess> OpenAITest::server_;

TEST_F(OpenAITest, ModelsListsTheServedModel) {
  httplib::Client c = server_->client();
  auto r = c.Get("/v1/models");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  const json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], model());
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["owned_by"], "dpserve");
  EXPECT_EQ(j["data"][0]["max_model_len"], 512);
  EXPECT_TRUE(j["data"][0]["created"].is_number_integer());
}

TEST_F(OpenAITest, GreedyCompletionMatchesTheReference) {
  const json ref = reference_outputs();
  const std::string prompt = ref["prompt_text"];
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "stream" : "non-stream");
    json req = {{"model", model()}, {"prompt", prompt}, {"max_tokens", 32}, {"temperature", 0}};
    if (stream) {
      req["stream"] = true;
      req["stream_options"] = {{"include_usage", true}};
    }
    const Answer a = post("/v1/completions", req);
    ASSERT_EQ(a.status, 200) << a.body.dump();
    ASSERT_EQ(a.texts.size(), 1u);
    EXPECT_EQ(prompt + a.texts[0], ref["greedy"]["text"]);
    EXPECT_EQ(a.finish_reasons[0], "length");
    EXPECT_EQ(a.usage["prompt_tokens"], 5);
    EXPECT_EQ(a.usage["completion_tokens"], 32);
    EXPECT_EQ(a.usage["total_tokens"], 37);
    if (!stream) {
      EXPECT_EQ(a.body["object"], "text_completion");
      EXPECT_THAT(a.body["id"].get<std::string>(), StartsWith("cmpl-"));
      EXPECT_EQ(a.body["model"], model());
      EXPECT_TRUE(a.body["created"].is_number_integer());
    } else {
      // The usage chunk comes last, with no choices; the others carry "usage": null.
      ASSERT_FALSE(a.chunks.empty());
      EXPECT_TRUE(a.chunks.back()["choices"].empty());
      for (size_t i = 0; i + 1 < a.chunks.size(); ++i) EXPECT_TRUE(a.chunks[i]["usage"].is_null());
    }
  }
  // The prompt as token ids (with BOS) reads the same; echo prepends the prompt.
  const Answer ids = post("/v1/completions", {{"prompt", ref["prompt_ids_with_bos"]},
                                              {"max_tokens", 32},
                                              {"temperature", 0},
                                              {"echo", true}});
  ASSERT_EQ(ids.status, 200) << ids.body.dump();
  EXPECT_EQ(ids.texts[0], ref["greedy"]["text"]);
}

TEST_F(OpenAITest, ChatFromAnEmptyMessageMatchesTheBosOnlyReference) {
  // stories260K's template renders "<s>" + the trimmed contents: an empty message is BOS alone.
  const std::string expected = reference_outputs()["greedy_from_bos_only"]["text"];
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "stream" : "non-stream");
    json req = {{"model", model()},
                {"messages", {{{"role", "user"}, {"content", ""}}}},
                {"max_completion_tokens", 64},
                {"temperature", 0},
                {"stream", stream}};
    const Answer a = post("/v1/chat/completions", req);
    ASSERT_EQ(a.status, 200) << a.body.dump();
    ASSERT_FALSE(a.texts[0].empty());
    EXPECT_EQ(expected.substr(0, a.texts[0].size()), a.texts[0]);
    EXPECT_EQ(a.finish_reasons[0], "length");
    if (!stream) {
      EXPECT_EQ(a.body["object"], "chat.completion");
      EXPECT_THAT(a.body["id"].get<std::string>(), StartsWith("chatcmpl-"));
      EXPECT_EQ(a.body["choices"][0]["message"]["role"], "assistant");
      EXPECT_EQ(a.usage["prompt_tokens"], 1);
      EXPECT_EQ(a.usage["completion_tokens"], 64);
    } else {
      // The first chunk opens the assistant message.
      EXPECT_EQ(a.chunks.front()["choices"][0]["delta"]["role"], "assistant");
    }
  }
}

// Seeded sampling, top_p, stop strings and n = 2 on both routes, streamed and not, against the
// offline engine with the same parameters.
TEST_F(OpenAITest, OutputsEqualTheOfflineEngine) {
  struct Case {
    std::string text;
    json params;  // OpenAI fields
    json sglang;  // the same as SGLang sampling_params
  };
  const std::vector<Case> cases = {
      {"Once upon a time",
       {{"temperature", 0.9}, {"seed", 7}, {"max_tokens", 40}},
       {{"temperature", 0.9}, {"seed", 7}, {"max_new_tokens", 40}}},
      {"Tom had a red ball",
       {{"temperature", 1.2}, {"top_p", 0.9}, {"seed", 123}, {"max_tokens", 30}},
       {{"temperature", 1.2}, {"top_p", 0.9}, {"seed", 123}, {"max_new_tokens", 30}}},
      {"Lily",
       {{"temperature", 0}, {"stop", "."}, {"max_tokens", 60}},
       {{"temperature", 0}, {"stop", "."}, {"max_new_tokens", 60}}},
      {"Once upon a time",
       {{"temperature", 0}, {"stop", {"Lily", "park"}}, {"max_tokens", 60}},
       {{"temperature", 0}, {"stop", {"Lily", "park"}}, {"max_new_tokens", 60}}},
      {"The cat",
       {{"temperature", 0.8}, {"seed", 42}, {"n", 2}, {"max_tokens", 24}},
       {{"temperature", 0.8}, {"seed", 42}, {"n", 2}, {"max_new_tokens", 24}}},
  };
  for (bool chat : {false, true}) {
    std::vector<json> lines;
    for (const Case& c : cases) lines.push_back({{"text", c.text}, {"sampling_params", c.sglang}});
    const std::vector<json> expected = offline_outputs(lines, chat);
    ASSERT_EQ(expected.size(), cases.size() + 1);  // n = 2 gives two lines
    size_t e = 0;
    for (const Case& c : cases) {
      const int64_t n = c.params.value("n", 1);
      for (bool stream : {false, true}) {
        SCOPED_TRACE((chat ? "chat " : "completions ") + c.params.dump() +
                     (stream ? " stream" : ""));
        json req = c.params;
        req["model"] = model();
        if (chat) {
          req["messages"] = {{{"role", "user"}, {"content", c.text}}};
        } else {
          req["prompt"] = c.text;
        }
        req["stream"] = stream;
        if (stream) req["stream_options"] = {{"include_usage", true}};
        const Answer a = post(chat ? "/v1/chat/completions" : "/v1/completions", req);
        ASSERT_EQ(a.status, 200) << a.body.dump();
        ASSERT_EQ(static_cast<int64_t>(a.texts.size()), n);
        int64_t completion_tokens = 0;
        for (int64_t k = 0; k < n; ++k) {
          const json& x = expected[e + k];
          EXPECT_EQ(a.texts[k], x["text"]) << "choice " << k;
          EXPECT_EQ(a.finish_reasons[k], x["finish_reason"]["type"]) << "choice " << k;
          completion_tokens += x["completion_tokens"].get<int64_t>();
        }
        EXPECT_EQ(a.usage["completion_tokens"], completion_tokens);
        EXPECT_EQ(a.usage["prompt_tokens"], expected[e]["prompt_tokens"]);
      }
      e += static_cast<size_t>(n);
    }
    // The stop strings took effect.
    EXPECT_EQ(expected[2]["finish_reason"]["type"], "stop");
    EXPECT_THAT(expected[2]["text"].get<std::string>(), ::testing::Not(HasSubstr(".")));
  }
}

TEST_F(OpenAITest, LogprobsInOpenAIShapes) {
  // The engine's own logprobs for the same greedy tokens, from the native route.
  httplib::Client c = server_->client();
  auto native = c.Post("/generate",
                       json({{"text", "Once upon a time"},
                             {"return_logprob", true},
                             {"top_logprobs_num", 3},
                             {"sampling_params", {{"max_new_tokens", 6}, {"temperature", 0}}}})
                           .dump(),
                       "application/json");
  ASSERT_TRUE(native && native->status == 200);
  const json meta = json::parse(native->body)["meta_info"];
  const json& lps = meta["output_token_logprobs"];
  ASSERT_EQ(lps.size(), 6u);

  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "stream" : "non-stream");
    // Completions: `logprobs: 3` = the chosen token plus up to 3 alternatives per position.
    const Answer a = post("/v1/completions", {{"prompt", "Once upon a time"},
                                              {"max_tokens", 6},
                                              {"temperature", 0},
                                              {"logprobs", 3},
                                              {"stream", stream}});
    ASSERT_EQ(a.status, 200) << a.body.dump();
    if (!stream) {
      const json& l = a.logprobs[0];
      ASSERT_EQ(l["tokens"].size(), 6u);
      ASSERT_EQ(l["token_logprobs"].size(), 6u);
      ASSERT_EQ(l["top_logprobs"].size(), 6u);
      ASSERT_EQ(l["text_offset"].size(), 6u);
      std::string joined;
      for (size_t i = 0; i < 6; ++i) {
        joined += l["tokens"][i].get<std::string>();
        EXPECT_NEAR(l["token_logprobs"][i].get<double>(), lps[i][0].get<double>(), 1e-5);
        const json& top = l["top_logprobs"][i];
        ASSERT_TRUE(top.is_object());
        EXPECT_EQ(top.size(), 3u);  // greedy: the chosen token is one of the 3
        EXPECT_TRUE(top.contains(l["tokens"][i].get<std::string>()));
        if (i > 0) {
          EXPECT_EQ(l["text_offset"][i].get<int64_t>(),
                    l["text_offset"][i - 1].get<int64_t>() +
                        static_cast<int64_t>(l["tokens"][i - 1].get<std::string>().size()));
        }
      }
      EXPECT_EQ(joined, a.texts[0]);
    } else {
      EXPECT_EQ(a.logprobs[0].size(), 6u);  // one token entry per generated token
    }

    // Chat: `logprobs: true` + `top_logprobs: 2`.
    const Answer b = post("/v1/chat/completions",
                          {{"messages", {{{"role", "user"}, {"content", "Once upon a time"}}}},
                           {"max_tokens", 5},
                           {"temperature", 0},
                           {"logprobs", true},
                           {"top_logprobs", 2},
                           {"stream", stream}});
    ASSERT_EQ(b.status, 200) << b.body.dump();
    const json& content = b.logprobs[0];
    ASSERT_EQ(content.size(), 5u);
    std::string joined;
    for (const json& e : content) {
      joined += e["token"].get<std::string>();
      EXPECT_LE(e["logprob"].get<double>(), 0.0);
      ASSERT_EQ(e["top_logprobs"].size(), 2u);
      EXPECT_EQ(e["top_logprobs"][0]["token"], e["token"]);  // greedy: the best is chosen
      EXPECT_TRUE(e["bytes"].is_array());
      EXPECT_EQ(e["bytes"].size(), e["token"].get<std::string>().size());
    }
    EXPECT_EQ(joined, b.texts[0]);
  }
}

TEST_F(OpenAITest, BadInputsGetOpenAIErrorsAndTheServerKeepsServing) {
  struct Case {
    std::string name;
    std::string path;
    std::string body;  // raw bytes
    int status;
    std::string message;  // substring of error.message
    std::string param;    // expected error.param ("" = not checked)
  };
  const std::string long_text = [] {
    std::string s;
    for (int i = 0; i < 600; ++i) s += "Once upon a time ";
    return s;
  }();
  const std::string cmp = "/v1/completions";
  const std::string chat = "/v1/chat/completions";
  const std::string msgs = R"("messages": [{"role": "user", "content": "Hi"}])";
  const std::vector<Case> cases = {
      {"malformed JSON", cmp, R"({"prompt": "Once)", 400, "Invalid JSON", ""},
      {"empty body", chat, "", 400, "Invalid JSON", ""},
      {"not an object", cmp, "[1, 2]", 400, "JSON object", ""},
      {"no prompt", cmp, R"({"max_tokens": 5})", 400, "prompt is required", "prompt"},
      {"no messages", chat, R"({"max_tokens": 5})", 400, "messages is required", "messages"},
      {"prompt wrong type", cmp, R"({"prompt": 5})", 400, "prompt must be", "prompt"},
      {"max_tokens wrong type", cmp, R"({"prompt": "a", "max_tokens": "ten"})", 400,
       "max_tokens must be an integer", "max_tokens"},
      {"temperature wrong type", chat, "{" + msgs + R"(, "temperature": "hot"})", 400,
       "temperature", "temperature"},
      {"stream wrong type", cmp, R"({"prompt": "a", "stream": "yes"})", 400,
       "stream must be a boolean", "stream"},
      {"n not an integer", cmp, R"({"prompt": "a", "n": 1.5})", 400, "n must be an integer", "n"},
      {"unknown field", cmp, R"({"prompt": "a", "bogus": 1})", 400,
       "Unrecognized request argument supplied: bogus", "bogus"},
      {"unknown chat field", chat, "{" + msgs + R"(, "warmth": 1})", 400,
       "Unrecognized request argument", "warmth"},
      {"temperature negative", cmp, R"({"prompt": "a", "temperature": -1})", 400, "temperature",
       "temperature"},
      {"top_p out of range", chat, "{" + msgs + R"(, "top_p": 1.5})", 400, "top_p", "top_p"},
      {"n zero", cmp, R"({"prompt": "a", "n": 0})", 400, "n must be in", "n"},
      {"n too large", chat, "{" + msgs + R"(, "n": 1000})", 400, "n must be in", "n"},
      {"completions logprobs too large", cmp, R"({"prompt": "a", "logprobs": 21})", 400,
       "logprobs must be in", "logprobs"},
      {"completions logprobs boolean", cmp, R"({"prompt": "a", "logprobs": true})", 400,
       "logprobs must be an integer", "logprobs"},
      {"chat logprobs integer", chat, "{" + msgs + R"(, "logprobs": 3})", 400,
       "logprobs must be a boolean", "logprobs"},
      {"top_logprobs without logprobs", chat, "{" + msgs + R"(, "top_logprobs": 2})", 400,
       "requires logprobs", "top_logprobs"},
      {"top_logprobs too large", chat, "{" + msgs + R"(, "logprobs": true, "top_logprobs": 21})",
       400, "top_logprobs must be in", "top_logprobs"},
      {"stream_options without stream", cmp,
       R"({"prompt": "a", "stream_options": {"include_usage": true}})", 400, "stream_options",
       "stream_options"},
      {"empty prompt", cmp, R"({"prompt": ""})", 400, "empty", "prompt"},
      {"empty messages", chat, R"({"messages": []})", 400, "must not be empty", "messages"},
      {"bad role", chat, R"({"messages": [{"role": "wizard", "content": "Hi"}]})", 400,
       "role 'wizard' is unknown", "messages[0].role"},
      {"missing content", chat, R"({"messages": [{"role": "user"}]})", 400, "content is required",
       "messages[0].content"},
      {"image content", chat,
       R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})",
       400, "not supported", ""},
      {"token id out of vocab", cmp, R"({"prompt": [1, 99999]})", 400, "outside", "prompt"},
      {"prompt too long", cmp, json({{"prompt", long_text}}).dump(), 400, "context length",
       "prompt"},
      {"chat prompt too long", chat,
       json({{"messages", {{{"role", "user"}, {"content", long_text}}}}}).dump(), 400,
       "context length", "messages"},
      {"max_tokens too large", cmp, R"({"prompt": "a", "max_tokens": 100000})", 400,
       "context length", "prompt"},
      {"max_tokens negative", cmp, R"({"prompt": "a", "max_tokens": -1})", 400, "max_tokens",
       "max_tokens"},
      {"invalid UTF-8", cmp, "{\"prompt\": \"Once \xff\xfe upon\"}", 400, "UTF-8", ""},
      {"invalid UTF-8 in chat", chat,
       "{\"messages\": [{\"role\": \"user\", \"content\": \"\xc3\x28\"}]}", 400, "UTF-8", ""},
      {"lone surrogate", cmp, R"({"prompt": "a \ud800 b"})", 400, "Invalid JSON", ""},
      {"unknown model", cmp, R"({"model": "gpt-4o", "prompt": "a"})", 404,
       "The model `gpt-4o` does not exist", "model"},
      {"unknown model in chat", chat, "{" + msgs + R"(, "model": "gpt-4o"})", 404, "gpt-4o",
       "model"},
      {"body too large", chat, std::string(17u << 20, ' '), 413, "larger than", ""},
      {"unknown /v1 route", "/v1/embeddings", "{}", 404, "Not Found", ""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    dpserve_test::expect_api_error(
        dpserve_test::raw_http(server_->port(), dpserve_test::post_request(c.path, c.body)),
        c.status, c.message, c.param);
  }
  // GET on a POST-only route is a 404 with an OpenAI body too.
  httplib::Client cl = server_->client();
  auto get = cl.Get("/v1/completions");
  ASSERT_TRUE(get);
  EXPECT_EQ(get->status, 404);
  // Still serving, and nothing leaked.
  auto h = cl.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  const Answer ok = post(cmp, {{"prompt", "Once upon a time"}, {"max_tokens", 4}});
  EXPECT_EQ(ok.status, 200);
  expect_all_pages_free();
}

TEST_F(OpenAITest, ClientDisconnectMidStreamAbortsTheRequest) {
  for (const std::string path : {"/v1/chat/completions", "/v1/completions"}) {
    SCOPED_TRACE(path);
    const int64_t aborted_before =
        server_info()["internal_states"][0]["stats"]["num_aborted"].get<int64_t>();
    json req = {{"max_tokens", 400}, {"ignore_eos", true}, {"temperature", 0}, {"stream", true}};
    if (path == "/v1/completions") {
      req["prompt"] = "Once upon a time";
    } else {
      req["messages"] = {{{"role", "user"}, {"content", "Once upon a time"}}};
    }
    const std::string partial =
        dpserve_test::raw_http(server_->port(), dpserve_test::post_request(path, req.dump()), 800);
    EXPECT_THAT(partial, HasSubstr("HTTP/1.1 200"));
    EXPECT_THAT(partial, HasSubstr("data: "));
    expect_all_pages_free();
    EXPECT_EQ(server_info()["internal_states"][0]["stats"]["num_aborted"].get<int64_t>(),
              aborted_before + 1);
  }
  EXPECT_THAT(server_->log(), HasSubstr("abort: the client went away"));
}

TEST_F(OpenAITest, ConcurrentMixedClientsGetTheOfflineOutputs) {
  std::vector<json> lines;
  for (int i = 0; i < 12; ++i) {
    lines.push_back({{"text", i % 3 == 0 ? "Once upon a time" : (i % 3 == 1 ? "Tom" : "The sun")},
                     {"sampling_params",
                      {{"temperature", 0.7}, {"seed", 500 + i}, {"max_new_tokens", 10 + 2 * i}}}});
  }
  const std::vector<json> expected = offline_outputs(lines);
  ASSERT_EQ(expected.size(), lines.size());
  std::vector<std::string> got(lines.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < lines.size(); ++i) {
    threads.emplace_back([&, i] {
      const json& sp = lines[i]["sampling_params"];
      const Answer a = post("/v1/completions", {{"prompt", lines[i]["text"]},
                                                {"temperature", sp["temperature"]},
                                                {"seed", sp["seed"]},
                                                {"max_tokens", sp["max_new_tokens"]},
                                                {"stream", i % 2 == 0}});
      if (a.status == 200 && !a.texts.empty()) got[i] = a.texts[0];
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < lines.size(); ++i) EXPECT_EQ(got[i], expected[i]["text"]) << i;
  expect_all_pages_free();
}

TEST_F(OpenAITest, MetricsIsNotServedWithoutTheFlag) {
  httplib::Client c = server_->client();
  auto r = c.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
}

TEST_F(OpenAITest, CurlChatCompletion) {
  if (dpserve_test::run_command("curl --version").exit_code != 0) GTEST_SKIP() << "no curl";
  const std::string url =
      "http://127.0.0.1:" + std::to_string(server_->port()) + "/v1/chat/completions";
  const auto r = dpserve_test::run_command(
      "curl -s " + url +
      " -H 'Content-Type: application/json' -d '{\"messages\": [{\"role\": \"user\", "
      "\"content\": \"\"}], \"max_tokens\": 16, \"temperature\": 0}'");
  ASSERT_EQ(r.exit_code, 0);
  const json body = json::parse(r.out);
  const std::string text = body["choices"][0]["message"]["content"];
  EXPECT_THAT(reference_outputs()["greedy_from_bos_only"]["text"].get<std::string>(),
              StartsWith(text));
  const auto s = dpserve_test::run_command(
      "curl -sN " + url +
      " -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"stream\": true, "
      "\"max_tokens\": 8}'");
  ASSERT_EQ(s.exit_code, 0);
  EXPECT_THAT(s.out, ::testing::EndsWith("data: [DONE]\n\n"));
}

// ------------------------------------------------------------------------------------------
// /metrics and --api-key on their own server.

// The value of the sample `name{labels}` in Prometheus text (NaN when absent).
double metric(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return std::nan("");
}

TEST(OpenAIMetrics, MetricsCountRealRequestsAndApiKeyCoversV1Routes) {
  ServerProcess server({"--max-total-tokens", "4096", "--enable-metrics", "--api-key", "k3y"});
  ASSERT_TRUE(server.wait_healthy()) << server.log();
  httplib::Client c = server.client();
  const httplib::Headers auth = {{"Authorization", "Bearer k3y"}};
  const std::string label = "{model_name=\"" + kStories + "\"}";

  // --api-key guards every /v1 route, and /metrics too (only /health stays open).
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    auto r = c.Post(path, R"({"prompt": "a"})", "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401) << path;
    EXPECT_EQ(json::parse(r->body)["error"]["type"], "authentication_error");
  }
  auto models = c.Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 401);
  models = c.Get("/v1/models", auth);
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);

  auto m0 = c.Get("/metrics");
  ASSERT_TRUE(m0);
  EXPECT_EQ(m0->status, 401);
  EXPECT_EQ(json::parse(m0->body)["error"]["type"], "authentication_error");
  m0 = c.Get("/metrics", auth);
  ASSERT_TRUE(m0);
  ASSERT_EQ(m0->status, 200);
  EXPECT_THAT(m0->get_header_value("Content-Type"), HasSubstr("text/plain; version=0.0.4"));
  EXPECT_EQ(metric(m0->body, "sglang:num_requests_total" + label), 0.0);

  // Three finished requests: completions, streamed chat, native /generate.
  int64_t prompt_tokens = 0, completion_tokens = 0;
  auto r1 = c.Post("/v1/completions", auth,
                   R"({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0})",
                   "application/json");
  ASSERT_TRUE(r1 && r1->status == 200);
  const json u1 = json::parse(r1->body)["usage"];
  prompt_tokens += u1["prompt_tokens"].get<int64_t>();
  completion_tokens += u1["completion_tokens"].get<int64_t>();
  auto r2 = c.Post("/v1/chat/completions", auth,
                   R"({"messages": [{"role": "user", "content": "Tom"}], "max_tokens": 9,
                       "stream": true, "stream_options": {"include_usage": true}})",
                   "application/json");
  ASSERT_TRUE(r2 && r2->status == 200);
  const auto events = dpserve_test::sse_payloads(r2->body);
  ASSERT_GE(events.size(), 2u);
  const json u2 = json::parse(events[events.size() - 2])["usage"];
  prompt_tokens += u2["prompt_tokens"].get<int64_t>();
  completion_tokens += u2["completion_tokens"].get<int64_t>();
  auto r3 =
      c.Post("/generate", auth,
             R"({"text": "Lily", "sampling_params": {"max_new_tokens": 7, "ignore_eos": true}})",
             "application/json");
  ASSERT_TRUE(r3 && r3->status == 200);
  const json meta = json::parse(r3->body)["meta_info"];
  prompt_tokens += meta["prompt_tokens"].get<int64_t>();
  completion_tokens += meta["completion_tokens"].get<int64_t>();

  auto m1 = c.Get("/metrics", auth);
  ASSERT_TRUE(m1 && m1->status == 200);
  const std::string& t = m1->body;
  EXPECT_EQ(metric(t, "sglang:num_requests_total" + label), 3.0) << t;
  EXPECT_EQ(metric(t, "sglang:num_aborted_requests_total" + label), 0.0);
  EXPECT_EQ(metric(t, "sglang:prompt_tokens_total" + label), static_cast<double>(prompt_tokens));
  EXPECT_EQ(metric(t, "sglang:generation_tokens_total" + label),
            static_cast<double>(completion_tokens));
  EXPECT_EQ(metric(t, "sglang:time_to_first_token_seconds_count" + label), 3.0);
  EXPECT_EQ(metric(t, "sglang:e2e_request_latency_seconds_count" + label), 3.0);
  // One inter-token observation per token after each request's first.
  EXPECT_EQ(metric(t, "sglang:inter_token_latency_seconds_count" + label),
            static_cast<double>(completion_tokens - 3));
  EXPECT_GT(metric(t, "sglang:e2e_request_latency_seconds_sum" + label), 0.0);
  EXPECT_EQ(metric(t, "sglang:num_running_reqs" + label), 0.0);
  EXPECT_EQ(metric(t, "sglang:num_queue_reqs" + label), 0.0);
  EXPECT_FALSE(std::isnan(metric(t, "sglang:token_usage" + label)));
  EXPECT_FALSE(std::isnan(metric(t, "sglang:cache_hit_rate" + label)));
  EXPECT_FALSE(std::isnan(metric(t, "sglang:gen_throughput" + label)));
  EXPECT_THAT(t, HasSubstr("# TYPE sglang:time_to_first_token_seconds histogram"));
  EXPECT_THAT(t, HasSubstr("sglang:time_to_first_token_seconds_bucket{model_name=\"" + kStories +
                           "\",le=\"+Inf\"} 3"));
  // A health probe is no client request.
  auto hg = c.Get("/health_generate", auth);
  ASSERT_TRUE(hg && hg->status == 200);

  // A client that hangs up mid-stream counts as an aborted request.
  const std::string req =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k3y\r\n"
      "Content-Type: application/json\r\nContent-Length: ";
  const std::string body =
      R"({"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true, "stream": true})";
  const std::string partial = dpserve_test::raw_http(
      server.port(), req + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body,
      600);
  EXPECT_THAT(partial, HasSubstr("HTTP/1.1 200"));
  double aborted = 0;
  for (int i = 0; i < 200 && aborted < 1.0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    auto m = c.Get("/metrics", auth);
    ASSERT_TRUE(m);
    aborted = metric(m->body, "sglang:num_aborted_requests_total" + label);
  }
  EXPECT_EQ(aborted, 1.0);
  auto m2 = c.Get("/metrics", auth);
  ASSERT_TRUE(m2);
  EXPECT_EQ(metric(m2->body, "sglang:num_requests_total" + label), 4.0);
}

}  // namespace
