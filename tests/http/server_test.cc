// End-to-end tests of `dpserve serve` on stories260K: a real server process driven over real HTTP
// (cpp-httplib's client, raw sockets and curl), compared with the offline engine.

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
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

const std::vector<std::string> kServerFlags = {"--max-total-tokens", "8192", "--log-requests"};

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = std::make_unique<ServerProcess>(kServerFlags);
    ASSERT_TRUE(server_->wait_healthy()) << server_->log();
  }
  static void TearDownTestSuite() { server_.reset(); }

  static json server_info() { return dpserve_test::server_info(*server_); }
  static void expect_all_pages_free() { dpserve_test::expect_all_pages_free(*server_); }

  // POST /generate with a JSON body; returns (status, parsed body or the raw text).
  static std::pair<int, json> generate(const json& body) {
    httplib::Client c = server_->client();
    auto r = c.Post("/generate", body.dump(), "application/json");
    if (!r) return {-1, json()};
    return {r->status, json::parse(r->body, nullptr, false)};
  }

  static std::unique_ptr<ServerProcess> server_;
};

std::unique_ptr<ServerProcess> ServerTest::server_;

TEST_F(ServerTest, GenerateGreedyMatchesReference) {
  const json ref = reference_outputs();
  const std::string prompt = ref["prompt_text"];
  auto [status, body] = generate(
      {{"text", prompt}, {"sampling_params", {{"max_new_tokens", 32}, {"temperature", 0}}}});
  ASSERT_EQ(status, 200) << body.dump();
  EXPECT_EQ(prompt + body["text"].get<std::string>(), ref["greedy"]["text"]);
  EXPECT_EQ(body["output_ids"], ref["greedy"]["ids"]);
  const json& meta = body["meta_info"];
  EXPECT_EQ(meta["prompt_tokens"], 5);
  EXPECT_EQ(meta["completion_tokens"], 32);
  EXPECT_EQ(meta["finish_reason"], json({{"type", "length"}, {"length", 32}}));
  EXPECT_EQ(meta["id"].get<std::string>().size(), 32u);
  EXPECT_GE(meta["e2e_latency"].get<double>(), 0.0);
  EXPECT_TRUE(meta.contains("cached_tokens"));

  // The same prompt as token ids gives the same text.
  auto [s2, b2] = generate({{"input_ids", ref["prompt_ids_with_bos"]},
                            {"sampling_params", {{"max_new_tokens", 32}, {"temperature", 0}}}});
  ASSERT_EQ(s2, 200) << b2.dump();
  EXPECT_EQ(b2["text"], body["text"]);
}

TEST_F(ServerTest, StreamingConcatenatesToTheSameText) {
  const json req = {{"text", "Once upon a time"},
                    {"sampling_params", {{"max_new_tokens", 32}, {"temperature", 0}}}};
  auto [status, full] = generate(req);
  ASSERT_EQ(status, 200);
  json sreq = req;
  sreq["stream"] = true;
  httplib::Client c = server_->client();
  auto r = c.Post("/generate", sreq.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_THAT(r->get_header_value("Content-Type"), HasSubstr("text/event-stream"));
  const std::vector<std::string> events = dpserve_test::sse_payloads(r->body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string prev;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    const std::string text = chunk["text"];
    EXPECT_EQ(text.compare(0, prev.size(), prev), 0) << "cumulative text shrank at chunk " << i;
    prev = text;
    EXPECT_EQ(chunk["meta_info"]["finish_reason"].is_null(), i + 2 < events.size());
  }
  EXPECT_EQ(prev, full["text"]);
  EXPECT_EQ(json::parse(events[events.size() - 2])["meta_info"]["finish_reason"]["type"], "length");
}

TEST_F(ServerTest, SeededSamplingAndStopStringsMatchOfflineEngine) {
  const std::vector<json> lines = {
      {{"text", "Once upon a time"},
       {"sampling_params", {{"temperature", 0.9}, {"seed", 7}, {"max_new_tokens", 40}}}},
      {{"text", "Tom had a red ball"},
       {"sampling_params",
        {{"temperature", 1.2},
         {"top_k", 20},
         {"top_p", 0.9},
         {"seed", 123},
         {"max_new_tokens", 30}}}},
      {{"text", "Lily"},
       {"sampling_params", {{"temperature", 0}, {"stop", "."}, {"max_new_tokens", 60}}}},
      {{"text", "Once upon a time"},
       {"sampling_params",
        {{"temperature", 0}, {"stop", {"Lily", "park"}}, {"max_new_tokens", 60}}}},
  };
  const std::vector<json> expected = offline_outputs(lines);
  ASSERT_EQ(expected.size(), lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    SCOPED_TRACE(lines[i].dump());
    for (bool stream : {false, true}) {
      json req = lines[i];
      req["stream"] = stream;
      std::string text;
      json finish;
      if (!stream) {
        auto [status, body] = generate(req);
        ASSERT_EQ(status, 200) << body.dump();
        text = body["text"];
        finish = body["meta_info"]["finish_reason"];
      } else {
        httplib::Client c = server_->client();
        auto r = c.Post("/generate", req.dump(), "application/json");
        ASSERT_TRUE(r);
        const auto events = dpserve_test::sse_payloads(r->body);
        ASSERT_GE(events.size(), 2u);
        const json last = json::parse(events[events.size() - 2]);
        text = last["text"];
        finish = last["meta_info"]["finish_reason"];
      }
      EXPECT_EQ(text, expected[i]["text"]);
      EXPECT_EQ(finish, expected[i]["finish_reason"]);
    }
  }
  // The stop strings took effect.
  EXPECT_EQ(expected[2]["finish_reason"], json({{"type", "stop"}, {"matched", "."}}));
  EXPECT_THAT(expected[2]["text"].get<std::string>(), ::testing::Not(HasSubstr(".")));
  EXPECT_EQ(expected[3]["finish_reason"]["type"], "stop");
}

TEST_F(ServerTest, BadInputsGetErrorsAndTheServerKeepsServing) {
  struct Case {
    std::string name;
    std::string path;
    std::string body;  // raw bytes
    int status;
    std::string message;  // substring of error.message
  };
  const std::string long_text = [] {
    std::string s;
    for (int i = 0; i < 600; ++i) s += "Once upon a time ";
    return s;
  }();
  // 1M nested lists (2 MB): recursive JSON copies / dumps of it used to overflow the handler
  // thread's stack and kill the server (found by fuzz/fuzz_request).
  const std::string deep = std::string(1u << 20, '[') + std::string(1u << 20, ']');
  const std::vector<Case> cases = {
      {"malformed JSON", "/generate", "{\"text\": \"Once", 400, "not valid JSON"},
      {"not an object", "/generate", "[1, 2]", 400, "JSON object"},
      {"no prompt", "/generate", "{\"sampling_params\": {}}", 400, "\"text\" or \"input_ids\""},
      {"both prompts", "/generate", "{\"text\": \"a\", \"input_ids\": [1]}", 400, "not both"},
      {"text wrong type", "/generate", "{\"text\": 5}", 400, "\"text\""},
      {"stream wrong type", "/generate", "{\"text\": \"a\", \"stream\": \"yes\"}", 400,
       "\"stream\""},
      {"unknown field", "/generate", "{\"text\": \"a\", \"bogus\": 1}", 400, "bogus"},
      {"temperature wrong type", "/generate",
       "{\"text\": \"a\", \"sampling_params\": {\"temperature\": \"hot\"}}", 400, "temperature"},
      {"temperature negative", "/generate",
       "{\"text\": \"a\", \"sampling_params\": {\"temperature\": -1}}", 400, "temperature"},
      {"top_p out of range", "/generate",
       "{\"text\": \"a\", \"sampling_params\": {\"top_p\": 1.5}}", 400, "top_p"},
      {"unknown sampling param", "/generate",
       "{\"text\": \"a\", \"sampling_params\": {\"warmth\": 1}}", 400, "warmth"},
      {"empty text", "/generate", "{\"text\": \"\"}", 400, "empty"},
      {"empty input_ids", "/generate", "{\"input_ids\": []}", 400, "input_ids"},
      {"token id out of vocab", "/generate", "{\"input_ids\": [1, 99999]}", 400, "vocabulary"},
      {"prompt too long", "/generate", json({{"text", long_text}}).dump(), 400, "context length"},
      {"max_new_tokens too large", "/generate",
       "{\"text\": \"a\", \"sampling_params\": {\"max_new_tokens\": 100000}}", 400,
       "context length"},
      // prompt + max_new_tokens used to overflow int64 and pass the check (UBSan, fuzz_request).
      {"max_new_tokens near INT64_MAX", "/generate",
       "{\"text\": \"a\", \"sampling_params\": {\"max_new_tokens\": 9223372036854775806}}", 400,
       "context length"},
      {"invalid UTF-8", "/generate", "{\"text\": \"Once \xff\xfe upon\"}", 400, "UTF-8"},
      {"lone surrogate", "/generate", "{\"text\": \"a \\ud800 b\"}", 400, "not valid JSON"},
      {"number out of range", "/generate",
       "{\"text\": \"a\", \"sampling_params\": {\"temperature\": 1e400}}", 400, "not valid JSON"},
      {"nesting too deep", "/generate", "{\"text\": \"a\", \"sampling_params\": " + deep + "}", 400,
       "deeper than 256"},
      {"nesting too deep (OpenAI)", "/v1/completions",
       "{\"prompt\": \"a\", \"stop\": " + deep + "}", 400, "deeper than 256"},
      {"unknown route", "/no_such_route", "{}", 404, "Not Found"},
      {"body too large", "/generate", std::string(17u << 20, ' '), 413, "larger than"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    dpserve_test::expect_api_error(
        dpserve_test::raw_http(server_->port(), dpserve_test::post_request(c.path, c.body)),
        c.status, c.message);
  }
  // Still serving, and nothing leaked.
  httplib::Client cl = server_->client();
  auto h = cl.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto [status, body] =
      generate({{"text", "Once upon a time"},
                {"sampling_params", {{"max_new_tokens", 8}, {"temperature", 0}}}});
  EXPECT_EQ(status, 200);
  expect_all_pages_free();
}

TEST_F(ServerTest, ClientDisconnectMidStreamAbortsTheRequest) {
  const int64_t aborted_before =
      server_info()["internal_states"][0]["stats"]["num_aborted"].get<int64_t>();
  const json req = {
      {"text", "Once upon a time"},
      {"stream", true},
      {"rid", "disconnect-me"},
      {"sampling_params", {{"max_new_tokens", 500}, {"ignore_eos", true}, {"temperature", 0}}}};
  // Read the headers and a few chunks, then hang up.
  const std::string partial = dpserve_test::raw_http(
      server_->port(), dpserve_test::post_request("/generate", req.dump()), 600);
  EXPECT_THAT(partial, HasSubstr("HTTP/1.1 200"));
  EXPECT_THAT(partial, HasSubstr("data: "));
  expect_all_pages_free();
  const json stats = server_info()["internal_states"][0]["stats"];
  EXPECT_EQ(stats["num_aborted"].get<int64_t>(), aborted_before + 1);
  EXPECT_THAT(server_->log(), HasSubstr("[disconnect-me] abort"));
}

TEST_F(ServerTest, SixteenConcurrentClientsGetTheOfflineOutputs) {
  const std::vector<std::string> starts = {"Once upon a time", "Tom",     "Lily",
                                           "The cat",          "One day", "A big dog",
                                           "Sam and Sue",      "The sun"};
  std::vector<json> lines;
  for (int i = 0; i < 16; ++i) {
    json sp = {{"max_new_tokens", 24 + 3 * i}};
    if (i % 2 == 0) {
      sp["temperature"] = 0;
    } else {
      sp["temperature"] = 0.8;
      sp["seed"] = 1000 + i;
    }
    lines.push_back(
        {{"text", starts[static_cast<size_t>(i) % starts.size()]}, {"sampling_params", sp}});
  }
  const std::vector<json> expected = offline_outputs(lines);
  ASSERT_EQ(expected.size(), 16u);
  std::vector<std::string> got(16);
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&, i] {
      json req = lines[static_cast<size_t>(i)];
      const bool stream = i % 4 < 2;
      req["stream"] = stream;
      httplib::Client c = server_->client();
      auto r = c.Post("/generate", req.dump(), "application/json");
      if (!r || r->status != 200) return;
      if (stream) {
        const auto events = dpserve_test::sse_payloads(r->body);
        if (events.size() >= 2 && events.back() == "[DONE]") {
          got[static_cast<size_t>(i)] = json::parse(events[events.size() - 2])["text"];
        }
      } else {
        got[static_cast<size_t>(i)] = json::parse(r->body)["text"];
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(got[static_cast<size_t>(i)], expected[static_cast<size_t>(i)]["text"])
        << "client " << i;
  }
  expect_all_pages_free();
}

TEST_F(ServerTest, BatchAndNGiveLists) {
  auto [status, body] =
      generate({{"text", {"Once upon a time", "Tom"}},
                {"sampling_params", {{"max_new_tokens", 6}, {"temperature", 0}}}});
  ASSERT_EQ(status, 200) << body.dump();
  ASSERT_TRUE(body.is_array());
  ASSERT_EQ(body.size(), 2u);
  auto [s1, single] =
      generate({{"text", "Tom"}, {"sampling_params", {{"max_new_tokens", 6}, {"temperature", 0}}}});
  ASSERT_EQ(s1, 200);
  EXPECT_EQ(body[1]["text"], single["text"]);

  auto [s2, two] = generate(
      {{"text", "Tom"},
       {"sampling_params", {{"max_new_tokens", 6}, {"temperature", 0.8}, {"seed", 5}, {"n", 2}}}});
  ASSERT_EQ(s2, 200) << two.dump();
  ASSERT_TRUE(two.is_array());
  EXPECT_EQ(two.size(), 2u);
}

TEST_F(ServerTest, LogprobsInMetaInfo) {
  auto [status, body] =
      generate({{"text", "Once upon a time"},
                {"return_logprob", true},
                {"top_logprobs_num", 3},
                {"sampling_params", {{"max_new_tokens", 4}, {"temperature", 0}}}});
  ASSERT_EQ(status, 200) << body.dump();
  const json& meta = body["meta_info"];
  ASSERT_EQ(meta["output_token_logprobs"].size(), 4u);
  ASSERT_EQ(meta["output_top_logprobs"].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const json& e = meta["output_token_logprobs"][i];
    EXPECT_LE(e[0].get<double>(), 0.0);
    EXPECT_EQ(e[1], body["output_ids"][i]);
    ASSERT_EQ(meta["output_top_logprobs"][i].size(), 3u);
    EXPECT_EQ(meta["output_top_logprobs"][i][0][1], body["output_ids"][i]);  // greedy = top 1
  }
}

TEST_F(ServerTest, InfoHealthAndFlushEndpoints) {
  httplib::Client c = server_->client();
  auto hg = c.Get("/health_generate");
  ASSERT_TRUE(hg);
  EXPECT_EQ(hg->status, 200);
  auto mi = c.Get("/get_model_info");
  ASSERT_TRUE(mi);
  const json m = json::parse(mi->body);
  EXPECT_EQ(m["model_path"], kStories);
  EXPECT_EQ(m["tokenizer_path"], kStories);
  EXPECT_EQ(m["is_generation"], true);
  const json info = server_info();
  EXPECT_EQ(info["model_path"], kStories);
  EXPECT_EQ(info["max_total_num_tokens"], 8192);
  EXPECT_EQ(info["max_req_input_len"], 511);
  EXPECT_TRUE(info["internal_states"][0].contains("num_free_pages"));
  expect_all_pages_free();
}

TEST_F(ServerTest, CurlRequests) {
  if (dpserve_test::run_command("curl --version").exit_code != 0) GTEST_SKIP() << "no curl";
  const std::string url = "http://127.0.0.1:" + std::to_string(server_->port()) + "/generate";
  const auto r = dpserve_test::run_command(
      "curl -s " + url +
      " -H 'Content-Type: application/json' -d '{\"text\": \"Once upon a time\", "
      "\"sampling_params\": {\"max_new_tokens\": 32, \"temperature\": 0}}'");
  ASSERT_EQ(r.exit_code, 0);
  const json body = json::parse(r.out);
  EXPECT_EQ("Once upon a time" + body["text"].get<std::string>(),
            reference_outputs()["greedy"]["text"]);

  const auto s = dpserve_test::run_command(
      "curl -sN " + url +
      " -d '{\"text\": \"Once upon a time\", \"stream\": true, \"sampling_params\": "
      "{\"max_new_tokens\": 8, \"temperature\": 0}}'");
  ASSERT_EQ(s.exit_code, 0);
  EXPECT_THAT(s.out, ::testing::EndsWith("data: [DONE]\n\n"));
}

// ------------------------------------------------------------------------------------------
// Separate server processes: startup failures, authentication, shutdown, a dead scheduler.

TEST(ServerLifecycle, BrokenModelDirExitsWithTheSchedulersError) {
  const std::string dir = ::testing::TempDir() + "/dpserve_broken_model";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << "{ not json";
  const std::string bin = DPSERVE_BINARY;
  const auto r = dpserve_test::run_command(
      bin + " serve --model-path " + dir + " --port " + std::to_string(dpserve_test::free_port()),
      /*with_stderr=*/true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("error: "));
  EXPECT_THAT(r.out, HasSubstr("config.json"));

  const auto missing = dpserve_test::run_command(bin + " serve --model-path /nonexistent/model",
                                                 /*with_stderr=*/true);
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.out, HasSubstr("/nonexistent/model"));

  const auto later = dpserve_test::run_command(
      bin + " serve --model-path " + kStories + " --dtype float32", /*with_stderr=*/true);
  EXPECT_EQ(later.exit_code, 1);
  EXPECT_THAT(later.out, HasSubstr("--dtype float32"));
  EXPECT_THAT(later.out, HasSubstr("not implemented"));

  // A TP size the model cannot be split into: the ranks' error reaches the user.
  const auto tp3 = dpserve_test::run_command(
      bin + " serve --model-path " + kStories + " --tp-size 3", /*with_stderr=*/true);
  EXPECT_EQ(tp3.exit_code, 1);
  EXPECT_THAT(tp3.out, HasSubstr("num_attention_heads (8)"));
  EXPECT_THAT(tp3.out, HasSubstr("tp_size (3)"));

  const auto invalid = dpserve_test::run_command(
      bin + " serve --model-path " + kStories + " --port 70000", /*with_stderr=*/true);
  EXPECT_EQ(invalid.exit_code, 1);
  EXPECT_THAT(invalid.out, HasSubstr("--port"));
}

TEST(ServerLifecycle, ApiKeyThenSigtermShutsDownGracefully) {
  // One running request at a time, so a batch stream below stays in flight for seconds;
  // --shutdown-timeout 0: SIGTERM aborts in-flight requests at once (no drain).
  ServerProcess server({"--max-total-tokens", "4096", "--api-key", "sekrit",
                        "--max-running-requests", "1", "--shutdown-timeout", "0"});
  ASSERT_TRUE(server.wait_healthy()) << server.log();
  httplib::Client c = server.client();
  const std::string body =
      R"({"text": "Once upon a time", "sampling_params": {"max_new_tokens": 4}})";
  auto no_key = c.Post("/generate", body, "application/json");
  ASSERT_TRUE(no_key);
  EXPECT_EQ(no_key->status, 401);
  EXPECT_EQ(json::parse(no_key->body)["error"]["type"], "authentication_error");
  auto wrong = c.Post("/generate", {{"Authorization", "Bearer nope"}}, body, "application/json");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  const httplib::Headers auth = {{"Authorization", "Bearer sekrit"}};
  auto ok = c.Post("/generate", auth, body, "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  auto info = c.Get("/get_server_info", auth);
  ASSERT_TRUE(info);
  ASSERT_EQ(info->status, 200);
  const json j = json::parse(info->body);
  EXPECT_EQ(j["api_key"], "***");
  const std::string runtime_dir = j["runtime_dir"];
  const auto scheduler_pid = static_cast<pid_t>(j["scheduler_pid"].get<int64_t>());
  EXPECT_TRUE(std::filesystem::exists(runtime_dir));

  // A long stream is in flight when SIGTERM arrives: it ends (aborted) with [DONE].
  json batch = json::array();
  for (int i = 0; i < 32; ++i) batch.push_back("Once upon a time");
  const json long_req = {
      {"text", batch},
      {"stream", true},
      {"sampling_params", {{"max_new_tokens", 500}, {"ignore_eos", true}, {"temperature", 0}}}};
  std::string stream_body;
  std::thread streamer([&] {
    httplib::Client sc = server.client();
    auto r = sc.Post("/generate", auth, long_req.dump(), "application/json");
    if (r) stream_body = r->body;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_EQ(::kill(server.pid(), SIGTERM), 0);
  const std::optional<int> code = server.wait_exit(std::chrono::seconds(15));
  streamer.join();
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << server.log();
  EXPECT_FALSE(std::filesystem::exists(runtime_dir));
  EXPECT_NE(::kill(scheduler_pid, 0), 0);  // the scheduler is gone too
  EXPECT_THAT(server.log(), HasSubstr("shutting down gracefully"));
  EXPECT_THAT(stream_body, HasSubstr("data: [DONE]"));
  EXPECT_THAT(stream_body, HasSubstr("\"type\":\"abort\""));
}

TEST(ServerLifecycle, DeadSchedulerMakesTheServerExitNonZero) {
  // Fail-stop: with --max-restarts 0 a dead scheduler is not restarted.
  ServerProcess server({"--max-total-tokens", "4096", "--max-restarts", "0"});
  ASSERT_TRUE(server.wait_healthy()) << server.log();
  httplib::Client c = server.client();
  auto info = c.Get("/get_server_info");
  ASSERT_TRUE(info);
  const json j = json::parse(info->body);
  const auto scheduler_pid = static_cast<pid_t>(j["scheduler_pid"].get<int64_t>());
  const std::string runtime_dir = j["runtime_dir"];
  ASSERT_EQ(::kill(scheduler_pid, SIGKILL), 0);
  const std::optional<int> code = server.wait_exit(std::chrono::seconds(10));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 1);
  EXPECT_THAT(server.log(), HasSubstr("scheduler process"));
  EXPECT_THAT(server.log(), HasSubstr("died"));
  EXPECT_FALSE(std::filesystem::exists(runtime_dir));
}

TEST(ServerLifecycle, SigtermToTheWholeProcessGroupExitsCleanly) {
  // What `kill -TERM -<pgid>` or a service manager does: the scheduler gets SIGTERM too.
  ServerProcess server({"--max-total-tokens", "4096"});
  ASSERT_TRUE(server.wait_healthy()) << server.log();
  httplib::Client c = server.client();
  auto info = c.Get("/get_server_info");
  ASSERT_TRUE(info);
  const std::string runtime_dir = json::parse(info->body)["runtime_dir"];
  ASSERT_EQ(::kill(-server.pid(), SIGTERM), 0);
  const std::optional<int> code = server.wait_exit(std::chrono::seconds(10));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << server.log();
  EXPECT_FALSE(std::filesystem::exists(runtime_dir));
}

}  // namespace
