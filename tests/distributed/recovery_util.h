#pragma once
// Helpers for the failure and recovery tests (issue 8): clients that keep a server busy with long
// greedy generations (streaming or not) and record how each one ended, the scheduler rank
// processes of a server, and the whole "kill a rank under load, then check errors, 503 +
// Retry-After and recovery" scenario shared by the TP and DP attention tests.

#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "../http/server_process.h"
#include "cluster_util.h"

namespace dpserve_test {

using RecoveryClock = std::chrono::steady_clock;

// Seconds from `a` to `b`.
inline double seconds_between(RecoveryClock::time_point a, RecoveryClock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The scheduler rank processes among `server`'s children: global rank -> pid (the controller and
// anything else left out).
inline std::map<int, pid_t> scheduler_ranks(const ServerProcess& server) {
  std::map<int, pid_t> out;
  for (pid_t p : children_of(server.pid())) {
    std::string cmd = read_file("/proc/" + std::to_string(p) + "/cmdline");
    std::vector<std::string> args;
    for (size_t at = 0; at < cmd.size();) {
      const size_t end = cmd.find('\0', at);
      args.push_back(cmd.substr(at, end == std::string::npos ? std::string::npos : end - at));
      at = end == std::string::npos ? cmd.size() : end + 1;
    }
    bool scheduler = false;
    int rank = 0;
    for (size_t i = 0; i < args.size(); ++i) {
      if (args[i] == "--dpserve-internal-role=scheduler") scheduler = true;
      if (args[i] == "--dpserve-rank" && i + 1 < args.size()) rank = std::stoi(args[i + 1]);
    }
    if (scheduler) out[rank] = p;
  }
  return out;
}

// How one /generate call ended.
struct ClientOutcome {
  int status = 0;           // HTTP status; 0 = no answer
  std::string body;         // the whole body (SSE text for streams)
  std::string retry_after;  // the Retry-After header of an error answer
  RecoveryClock::time_point ended{};
  bool error = false;        // an error body (non-streaming) or error event (stream)
  bool done_marker = false;  // a stream ended with "data: [DONE]"
  nlohmann::json last;       // the final result object (non-error), if any
};

// Greedy generations of `max_new_tokens` (EOS ignored) of the reference prompt, on threads.
class LoadClients {
 public:
  // `streams` streaming and `plain` non-streaming clients; `extra` is merged into each body
  // (e.g. {"data_parallel_rank": 1}).
  LoadClients(const ServerProcess& server, int streams, int plain, int max_new_tokens,
              const nlohmann::json& extra = nlohmann::json::object())
      : outcomes_(static_cast<size_t>(streams + plain)) {
    for (int i = 0; i < streams + plain; ++i) {
      const bool stream = i < streams;
      nlohmann::json body = {
          {"text", reference_outputs()["prompt_text"]},
          {"stream", stream},
          {"sampling_params",
           {{"max_new_tokens", max_new_tokens}, {"temperature", 0}, {"ignore_eos", true}}}};
      body.update(extra, true);
      threads_.emplace_back([this, &server, i, stream, body] { run(server, i, stream, body); });
    }
    streams_ = streams;
  }
  ~LoadClients() { join(); }

  // True once every streaming client got its first bytes (its request is running).
  bool wait_streams_started(std::chrono::seconds timeout) {
    const auto deadline = RecoveryClock::now() + timeout;
    while (started_.load() < streams_ && RecoveryClock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return started_.load() >= streams_;
  }
  // Waits for every client.
  const std::vector<ClientOutcome>& join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
    return outcomes_;
  }

 private:
  void run(const ServerProcess& server, int i, bool stream, const nlohmann::json& body) {
    ClientOutcome& o = outcomes_[static_cast<size_t>(i)];
    httplib::Client c = server.client();
    c.set_read_timeout(60, 0);
    httplib::Request req;
    req.method = "POST";
    req.path = "/generate";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    bool counted = false;
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      o.body.append(data, n);
      if (stream && !counted) started_.fetch_add(1);
      counted = true;
      return true;
    };
    auto r = c.send(req);
    o.ended = RecoveryClock::now();
    if (r) {
      o.status = r->status;
      o.retry_after = r->get_header_value("Retry-After");
      if (o.body.empty()) o.body = r->body;
    }
    if (stream && o.status == 200) {
      const std::vector<std::string> events = sse_payloads(o.body);
      o.done_marker = !events.empty() && events.back() == "[DONE]";
      for (const std::string& e : events) {
        const nlohmann::json j = nlohmann::json::parse(e, nullptr, false);
        if (j.is_object() && j.contains("error")) o.error = true;
        if (j.is_object() && j.contains("meta_info")) o.last = j;
      }
    } else {
      const nlohmann::json j = nlohmann::json::parse(o.body, nullptr, false);
      o.error = j.is_object() && j.contains("error");
      if (j.is_object() && j.contains("meta_info")) o.last = j;
    }
  }

  std::vector<ClientOutcome> outcomes_;
  std::vector<std::thread> threads_;
  std::atomic<int> started_{0};
  int streams_ = 0;
};

// True when `o` finished normally with `n` tokens whose first ones are the reference greedy ids.
inline void expect_reference_completion(const ClientOutcome& o, int n, const std::string& what) {
  ASSERT_EQ(o.status, 200) << what << ": " << o.body.substr(0, 500);
  EXPECT_FALSE(o.error) << what << ": "
                        << o.body.substr(o.body.size() > 600 ? o.body.size() - 600 : 0);
  ASSERT_TRUE(o.last.is_object()) << what;
  EXPECT_EQ(o.last["meta_info"]["finish_reason"]["type"], "length") << what;
  EXPECT_EQ(o.last["meta_info"]["completion_tokens"], n) << what;
  const auto want = reference_outputs()["greedy"]["ids"].get<std::vector<int>>();
  const auto got = o.last["output_ids"].get<std::vector<int>>();
  ASSERT_GE(got.size(), want.size()) << what;
  EXPECT_EQ(std::vector<int>(got.begin(), got.begin() + static_cast<long>(want.size())), want)
      << what;
}

// One greedy reference request (32 tokens): its status and Retry-After, and whether the ids are
// the reference ones.
struct Probe {
  int status = 0;
  std::string retry_after;
  std::string body;
  bool reference = false;
};
inline Probe probe(const ServerProcess& server,
                   const nlohmann::json& extra = nlohmann::json::object()) {
  const nlohmann::json ref = reference_outputs();
  nlohmann::json body = {{"text", ref["prompt_text"]},
                         {"sampling_params", {{"max_new_tokens", 32}, {"temperature", 0}}}};
  body.update(extra, true);
  httplib::Client c = server.client();
  c.set_read_timeout(30, 0);
  Probe p;
  auto r = c.Post("/generate", body.dump(), "application/json");
  if (!r) return p;
  p.status = r->status;
  p.retry_after = r->get_header_value("Retry-After");
  p.body = r->body;
  if (r->status == 200) {
    const nlohmann::json j = nlohmann::json::parse(r->body, nullptr, false);
    p.reference = j.is_object() && j["output_ids"] == ref["greedy"]["ids"];
  }
  return p;
}

// Polls `probe` every 50 ms from the moment it is made until a reference answer: records the
// first 503 (with its Retry-After) and when service came back.
class RecoveryWatch {
 public:
  explicit RecoveryWatch(const ServerProcess& server,
                         nlohmann::json extra = nlohmann::json::object())
      : thread_([this, &server, extra] {
          const auto deadline = RecoveryClock::now() + std::chrono::seconds(60);
          while (RecoveryClock::now() < deadline) {
            const Probe p = probe(server, extra);
            if (p.status == 503 && !saw_503_) {
              saw_503_ = true;
              first_503_ = p;
              httplib::Client c = server.client();
              if (auto h = c.Get("/health")) {
                health_status_ = h->status;
                health_body_ = h->body;
              }
            }
            if (p.status == 200 && p.reference) {
              back_ = RecoveryClock::now();
              recovered_ = true;
              return;
            }
            if (p.status == 200 && !p.reference) wrong_ = p.body;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
          }
        }) {}
  ~RecoveryWatch() { join(); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  bool recovered() const { return recovered_; }
  RecoveryClock::time_point back() const { return back_; }
  bool saw_503() const { return saw_503_; }
  const Probe& first_503() const { return first_503_; }
  const std::string& wrong_answer() const { return wrong_; }
  // /health right after the first 503: its status and body.
  int health_status() const { return health_status_; }
  const std::string& health_body() const { return health_body_; }

 private:
  bool recovered_ = false, saw_503_ = false;
  RecoveryClock::time_point back_{};
  Probe first_503_;
  std::string wrong_;
  int health_status_ = 0;
  std::string health_body_;
  std::thread thread_;
};

// The plain DP failover checks once DP group `group`'s rank was killed at `t_kill`: each of its
// clients (`lost`, the `streams` streaming ones first) ended with an error within 10 s (streams:
// 200 and an error event; plain: 503); each client of the surviving group (`kept`) finished with
// `tokens` tokens of the reference; the requests pinned to `group` (`pinned`, watching since the
// failure) got 503 "DP group <group> is restarting" with a Retry-After, never a wrong answer, and
// the reference again within 30 s. Prints the timings as "[timing] <tag>: ...".
inline void expect_dp_group_failover(const std::vector<ClientOutcome>& lost, size_t streams,
                                     LoadClients& kept, RecoveryWatch& pinned, int group,
                                     RecoveryClock::time_point t_kill, int tokens,
                                     const std::string& tag, const std::string& logs) {
  double errors_within = 0;
  for (size_t i = 0; i < lost.size(); ++i) {
    const double t = seconds_between(t_kill, lost[i].ended);
    errors_within = std::max(errors_within, t);
    EXPECT_LT(t, 10.0) << "lost client " << i;
    EXPECT_TRUE(lost[i].error) << "lost client " << i << ": " << lost[i].body.substr(0, 300);
    EXPECT_EQ(lost[i].status, i < streams ? 200 : 503) << lost[i].body.substr(0, 300);
  }
  const std::vector<ClientOutcome>& done = kept.join();
  for (size_t i = 0; i < done.size(); ++i) {
    expect_reference_completion(done[i], tokens, "surviving client " + std::to_string(i));
  }
  pinned.join();
  ASSERT_TRUE(pinned.recovered()) << logs;
  const double back_s = seconds_between(t_kill, pinned.back());
  EXPECT_LT(back_s, 30.0);
  ASSERT_TRUE(pinned.saw_503()) << "no 503 for DP group " << group << " while it restarted";
  EXPECT_THAT(pinned.first_503().body,
              ::testing::HasSubstr("DP group " + std::to_string(group) + " is restarting"));
  EXPECT_FALSE(pinned.first_503().retry_after.empty());
  EXPECT_TRUE(pinned.wrong_answer().empty()) << pinned.wrong_answer();
  std::cout << "[timing] " << tag << ": its clients errored within " << errors_within
            << " s, DP group " << group << " back in service after " << back_s << " s\n";
}

// The whole-server recovery scenario (one collective group: TP, DP attention): a server started
// with `flags` serves long greedy generations (8 streams, 4 plain); `sig` (SIGKILL or SIGSTOP)
// hits scheduler rank `victim`. Every in-flight client must end with an error (streams: an error
// event then [DONE]; plain: 503 with an OpenAI error body) within `error_bound`; requests during
// the recovery get 503 + Retry-After; the reference output is served again within 30 s of the
// signal without a restart of the server; the victim is gone and its replacements are new
// processes; no rank outlives the server. The log must name the failed rank with its node and pid:
// `victim`, or `reported` when another rank is the one that fails (with `cause` in that line).
inline void expect_recovery_after_signal(const std::vector<std::string>& flags, int victim, int sig,
                                         double error_bound_s, const std::string& tag,
                                         int reported = -1, const std::string& cause = "") {
  if (reported < 0) reported = victim;
  std::vector<std::string> args = flags;
  args.insert(args.end(), {"--max-total-tokens", "16384", "--dist-timeout", "10"});
  ServerProcess server(args);
  ASSERT_TRUE(server.wait_healthy(std::chrono::seconds(60))) << server.log();
  const std::map<int, pid_t> before = scheduler_ranks(server);
  ASSERT_TRUE(before.count(victim)) << "no rank " << victim;
  ASSERT_TRUE(before.count(reported)) << "no rank " << reported;

  LoadClients clients(server, 8, 4, 480);
  ASSERT_TRUE(clients.wait_streams_started(std::chrono::seconds(30))) << server.log();
  const auto t_signal = RecoveryClock::now();
  ASSERT_EQ(::kill(before.at(victim), sig), 0);
  const std::vector<ClientOutcome>& out = clients.join();
  RecoveryWatch watch(server);  // from the failure's detection on
  double last_error_s = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const ClientOutcome& o = out[i];
    const bool stream = i < 8;
    const double t = seconds_between(t_signal, o.ended);
    last_error_s = std::max(last_error_s, t);
    EXPECT_LT(t, error_bound_s) << "client " << i;
    EXPECT_TRUE(o.error) << "client " << i << " did not see the failure: " << o.body.substr(0, 300);
    if (stream) {
      EXPECT_EQ(o.status, 200) << "client " << i;
      EXPECT_TRUE(o.done_marker) << "stream " << i << " did not end with [DONE]";
    } else {
      EXPECT_EQ(o.status, 503) << "client " << i << ": " << o.body;
    }
  }
  watch.join();
  ASSERT_TRUE(watch.recovered()) << server.log();
  const double back_s = seconds_between(t_signal, watch.back());
  EXPECT_LT(back_s, 30.0) << server.log();
  ASSERT_TRUE(watch.saw_503()) << "no 503 while recovering";
  EXPECT_THAT(watch.first_503().body, ::testing::HasSubstr("recovering"));
  EXPECT_FALSE(watch.first_503().retry_after.empty()) << "503 without Retry-After";
  EXPECT_GE(std::atoi(watch.first_503().retry_after.c_str()), 1);
  EXPECT_EQ(watch.health_status(), 503);
  EXPECT_THAT(watch.health_body(), ::testing::HasSubstr("the server is recovering"));
  EXPECT_TRUE(watch.wrong_answer().empty()) << watch.wrong_answer();
  std::cout << "[timing] " << tag << ": clients errored within " << last_error_s
            << " s, back in service after " << back_s << " s\n";

  EXPECT_TRUE(all_gone({before.at(victim)}, std::chrono::seconds(5))) << "the victim lives on";
  const std::map<int, pid_t> after = scheduler_ranks(server);
  EXPECT_EQ(after.size(), before.size());
  for (const auto& [rank, pid] : after) EXPECT_NE(pid, before.at(rank)) << "rank " << rank;
  const nlohmann::json info = server_info(server);
  EXPECT_EQ(info["server_state"], "serving") << info.dump();
  for (const nlohmann::json& r : info["ranks"]) {
    EXPECT_EQ(r["state"], "alive") << r.dump();
    EXPECT_EQ(r["restarts"], 1) << r.dump();
    EXPECT_EQ(r["pid"].get<int64_t>(), after.at(r["rank"].get<int>())) << r.dump();
  }
  // One log line names the rank, its node, its pid (and its DP group under DP attention) and the
  // cause.
  const std::string log = server.log();
  const std::string named = "scheduler rank " + std::to_string(reported) + " (node 0, pid " +
                            std::to_string(before.at(reported));
  const size_t at = log.find(named);
  EXPECT_NE(at, std::string::npos) << "no line names " << named;
  if (at != std::string::npos) {
    const size_t close = log.find(')', at + named.size());
    EXPECT_EQ(log.substr(close + 1, cause.size()), cause) << log.substr(at, 300);
  }

  std::vector<pid_t> all;
  for (const auto& [rank, pid] : after) all.push_back(pid);
  ASSERT_EQ(::kill(server.pid(), SIGTERM), 0);
  EXPECT_EQ(server.wait_exit(std::chrono::seconds(20)), 0) << server.log();
  EXPECT_TRUE(all_gone(all, std::chrono::seconds(5))) << "a rank outlived the server";
}

}  // namespace dpserve_test
