// Soak test: 64 concurrent streaming clients for 30 s against one `dpserve serve` (stories260K),
// mixing /generate, /v1/completions and /v1/chat/completions with random lengths and sampling,
// some clients hanging up early. Every complete stream must be well formed and complete (ends in
// [DONE], one finish per choice, usage.completion_tokens equal to the tokens the chunks carried);
// no request may be lost or answered twice (unique ids; the scheduler finished exactly as many
// requests as were sent); afterwards the server is healthy and every KV page is free. The
// resident memory (VmRSS) of the main process and of the scheduler process, sampled under load
// after a warm-up (a third of the run, at most 60 s) and again at the end of the load, may not
// grow by 5 % or more.
//
// Its own binary (test_http_soak) so it can run alone: ctest -R test_http_soak.
// DPSERVE_SOAK_CLIENTS and DPSERVE_SOAK_SECONDS override the 64 clients and the 30 s, e.g.
// DPSERVE_SOAK_CLIENTS=256 DPSERVE_SOAK_SECONDS=300 build/tests/http/test_http_soak.

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "server_process.h"

namespace {

using dpserve_test::ServerProcess;
using nlohmann::json;

constexpr double kMaxRssGrowth = 0.05;

// A positive integer from the environment, or `fallback`.
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && std::atoi(v) > 0 ? std::atoi(v) : fallback;
}

// VmRSS of a process in KiB (-1 when it cannot be read).
int64_t rss_kib(int64_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atoll(line.c_str() + 6);
  }
  return -1;
}

enum class Route { kGenerate, kCompletions, kChat };

// What one client request checks and reports.
struct Outcome {
  bool complete = false;  // the stream ran to [DONE] (not cut by the client)
  std::string id;         // the response id (rid for /generate)
  std::string error;      // a protocol violation, "" when none
};

// Checks a finished /generate stream: cumulative texts, one final chunk, the token counts.
std::string check_generate(const std::vector<std::string>& events, const std::string& rid,
                           int64_t max_new, bool ignore_eos) {
  if (events.size() < 2 || events.back() != "[DONE]") return "no [DONE] at the end";
  std::string prev;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json c = json::parse(events[i], nullptr, false);
    if (!c.is_object()) return "a chunk is not JSON: " + events[i];
    if (c["meta_info"]["id"] != rid) return "a chunk of another request: " + events[i];
    const std::string text = c["text"];
    if (text.compare(0, prev.size(), prev) != 0) return "the cumulative text shrank";
    prev = text;
    const bool last = i + 2 == events.size();
    if (c["meta_info"]["finish_reason"].is_null() == last) return "finish_reason misplaced";
    if (last) {
      const int64_t n = c["meta_info"]["completion_tokens"];
      if (static_cast<int64_t>(c["output_ids"].size()) != n) return "output_ids != tokens";
      if (n > max_new || (ignore_eos && n != max_new)) {
        return "completion_tokens " + std::to_string(n) + " for max " + std::to_string(max_new);
      }
    }
  }
  return "";
}

// Checks a finished /v1 stream (logprobs on, include_usage): one id, one finish, a token entry
// per generated token, the usage chunk last.
std::string check_v1(const std::vector<std::string>& events, bool chat, int64_t max_new,
                     bool ignore_eos, std::string& id) {
  if (events.size() < 2 || events.back() != "[DONE]") return "no [DONE] at the end";
  int64_t tokens = 0, finishes = 0;
  json usage;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json c = json::parse(events[i], nullptr, false);
    if (!c.is_object() || !c.contains("choices")) return "a chunk is not a chunk: " + events[i];
    if (id.empty()) id = c["id"];
    if (c["id"] != id) return "two ids in one stream";
    if (!usage.is_null()) return "a chunk after the usage chunk";
    if (!c["usage"].is_null()) {
      usage = c["usage"];
      if (!c["choices"].empty()) return "the usage chunk has choices";
      continue;
    }
    for (const json& ch : c["choices"]) {
      if (ch["index"] != 0) return "a choice index other than 0";
      if (finishes > 0) return "a chunk after finish_reason";
      if (!ch["logprobs"].is_null()) {
        tokens += static_cast<int64_t>(
            (chat ? ch["logprobs"]["content"] : ch["logprobs"]["tokens"]).size());
      }
      if (!ch["finish_reason"].is_null()) ++finishes;
    }
  }
  if (finishes != 1) return "finish_reason count " + std::to_string(finishes);
  if (usage.is_null()) return "no usage chunk";
  const int64_t n = usage["completion_tokens"];
  if (n != tokens) {
    return "usage.completion_tokens " + std::to_string(n) + " but the chunks carried " +
           std::to_string(tokens) + " tokens";
  }
  if (n > max_new || (ignore_eos && n != max_new)) {
    return "completion_tokens " + std::to_string(n) + " for max " + std::to_string(max_new);
  }
  if (usage["total_tokens"] != usage["prompt_tokens"].get<int64_t>() + n) return "total_tokens";
  return "";
}

// One streaming request; hangs up after `cut_after` body bytes when set.
Outcome one_request(int port, Route route, std::mt19937_64& rng, int client, int seq) {
  static const std::vector<std::string> prompts = {
      "Once upon a time",   "Tom",         "Lily went to the park", "The cat",
      "One day, a big dog", "Sam and Sue", "The sun was hot"};
  const std::string prompt = prompts[rng() % prompts.size()];
  const int64_t max_new = 1 + static_cast<int64_t>(rng() % 64);
  const bool ignore_eos = rng() % 2 == 0;
  const bool greedy = rng() % 3 == 0;
  const bool cut = rng() % 6 == 0;
  const size_t cut_after = 200 + rng() % 400;
  const std::string rid = "soak-" + std::to_string(client) + "-" + std::to_string(seq);

  json body;
  std::string path;
  if (route == Route::kGenerate) {
    path = "/generate";
    body = {{"text", prompt},
            {"rid", rid},
            {"stream", true},
            {"sampling_params",
             {{"max_new_tokens", max_new},
              {"ignore_eos", ignore_eos},
              {"temperature", greedy ? 0.0 : 0.9},
              {"seed", rng() % 100000}}}};
  } else {
    path = route == Route::kChat ? "/v1/chat/completions" : "/v1/completions";
    body = {{"max_tokens", max_new},
            {"ignore_eos", ignore_eos},
            {"temperature", greedy ? 0.0 : 0.9},
            {"seed", rng() % 100000},
            {"stream", true},
            {"stream_options", {{"include_usage", true}}}};
    if (route == Route::kChat) {
      body["messages"] = {{{"role", "user"}, {"content", prompt}}};
      body["logprobs"] = true;
    } else {
      body["prompt"] = prompt;
      body["logprobs"] = 0;
    }
  }

  Outcome out;
  std::string received;
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(120, 0);
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    received.append(data, len);
    return !(cut && received.size() >= cut_after);
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool ok = c.send(req, res, err);
  if (cut && received.size() >= cut_after) return out;  // hung up on purpose
  if (!ok) {
    out.error = "request failed: " + httplib::to_string(err);
    return out;
  }
  if (res.status != 200) {
    out.error = "status " + std::to_string(res.status) + ": " + received;
    return out;
  }
  out.complete = true;
  const std::vector<std::string> events = dpserve_test::sse_payloads(received);
  if (route == Route::kGenerate) {
    out.id = rid;
    out.error = check_generate(events, rid, max_new, ignore_eos);
  } else {
    out.error = check_v1(events, route == Route::kChat, max_new, ignore_eos, out.id);
  }
  return out;
}

json server_info(ServerProcess& server) {
  httplib::Client c = server.client();
  auto r = c.Get("/get_server_info");
  return r && r->status == 200 ? json::parse(r->body) : json::object();
}

TEST(Soak, StreamingClientsWithRandomDisconnects) {
  ServerProcess server({"--max-total-tokens", "16384"});
  ASSERT_TRUE(server.wait_healthy()) << server.log();
  const json info0 = server_info(server);
  const int64_t finished_before =
      info0["internal_states"][0]["stats"]["num_finished"].get<int64_t>();
  const int64_t main_pid = server.pid();
  const int64_t scheduler_pid = info0["scheduler_pid"].get<int64_t>();

  const int kClients = env_int("DPSERVE_SOAK_CLIENTS", 64);
  const int seconds = env_int("DPSERVE_SOAK_SECONDS", 30);
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::seconds(seconds);
  // Memory under load: after the warm-up, and at the end (the clients' last second).
  const auto warm = start + std::chrono::milliseconds(std::min(seconds * 1000 / 3, 60000));
  const auto late = deadline - std::chrono::seconds(1);
  int64_t rss_warm[2] = {-1, -1}, rss_end[2] = {-1, -1};
  std::thread sampler([&] {
    std::this_thread::sleep_until(warm);
    rss_warm[0] = rss_kib(main_pid);
    rss_warm[1] = rss_kib(scheduler_pid);
    std::this_thread::sleep_until(late);
    rss_end[0] = rss_kib(main_pid);
    rss_end[1] = rss_kib(scheduler_pid);
  });

  std::mutex mu;
  std::vector<std::string> errors;
  std::set<std::string> ids;
  std::vector<std::string> duplicates;
  std::atomic<int64_t> sent{0}, complete{0}, cut{0};
  int64_t per_route[3] = {0, 0, 0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      std::mt19937_64 rng(1000 + i);
      for (int seq = 0; std::chrono::steady_clock::now() < deadline; ++seq) {
        const auto route = static_cast<Route>(rng() % 3);
        const Outcome o = one_request(server.port(), route, rng, i, seq);
        sent.fetch_add(1);
        std::lock_guard<std::mutex> lock(mu);
        ++per_route[static_cast<int>(route)];
        if (!o.error.empty()) errors.push_back("client " + std::to_string(i) + ": " + o.error);
        if (o.complete) {
          complete.fetch_add(1);
          if (!ids.insert(o.id).second) duplicates.push_back(o.id);
        } else if (o.error.empty()) {
          cut.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  sampler.join();

  std::cout << "soak: " << kClients << " clients for " << seconds << " s: " << sent.load()
            << " requests (" << per_route[0] << " /generate, " << per_route[1]
            << " /v1/completions, " << per_route[2] << " /v1/chat/completions), " << complete.load()
            << " complete, " << cut.load() << " cut by their client, " << errors.size()
            << " errors, " << duplicates.size() << " duplicate ids\n";
  const char* names[2] = {"main process", "scheduler process"};
  for (int p = 0; p < 2; ++p) {
    std::cout << "soak: " << names[p] << " VmRSS " << rss_warm[p] << " KiB after the warm-up, "
              << rss_end[p] << " KiB at the end ("
              << (rss_warm[p] > 0 ? 100.0 * static_cast<double>(rss_end[p] - rss_warm[p]) /
                                        static_cast<double>(rss_warm[p])
                                  : 0.0)
              << " %)\n";
    ASSERT_GT(rss_warm[p], 0) << names[p];
    ASSERT_GT(rss_end[p], 0) << names[p];
    EXPECT_LT(static_cast<double>(rss_end[p]),
              static_cast<double>(rss_warm[p]) * (1.0 + kMaxRssGrowth))
        << names[p] << " grew from " << rss_warm[p] << " KiB to " << rss_end[p] << " KiB";
  }
  EXPECT_GT(complete.load(), kClients);
  EXPECT_GT(cut.load(), 0);
  EXPECT_TRUE(errors.empty()) << errors.size() << " errors, first: " << errors.front();
  EXPECT_TRUE(duplicates.empty()) << "duplicate response id " << duplicates.front();

  // Healthy, idle, and the scheduler finished (or aborted) exactly the requests sent.
  httplib::Client c = server.client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  json info;
  for (int i = 0; i < 1000; ++i) {
    info = server_info(server);
    if (info["num_live_requests"] == 0 && info["internal_states"][0]["num_running_reqs"] == 0 &&
        info["internal_states"][0]["num_waiting_reqs"] == 0) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const json& s = info["internal_states"][0];
  std::cout << "soak: idle: " << info["num_live_requests"] << " live requests, "
            << s["num_free_pages"] << " of " << s["num_pages"] << " pages free before the flush; "
            << "VmRSS main " << rss_kib(main_pid) << " KiB, scheduler " << rss_kib(scheduler_pid)
            << " KiB\n";
  EXPECT_EQ(info["num_live_requests"], 0);
  EXPECT_EQ(s["num_running_reqs"], 0);
  EXPECT_EQ(s["memory_check"], "") << s.dump();
  EXPECT_EQ(s["stats"]["num_finished"].get<int64_t>() - finished_before, sent.load()) << s.dump();
  auto f = c.Post("/flush_cache");
  ASSERT_TRUE(f);
  EXPECT_EQ(f->status, 200) << f->body;
  const json after = server_info(server)["internal_states"][0];
  EXPECT_EQ(after["all_pages_free"], true) << after.dump();
  EXPECT_EQ(after["num_free_pages"], after["num_pages"]);
  std::cout << "soak: after the flush: " << after["num_free_pages"] << " of " << after["num_pages"]
            << " pages free, all_pages_free " << after["all_pages_free"] << "\n";
  // And it still answers.
  auto g = c.Post("/v1/completions", R"({"prompt": "Once upon a time", "max_tokens": 4})",
                  "application/json");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->status, 200) << g->body;
}

}  // namespace
