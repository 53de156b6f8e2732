// Reliability of the HTTP front end, against real `dpserve serve` processes on stories260K over
// real sockets: slow and stalled clients are cut off after --http-timeout (their threads freed, a
// stalled stream's request aborted and its KV pages freed), many open streams do not starve short
// requests, clients that leave abort their non-streaming requests, and POSTs without a body work.
// Each test starts its own server (CTest runs them as separate processes).

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "raw_client.h"
#include "server_process.h"

namespace {

using dpserve_test::post_request;
using dpserve_test::RawConnection;
using dpserve_test::ServerProcess;
using nlohmann::json;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr double kHttpTimeout = 2.0;  // the servers' --http-timeout
constexpr double kMargin = 1.5;       // scheduling slack on a loaded 2-core machine
// --max-running-requests 1: requests run one after another, so a batch of long prompts keeps the
// scheduler busy for seconds (about 0.4 s per 500 tokens here) and later requests wait.
const std::vector<std::string> kFlags = {"--max-total-tokens",     "16384", "--http-timeout", "2",
                                         "--max-running-requests", "1",     "--log-requests"};

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

json stats(const ServerProcess& s) {
  return dpserve_test::server_info(s)["internal_states"][0]["stats"];
}

// A /generate body: `prompts` copies of one prompt (rids <rid>-0, <rid>-1, ...), each generating
// `tokens` tokens.
std::string long_generate(int prompts, int tokens, bool stream, const std::string& rid) {
  json text = json::array(), rids = json::array();
  for (int i = 0; i < prompts; ++i) {
    text.push_back("Once upon a time");
    rids.push_back(rid + "-" + std::to_string(i));
  }
  return json({{"text", text},
               {"rid", rids},
               {"stream", stream},
               {"sampling_params",
                {{"max_new_tokens", tokens}, {"ignore_eos", true}, {"temperature", 0}}}})
      .dump();
}

// Waits until the server log contains `what`; the seconds it took, or -1 after `timeout_s`.
double wait_for_log(const ServerProcess& server, const std::string& what, double timeout_s) {
  const auto start = Clock::now();
  while (since(start) < timeout_s) {
    if (server.log().find(what) != std::string::npos) return since(start);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return -1;
}

TEST(HttpReliability, SlowClientsAreCutOffWhileOthersAreServed) {
  ServerProcess server(kFlags);
  ASSERT_TRUE(server.wait_healthy()) << server.log();
  const int port = server.port();

  // Clients that never finish their request. The first three kinds add a byte every 250 ms for
  // 1.5 s, then stall: no gap reaches --http-timeout until the end, yet the request as a whole
  // never arrives. The fourth keeps dripping for ever; the last sends nothing at all.
  enum Kind { kLine, kHeaders, kBody, kForever, kIdle };
  const std::vector<std::pair<Kind, std::string>> kinds = {
      {kLine, "GET /get_model_info?x="},
      {kHeaders, "POST /generate HTTP/1.1\r\nHost: x\r\nX-Slow: "},
      {kBody,
       "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
       "Content-Length: 1000\r\n\r\n{\"text\": \""},
      {kForever, "POST /generate HTTP/1.1\r\nHost: x\r\nX-Slow: "},
      {kIdle, ""}};
  struct Slow {
    Kind kind;
    std::unique_ptr<RawConnection> conn;
  };
  std::vector<Slow> slow;
  for (const auto& [kind, start] : kinds) {
    for (int i = 0; i < (kind == kForever || kind == kIdle ? 8 : 16); ++i) {
      auto c = std::make_unique<RawConnection>(port);
      ASSERT_TRUE(c->connected());
      if (!start.empty()) ASSERT_TRUE(c->send(start));
      slow.push_back({kind, std::move(c)});
    }
  }

  const auto start = Clock::now();
  double normal_latency = -1;
  int normal_status = 0;
  std::string normal_body;
  for (int tick = 0; since(start) < 12.0; ++tick) {
    bool open = false;
    for (Slow& s : slow) {
      if (!s.conn->poll_read()) continue;
      open = true;
      if (s.kind == kForever || (s.kind != kIdle && since(start) < 1.5)) s.conn->send("a");
    }
    if (!open) break;
    if (tick == 2) {
      // A normal request while the slow clients hold their connections.
      const auto t = Clock::now();
      httplib::Client c = server.client();
      auto r = c.Post("/generate",
                      R"({"text": "Once upon a time", "sampling_params": {"max_new_tokens": 8}})",
                      "application/json");
      normal_latency = since(t);
      normal_status = r ? r->status : -1;
      normal_body = r ? r->body : "";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }

  EXPECT_EQ(normal_status, 200) << normal_body;
  EXPECT_LT(normal_latency, 2.0);
  for (size_t i = 0; i < slow.size(); ++i) {
    const Slow& s = slow[i];
    SCOPED_TRACE("slow client " + std::to_string(i) + " of kind " + std::to_string(s.kind));
    const std::optional<double> closed = s.conn->closed_after();
    ASSERT_TRUE(closed.has_value()) << "still open after 12 s";
    if (s.kind == kIdle) {
      // Idle kept-alive connections close after 5 s, as with SGLang's uvicorn.
      EXPECT_GE(*closed, 5.0 - 0.2);
      EXPECT_LE(*closed, 5.0 + kMargin);
      continue;
    }
    EXPECT_GE(*closed, kHttpTimeout - 0.2);
    EXPECT_LE(*closed, kHttpTimeout + kMargin);
    if (s.kind == kHeaders || s.kind == kBody) {
      EXPECT_THAT(s.conn->received(), ::testing::StartsWith("HTTP/1.1 408"));
      EXPECT_THAT(s.conn->received(), HasSubstr("--http-timeout"));
    }
  }
  EXPECT_THAT(server.log(), HasSubstr("its request did not arrive within 2 s (--http-timeout)"));
  dpserve_test::expect_all_pages_free(server);
}

TEST(HttpReliability, StalledStreamingReaderIsCutOffAndItsRequestAborted) {
  ServerProcess server(kFlags);
  ASSERT_TRUE(server.wait_healthy()) << server.log();
  const int64_t aborted_before = stats(server)["num_aborted"].get<int64_t>();

  // 16 prompts of 500 tokens: several seconds of generation, megabytes of events.
  RawConnection reader(server.port(), /*rcvbuf=*/4096);
  ASSERT_TRUE(reader.send(post_request("/generate", long_generate(16, 500, true, "stall"))));
  const auto start = Clock::now();
  while (reader.received().find("\r\n\r\n") == std::string::npos && since(start) < 10) {
    ASSERT_TRUE(reader.poll_read(50)) << reader.received();
  }
  ASSERT_THAT(reader.received(), ::testing::StartsWith("HTTP/1.1 200"));
  // From here on the client reads nothing: the server's writes block once the socket buffers are
  // full, and --http-timeout later it gives up on the connection.
  const auto stalled = Clock::now();
  const double cut = wait_for_log(server, "it read nothing of its response for 2 s", 15);
  ASSERT_GE(cut, 0) << server.log();
  EXPECT_GE(cut, kHttpTimeout - 0.2);
  // + filling the socket buffers, which runs at generation speed: 4.6 s more on this 2-core
  // machine with two fuzzers beside it.
  EXPECT_LE(cut, kHttpTimeout + 6.0);
  // Its unfinished prompts were aborted in the scheduler, and their pages are free.
  EXPECT_GE(wait_for_log(server, "[stall-", 1), 0);
  dpserve_test::expect_all_pages_free(server);
  EXPECT_GT(stats(server)["num_aborted"].get<int64_t>(), aborted_before);
  EXPECT_THAT(server.log(), HasSubstr("abort: the client went away before it finished"));
  EXPECT_LT(since(stalled), 15.0);
  // What the client had buffered ends without [DONE]: the stream was cut, then closed.
  ASSERT_TRUE(reader.wait_closed(std::chrono::seconds(10)));
  EXPECT_THAT(reader.received(), HasSubstr("data: "));
  EXPECT_THAT(reader.received(), ::testing::Not(HasSubstr("data: [DONE]")));
}

TEST(HttpReliability, ManyOpenStreamsDoNotStarveShortRequests) {
  ServerProcess server(kFlags);
  ASSERT_TRUE(server.wait_healthy()) << server.log();
  const int64_t aborted_before = stats(server)["num_aborted"].get<int64_t>();

  // More streams than the old fixed pool of 256 threads; they run one at a time, so almost all
  // wait in the scheduler's queue, each holding its connection (and a thread) open.
  constexpr int kStreams = 300;
  std::vector<std::unique_ptr<RawConnection>> streams;
  const std::string body =
      json({{"text", "Once upon a time"},
            {"stream", true},
            {"sampling_params", {{"max_new_tokens", 400}, {"ignore_eos", true}}}})
          .dump();
  for (int i = 0; i < kStreams; ++i) {
    streams.push_back(std::make_unique<RawConnection>(server.port()));
    ASSERT_TRUE(streams.back()->send(post_request("/generate", body)));
  }
  // Every stream gets its response head (httplib sends it before the first event).
  const auto start = Clock::now();
  int answered = 0;
  while (since(start) < 20) {
    answered = 0;
    for (auto& s : streams) {
      s->poll_read();
      if (s->received().find("HTTP/1.1 200") == 0) ++answered;
    }
    if (answered == kStreams) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(answered, kStreams);

  // Short requests are answered at once meanwhile.
  httplib::Client c = server.client();
  for (const char* path : {"/health", "/get_model_info", "/v1/models", "/get_server_info"}) {
    const auto t = Clock::now();
    auto r = c.Get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 200) << path;
    EXPECT_LT(since(t), 2.0) << path;
  }
  const json info = dpserve_test::server_info(server);
  EXPECT_GE(info["num_live_requests"].get<int64_t>(), kStreams - 20);

  // The clients leave: every request is aborted and every page comes back.
  streams.clear();
  dpserve_test::expect_all_pages_free(server);
  EXPECT_GE(stats(server)["num_aborted"].get<int64_t>() - aborted_before, kStreams - 20);
}

TEST(HttpReliability, NonStreamingClientThatLeavesAbortsItsRequest) {
  ServerProcess server(kFlags);
  ASSERT_TRUE(server.wait_healthy()) << server.log();
  const int64_t aborted_before = stats(server)["num_aborted"].get<int64_t>();

  // A long stream (read by its client) keeps the scheduler busy; the two requests below wait.
  std::atomic<bool> stop{false};
  RawConnection blocker(server.port());
  ASSERT_TRUE(blocker.send(post_request("/generate", long_generate(16, 500, true, "blocker"))));
  const auto start = Clock::now();
  while (blocker.received().find("data: ") == std::string::npos && since(start) < 10) {
    ASSERT_TRUE(blocker.poll_read(50));
  }
  ASSERT_THAT(blocker.received(), HasSubstr("data: "));  // running: queued ahead of the others
  std::thread drain([&] {
    while (!stop.load() && blocker.poll_read(50)) {
    }
  });

  RawConnection native(server.port());
  ASSERT_TRUE(native.send(post_request("/generate", long_generate(2, 100, false, "leaver"))));
  RawConnection openai(server.port());
  ASSERT_TRUE(openai.send(post_request(
      "/v1/completions", R"({"prompt": "Tom", "max_tokens": 100, "ignore_eos": true})")));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // Both wait (with at least the running blocker prompt ahead of them).
  EXPECT_GE(dpserve_test::server_info(server)["num_live_requests"].get<int64_t>(), 2 + 1 + 1);
  native.close();
  openai.close();
  const auto closed = Clock::now();

  // Both are aborted while the blocker still runs (without noticing, they would run after it).
  int64_t aborted = 0;
  while (since(closed) < 5) {
    aborted = stats(server)["num_aborted"].get<int64_t>() - aborted_before;
    if (aborted >= 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(aborted, 3);  // the two prompts of "leaver" and the completion
  EXPECT_LT(since(closed), 2.0);
  const std::string log = server.log();
  EXPECT_THAT(log, HasSubstr("[leaver-0] the client closed its connection before the response"));
  EXPECT_THAT(log, HasSubstr("[leaver-1] abort: the client went away"));
  // The completion: its rid is logged when it starts and when it is given up.
  size_t n = 0;
  for (size_t p = 0; (p = log.find("] the client closed its connection before the response", p)) !=
                     std::string::npos;
       ++p) {
    ++n;
  }
  EXPECT_EQ(n, 2u) << log;
  const json info = dpserve_test::server_info(server);
  EXPECT_LE(info["num_live_requests"].get<int64_t>(), 16);  // the blocker's prompts only
  EXPECT_GE(info["internal_states"][0]["num_running_reqs"].get<int64_t>(), 1);

  blocker.close();
  stop.store(true);
  drain.join();
  dpserve_test::expect_all_pages_free(server);
}

TEST(HttpReliability, PostWithoutBodyReadsAsAnEmptyBody) {
  ServerProcess server(kFlags);
  ASSERT_TRUE(server.wait_healthy()) << server.log();
  // No Content-Length, no Transfer-Encoding: no body (RFC 9112), answered at once.
  auto t = Clock::now();
  const std::string flush = dpserve_test::raw_http(
      server.port(), "POST /flush_cache HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_LT(since(t), 1.0);
  EXPECT_THAT(flush, ::testing::StartsWith("HTTP/1.1 200"));
  EXPECT_THAT(flush, HasSubstr("Cache flushed."));

  // A route that needs a body says so (not "malformed HTTP request" after a timeout).
  t = Clock::now();
  dpserve_test::expect_api_error(
      dpserve_test::raw_http(server.port(),
                             "POST /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
      400, "must be a JSON object");
  EXPECT_LT(since(t), 1.0);

  if (dpserve_test::run_command("curl --version").exit_code != 0) GTEST_SKIP() << "no curl";
  t = Clock::now();
  const auto r = dpserve_test::run_command(
      "curl -s -X POST http://127.0.0.1:" + std::to_string(server.port()) + "/flush_cache");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "Cache flushed.\n");
  EXPECT_LT(since(t), 1.0);
}

}  // namespace
