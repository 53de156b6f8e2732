// Failures and recovery end to end (issue 8), on real `dpserve serve` process trees under load:
// a scheduler rank killed (SIGKILL) or hung (SIGSTOP) under TP, DP attention and plain DP, a rank
// that keeps dying until --max-restarts, and the graceful drain on SIGTERM. Every test checks the
// clients' answers (errors within a bound, reference outputs), the timings and that no process
// outlives the server. Timings go to stdout as "[timing] ..." lines (docs/reliability.md).

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "recovery_util.h"

namespace {

using namespace dpserve_test;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;

// TP=2: rank 1 killed while 8 streams and 4 plain requests run. Every client gets an error
// within 10 s, new requests get 503 + Retry-After while all ranks restart, the reference output
// is back within 30 s, no manual restart.
TEST(TpFaults, RankKilledDuringRequestsRecovers) {
  expect_recovery_after_signal({"--tp-size", "2"}, 1, SIGKILL, 10.0, "TP=2 SIGKILL rank 1");
}

// DP attention (2 ranks in 2 DP groups): one collective group, so every rank restarts.
TEST(DpAttentionFaults, RankKilledDuringRequestsRecovers) {
  expect_recovery_after_signal({"--tp-size", "2", "--dp-size", "2", "--enable-dp-attention"}, 1,
                               SIGKILL, 10.0, "DP attention 2x2 SIGKILL rank 1");
}

// A stopped rank (SIGSTOP, never continued) is a hang: its missed heartbeats (2 s here) get it
// killed and replaced; its peers' clients get errors instead of waiting for the collective.
TEST(TpFaults, StoppedRankIsDetectedByHeartbeatsAndReplaced) {
  expect_recovery_after_signal({"--tp-size", "2", "--heartbeat-timeout", "2"}, 1, SIGSTOP, 10.0,
                               "TP=2 SIGSTOP rank 1 (heartbeat timeout 2 s)");
}

// A step hung inside a collective: rank 1 is stopped (SIGSTOP) and its heartbeats would only be
// missed after 30 s, so rank 0, blocked in the all-reduce, is ended by its own watchdog
// (--watchdog-timeout 2: exit status 3) before Gloo's timeout; the server recovers from that.
TEST(TpFaults, HungCollectiveIsEndedByTheWatchdog) {
  expect_recovery_after_signal(
      {"--tp-size", "2", "--heartbeat-timeout", "30", "--watchdog-timeout", "2"}, 1, SIGSTOP, 10.0,
      "TP=2 SIGSTOP rank 1, rank 0's watchdog (--watchdog-timeout 2)", 0,
      " exited with status 3: its watchdog found a step hung for longer than --watchdog-timeout");
}

// Plain DP: group 1's rank killed while both groups stream. Group 0's in-flight requests finish
// with the reference output; group 1's clients get errors within 10 s; requests pinned to group 1
// get 503 + Retry-After while it restarts and succeed again within 30 s; unpinned requests are
// served by group 0 all along.
TEST(DpFaults, KilledReplicaRecoversWhileTheOtherServes) {
  ServerProcess server({"--dp-size", "2", "--max-total-tokens", "16384"});
  ASSERT_TRUE(server.wait_healthy(seconds(60))) << server.log();
  const std::map<int, pid_t> before = scheduler_ranks(server);
  ASSERT_EQ(before.size(), 2u);
  constexpr int kTokens = 480;
  LoadClients group0(server, 8, 2, kTokens, {{"data_parallel_rank", 0}});
  LoadClients group1(server, 8, 2, kTokens, {{"data_parallel_rank", 1}});
  ASSERT_TRUE(group0.wait_streams_started(seconds(30)));
  ASSERT_TRUE(group1.wait_streams_started(seconds(30)));
  const auto t_kill = RecoveryClock::now();
  ASSERT_EQ(::kill(before.at(1), SIGKILL), 0);
  const std::vector<ClientOutcome>& lost = group1.join();
  RecoveryWatch pinned(server, {{"data_parallel_rank", 1}});  // from the detection on

  // Meanwhile the server as a whole serves: unpinned requests go to group 0.
  for (int i = 0; i < 3; ++i) {
    const Probe p = probe(server);
    EXPECT_EQ(p.status, 200) << p.body;
    EXPECT_TRUE(p.reference) << p.body;
  }
  httplib::Client c = server.client();
  auto health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200) << "one group serves: the server is up";

  expect_dp_group_failover(lost, 8, group0, pinned, 1, t_kill, kTokens,
                           "plain DP 2 SIGKILL group 1", server.log());

  const json info = server_info(server);
  EXPECT_EQ(info["server_state"], "serving");
  ASSERT_EQ(info["ranks"].size(), 2u) << info.dump();
  EXPECT_EQ(info["ranks"][0]["restarts"], 0);
  EXPECT_EQ(info["ranks"][0]["pid"].get<int64_t>(), before.at(0));  // group 0 untouched
  EXPECT_EQ(info["ranks"][1]["restarts"], 1);
  EXPECT_NE(info["ranks"][1]["pid"].get<int64_t>(), before.at(1));
  EXPECT_EQ(info["ranks"][1]["state"], "alive");
  EXPECT_EQ(info["ranks"][1]["dp_group"], 1);
  EXPECT_TRUE(info["ranks"][1]["load"].is_object()) << info["ranks"][1].dump();
  EXPECT_THAT(server.log(), HasSubstr("scheduler rank 1 (node 0, pid " +
                                      std::to_string(before.at(1)) + ", DP group 1) died"));

  std::vector<pid_t> all = children_of(server.pid());
  ASSERT_EQ(::kill(server.pid(), SIGTERM), 0);
  EXPECT_EQ(server.wait_exit(seconds(20)), 0) << server.log();
  EXPECT_TRUE(all_gone(all, seconds(5)));
}

// A rank that dies every time it comes back: after --max-restarts restarts in a row the server
// gives up with a message naming the rank, the cause and the flag, and exits 1.
TEST(RestartLimit, RankThatKeepsDyingStopsTheServer) {
  ServerProcess server({"--max-total-tokens", "4096", "--max-restarts", "2"});
  ASSERT_TRUE(server.wait_healthy(seconds(60))) << server.log();
  std::set<pid_t> killed;
  std::vector<pid_t> seen;
  const auto deadline = RecoveryClock::now() + seconds(40);
  std::optional<int> code;
  while (!(code = server.wait_exit(milliseconds(0))) && RecoveryClock::now() < deadline) {
    for (const auto& [rank, pid] : scheduler_ranks(server)) {
      if (killed.insert(pid).second) {
        seen.push_back(pid);
        ::kill(pid, SIGKILL);
      }
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  ASSERT_TRUE(code.has_value()) << "the server kept restarting\n" << server.log();
  EXPECT_EQ(*code, 1) << server.log();
  EXPECT_EQ(killed.size(), 3u) << "the first process and its 2 replacements";
  EXPECT_THAT(server.log(), HasSubstr("giving up after 2 restarts in a row (--max-restarts 2)"));
  EXPECT_THAT(server.log(),
              HasSubstr("the scheduler process (node 0, pid " + std::to_string(seen.back())));
  EXPECT_TRUE(all_gone(seen, seconds(5)));
}

// The 32 streaming requests of a batch in flight when SIGTERM arrives all finish normally (full
// token counts), /health says "draining" and new requests get 503 meanwhile; the server exits 0,
// its ranks are gone and its runtime directory removed.
TEST(Shutdown, SigtermLetsInFlightStreamsFinish) {
  ServerProcess server({"--dp-size", "2", "--max-total-tokens", "16384"});
  ASSERT_TRUE(server.wait_healthy(seconds(60))) << server.log();
  const std::string runtime_dir = server_info(server)["runtime_dir"];
  const std::vector<pid_t> children = children_of(server.pid());
  constexpr int kTokens = 400;
  LoadClients clients(server, 32, 0, kTokens);
  ASSERT_TRUE(clients.wait_streams_started(seconds(30)));
  const auto t_term = RecoveryClock::now();
  ASSERT_EQ(::kill(server.pid(), SIGTERM), 0);
  std::this_thread::sleep_for(milliseconds(100));
  if (!server.wait_exit(milliseconds(0))) {
    const std::string health = raw_http(server.port(),
                                        "GET /health HTTP/1.1\r\nHost: x\r\n"
                                        "Connection: close\r\n\r\n");
    expect_api_error(health, 503, "draining");
    const std::string gen = raw_http(server.port(), post_request("/generate", R"({"text": "Hi"})"));
    expect_api_error(gen, 503, "shutting down");
  }
  const std::vector<ClientOutcome>& out = clients.join();
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_EQ(out[i].status, 200) << i;
    EXPECT_TRUE(out[i].done_marker) << i;
    EXPECT_FALSE(out[i].error) << i << ": " << out[i].body.substr(0, 300);
    ASSERT_TRUE(out[i].last.is_object()) << i;
    EXPECT_EQ(out[i].last["meta_info"]["finish_reason"]["type"], "length") << i;
    EXPECT_EQ(out[i].last["meta_info"]["completion_tokens"], kTokens) << i;
  }
  const auto code = server.wait_exit(seconds(30));
  ASSERT_TRUE(code.has_value()) << server.log();
  EXPECT_EQ(*code, 0) << server.log();
  std::cout << "[timing] SIGTERM drain of 32 streams: exit after "
            << seconds_between(t_term, RecoveryClock::now()) << " s\n";
  EXPECT_TRUE(all_gone(children, seconds(5))) << "a child outlived the server";
  EXPECT_FALSE(std::filesystem::exists(runtime_dir));
  EXPECT_THAT(server.log(), HasSubstr("every response is complete"));
}

// A second signal during a long drain stops at once: the streams end (error event, [DONE]), the
// server exits 0 within a few seconds instead of waiting for --shutdown-timeout, nothing is left.
TEST(Shutdown, SecondSignalStopsAtOnce) {
  ServerProcess server({"--max-total-tokens", "16384", "--shutdown-timeout", "120"});
  ASSERT_TRUE(server.wait_healthy(seconds(60))) << server.log();
  const std::string runtime_dir = server_info(server)["runtime_dir"];
  const std::vector<pid_t> children = children_of(server.pid());
  LoadClients clients(server, 32, 0, 480);
  ASSERT_TRUE(clients.wait_streams_started(seconds(30)));
  ASSERT_EQ(::kill(server.pid(), SIGTERM), 0);
  std::this_thread::sleep_for(milliseconds(200));
  ASSERT_FALSE(server.wait_exit(milliseconds(0))) << "the drain ended before the second signal";
  const auto t_second = RecoveryClock::now();
  ASSERT_EQ(::kill(server.pid(), SIGINT), 0);
  const auto code = server.wait_exit(seconds(10));
  ASSERT_TRUE(code.has_value()) << server.log();
  const double stop_s = seconds_between(t_second, RecoveryClock::now());
  EXPECT_LT(stop_s, 5.0);
  EXPECT_EQ(*code, 0) << server.log();
  std::cout << "[timing] second signal: exit after " << stop_s << " s\n";
  int cut = 0;
  for (const ClientOutcome& o : clients.join()) {
    EXPECT_LT(seconds_between(t_second, o.ended), 5.0);
    cut += o.error || !o.done_marker ? 1 : 0;
  }
  EXPECT_GT(cut, 0) << "every stream finished: the drain was not long";
  EXPECT_TRUE(all_gone(children, seconds(5)));
  EXPECT_FALSE(std::filesystem::exists(runtime_dir));
  EXPECT_THAT(server.log(), HasSubstr("stopping now"));
}

// Node 0 of two: its port opens at once, and until node 1's rank joined /health and every other
// route answer 503 "starting" with Retry-After. Once both serve, node 1's rank is killed under
// load: node 0's clients get errors, node 0 publishes a restart that node 1's launcher follows,
// and the pair serves the reference again; SIGTERM to node 0 then stops both (exit 0).
TEST(MultiNodeLifecycle, StartingThenRecoveryAcrossNodes) {
  const int coord_port = free_port();
  const std::vector<std::string> common = {
      "--tp-size",          "2",         "--nnodes",           "2",
      "--node-0-address",   "127.0.0.1", "--coordinator-port", std::to_string(coord_port),
      "--max-total-tokens", "16384",     "--cluster-secret",   "lifecycle-secret"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), common.begin(), common.end());
    return extra;
  };
  ServerProcess node0(with({"--node-rank", "0"}));
  std::string health;
  for (int i = 0; i < 200 && health.find("HTTP/1.1 503") == std::string::npos; ++i) {
    std::this_thread::sleep_for(milliseconds(20));
    health = raw_http(node0.port(), "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  }
  expect_api_error(health, 503, "the server is starting");
  EXPECT_THAT(health, HasSubstr("Retry-After: "));
  expect_api_error(
      raw_http(node0.port(), "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
      503, "starting");
  expect_api_error(raw_http(node0.port(), post_request("/generate", R"({"text": "Hi"})")), 503,
                   "starting");

  ServerProcess node1(with({"--node-rank", "1"}));
  ASSERT_TRUE(node0.wait_healthy(seconds(60))) << node0.log() << node1.log();
  ASSERT_TRUE(node1.wait_healthy(seconds(10))) << node1.log();
  EXPECT_TRUE(probe(node0).reference);

  const std::vector<pid_t> before1 = children_of(node1.pid());
  ASSERT_EQ(before1.size(), 1u);
  LoadClients clients(node0, 6, 2, 480);
  ASSERT_TRUE(clients.wait_streams_started(seconds(30)));
  const auto t_kill = RecoveryClock::now();
  ASSERT_EQ(::kill(before1[0], SIGKILL), 0);
  double errors_within = 0;
  for (const ClientOutcome& o : clients.join()) {
    errors_within = std::max(errors_within, seconds_between(t_kill, o.ended));
    EXPECT_TRUE(o.error) << o.body.substr(0, 300);
  }
  EXPECT_LT(errors_within, 10.0);
  RecoveryWatch watch(node0);
  watch.join();
  ASSERT_TRUE(watch.recovered()) << node0.log() << node1.log();
  const double back_s = seconds_between(t_kill, watch.back());
  EXPECT_LT(back_s, 30.0);
  EXPECT_TRUE(watch.saw_503());
  std::cout << "[timing] 2 nodes TP=2, SIGKILL node 1's rank: clients errored within "
            << errors_within << " s, back in service after " << back_s << " s\n";
  const std::vector<pid_t> after1 = children_of(node1.pid());
  ASSERT_EQ(after1.size(), 1u);
  EXPECT_NE(after1[0], before1[0]);
  EXPECT_TRUE(node1.wait_healthy(seconds(10))) << node1.log();
  const json info = server_info(node0);
  ASSERT_EQ(info["ranks"].size(), 2u) << info.dump();
  EXPECT_EQ(info["ranks"][1]["node"], 1);
  EXPECT_EQ(info["ranks"][1]["pid"].get<int64_t>(), after1[0]);
  EXPECT_EQ(info["ranks"][1]["state"], "alive");
  EXPECT_THAT(node1.log(), HasSubstr("node 0 restarts every rank (generation 1)"));

  expect_sigterm_stops_both(node0, node1);
}

// Plain DP over two nodes (loopback): group 0 on node 0, group 1 on node 1. Node 1's rank is killed
// under load: group 0's clients finish with the reference output, group 1's get errors within
// 10 s, node 1's launcher reports the exit and restarts only that rank when node 0 asks, and
// group 1 serves again within 30 s (the controller routes to its new leader). Then group 0's rank
// is killed (a generation node 1 skips) and group 1's again: node 1 still follows generation 3.
// SIGTERM to node 0 stops both nodes (exit 0), nothing is left.
TEST(MultiNodeLifecycle, PlainDpReplicaOnNode1Recovers) {
  LoopbackNodes nodes({"--dp-size", "2", "--tp-size", "1", "--max-total-tokens", "16384",
                       "--cluster-secret", "plain-dp-recovery"});
  ASSERT_TRUE(nodes.wait_healthy(seconds(90)));
  ServerProcess& node0 = nodes.node0;
  ServerProcess& node1 = nodes.node1;
  const std::map<int, pid_t> before0 = scheduler_ranks(node0);
  const std::map<int, pid_t> before1 = scheduler_ranks(node1);
  ASSERT_EQ(before0.size(), 1u);
  ASSERT_EQ(before1.size(), 1u);
  ASSERT_TRUE(before1.count(1));
  // Both groups serve (the controller reached node 1's leader).
  EXPECT_TRUE(probe(node0, {{"data_parallel_rank", 1}}).reference);

  constexpr int kTokens = 480;
  LoadClients group0(node0, 4, 2, kTokens, {{"data_parallel_rank", 0}});
  LoadClients group1(node0, 4, 2, kTokens, {{"data_parallel_rank", 1}});
  ASSERT_TRUE(group0.wait_streams_started(seconds(30)));
  ASSERT_TRUE(group1.wait_streams_started(seconds(30)));
  const auto t_kill = RecoveryClock::now();
  ASSERT_EQ(::kill(before1.at(1), SIGKILL), 0);
  const std::vector<ClientOutcome>& lost = group1.join();
  RecoveryWatch pinned(node0, {{"data_parallel_rank", 1}});
  for (int i = 0; i < 2; ++i) {
    const Probe p = probe(node0);  // unpinned: group 0 serves meanwhile
    EXPECT_EQ(p.status, 200) << p.body;
    EXPECT_TRUE(p.reference) << p.body;
  }
  expect_dp_group_failover(lost, 4, group0, pinned, 1, t_kill, kTokens,
                           "2 nodes plain DP 2, SIGKILL group 1's rank on node 1",
                           node0.log() + node1.log());

  const std::map<int, pid_t> after1 = scheduler_ranks(node1);
  ASSERT_EQ(after1.size(), 1u);
  EXPECT_NE(after1.at(1), before1.at(1));
  EXPECT_TRUE(all_gone({before1.at(1)}, seconds(5)));
  EXPECT_EQ(scheduler_ranks(node0), before0) << "group 0 untouched";
  EXPECT_TRUE(node1.wait_healthy(seconds(10))) << node1.log();
  json info = server_info(node0);
  EXPECT_EQ(info["server_state"], "serving") << info.dump();
  ASSERT_EQ(info["ranks"].size(), 2u) << info.dump();
  EXPECT_EQ(info["ranks"][0]["restarts"], 0);
  EXPECT_EQ(info["ranks"][0]["pid"].get<int64_t>(), before0.at(0));
  EXPECT_EQ(info["ranks"][1]["node"], 1);
  EXPECT_EQ(info["ranks"][1]["restarts"], 1);
  EXPECT_EQ(info["ranks"][1]["pid"].get<int64_t>(), after1.at(1));
  EXPECT_EQ(info["ranks"][1]["state"], "alive");
  EXPECT_EQ(info["ranks"][1]["dp_group"], 1);
  EXPECT_THAT(node0.log(), HasSubstr("scheduler rank 1 (node 1, pid " +
                                     std::to_string(before1.at(1)) + ", DP group 1) died"));
  EXPECT_THAT(node1.log(),
              HasSubstr("node 0 restarts ranks 1 (generation 1): restarting this node's ranks 1"));

  // Generation 2 restarts group 0 on node 0 only; node 1 must still see generation 3.
  ASSERT_EQ(::kill(before0.at(0), SIGKILL), 0);
  RecoveryWatch group0_back(node0, {{"data_parallel_rank", 0}});
  group0_back.join();
  ASSERT_TRUE(group0_back.recovered()) << node0.log();
  const auto t_kill2 = RecoveryClock::now();
  ASSERT_EQ(::kill(after1.at(1), SIGKILL), 0);
  std::this_thread::sleep_for(milliseconds(500));
  RecoveryWatch group1_back(node0, {{"data_parallel_rank", 1}});
  group1_back.join();
  ASSERT_TRUE(group1_back.recovered()) << node0.log() << node1.log();
  EXPECT_LT(seconds_between(t_kill2, group1_back.back()), 30.0);
  EXPECT_THAT(node1.log(), HasSubstr("(generation 3): restarting this node's ranks 1"));
  info = server_info(node0);
  EXPECT_EQ(info["ranks"][0]["restarts"], 1) << info.dump();
  EXPECT_EQ(info["ranks"][1]["restarts"], 2) << info.dump();

  expect_sigterm_stops_both(node0, node1);
}

// The data parallel controller among `server`'s children (its role flag), or 0.
pid_t controller_of(const ServerProcess& server) {
  const std::map<int, pid_t> ranks = scheduler_ranks(server);
  for (pid_t p : children_of(server.pid())) {
    const bool rank =
        std::any_of(ranks.begin(), ranks.end(), [p](const auto& r) { return r.second == p; });
    const std::string cmd = read_file("/proc/" + std::to_string(p) + "/cmdline");
    if (!rank && cmd.find("--dpserve-internal-role=dp_controller") != std::string::npos) return p;
  }
  return 0;
}

struct ControllerCase {
  std::string name;
  std::vector<std::string> flags;
  size_t ranks = 2;
};
void PrintTo(const ControllerCase& c, std::ostream* os) { *os << c.name; }

// Polls /health from `t_kill` until it answers 503 (at most 5 s): the seconds that took (-1 if
// never), its body and Retry-After.
struct Detection {
  double seconds = -1;
  std::string body;
  std::string retry_after;
};
Detection wait_recovering(const ServerProcess& server, RecoveryClock::time_point t_kill) {
  httplib::Client c = server.client();
  Detection d;
  while (RecoveryClock::now() - t_kill < seconds(5)) {
    auto h = c.Get("/health");
    if (h && h->status == 503) {
      d.seconds = seconds_between(t_kill, RecoveryClock::now());
      d.body = h->body;
      d.retry_after = h->get_header_value("Retry-After");
      return d;
    }
    std::this_thread::sleep_for(milliseconds(5));
  }
  return d;
}

// While the controller restarts: new requests get 503 + Retry-After naming it, /health says
// "recovering" (checked by `d`), then the reference answer comes back within 30 s of `t_kill`;
// returns when (seconds after `t_kill`).
double expect_controller_recovery(const ServerProcess& server, const Detection& d,
                                  RecoveryWatch& watch, RecoveryClock::time_point t_kill) {
  EXPECT_GE(d.seconds, 0) << "/health never said 503 after the controller died\n" << server.log();
  EXPECT_THAT(d.body, HasSubstr("the server is recovering"));
  EXPECT_THAT(d.body, HasSubstr("the data parallel controller is restarting"));
  EXPECT_FALSE(d.retry_after.empty());
  watch.join();
  EXPECT_TRUE(watch.recovered()) << server.log();
  const double back_s = seconds_between(t_kill, watch.back());
  EXPECT_LT(back_s, 30.0);
  EXPECT_TRUE(watch.saw_503()) << "no 503 while the controller restarted";
  EXPECT_THAT(watch.first_503().body, HasSubstr("the data parallel controller is restarting"));
  EXPECT_GE(std::atoi(watch.first_503().retry_after.c_str()), 1) << watch.first_503().body;
  EXPECT_TRUE(watch.wrong_answer().empty()) << watch.wrong_answer();
  // Both groups serve through the new controller.
  for (int g = 0; g < 2; ++g) {
    const Probe p = probe(server, {{"data_parallel_rank", g}});
    EXPECT_EQ(p.status, 200) << "DP group " << g << ": " << p.body;
    EXPECT_TRUE(p.reference) << "DP group " << g << ": " << p.body;
  }
  return back_s;
}

class ControllerFaults : public ::testing::TestWithParam<ControllerCase> {};

// The data parallel controller killed (SIGKILL) while both DP groups stream 480-token greedy
// generations: the requests it had dispatched run on in their groups and finish with the
// reference output; the server says "recovering" (503 + Retry-After) while a new controller
// starts on the same endpoints, then serves the reference again through both groups within 30 s.
// Then the new controller is stopped (SIGSTOP) while requests arrive and killed: those it never
// dispatched fail with 503 + Retry-After (streams: an error event, then [DONE]), and it restarts
// again (restart 2). The scheduler ranks are the same processes throughout; SIGTERM still drains
// and leaves nothing behind.
TEST_P(ControllerFaults, KilledControllerRecovers) {
  std::vector<std::string> args = GetParam().flags;
  args.insert(args.end(), {"--max-total-tokens", "16384"});
  ServerProcess server(args);
  ASSERT_TRUE(server.wait_healthy(seconds(60))) << server.log();
  const std::map<int, pid_t> before = scheduler_ranks(server);
  ASSERT_EQ(before.size(), GetParam().ranks);
  const pid_t controller = controller_of(server);
  ASSERT_GT(controller, 0) << "no controller among the server's children";

  // 1. Killed under load.
  constexpr int kTokens = 480;
  LoadClients group0(server, 4, 1, kTokens, {{"data_parallel_rank", 0}});
  LoadClients group1(server, 4, 1, kTokens, {{"data_parallel_rank", 1}});
  ASSERT_TRUE(group0.wait_streams_started(seconds(30))) << server.log();
  ASSERT_TRUE(group1.wait_streams_started(seconds(30))) << server.log();
  const auto t_kill = RecoveryClock::now();
  ASSERT_EQ(::kill(controller, SIGKILL), 0);
  const Detection detected = wait_recovering(server, t_kill);
  RecoveryWatch watch(server);  // unpinned: 503 + Retry-After until the new controller serves
  // The dispatched requests never needed the controller again: they finish normally.
  const std::vector<ClientOutcome>& d0 = group0.join();
  const std::vector<ClientOutcome>& d1 = group1.join();
  double finished_s = 0;
  for (size_t i = 0; i < d0.size(); ++i) {
    expect_reference_completion(d0[i], kTokens, "group 0 client " + std::to_string(i));
    finished_s = std::max(finished_s, seconds_between(t_kill, d0[i].ended));
  }
  for (size_t i = 0; i < d1.size(); ++i) {
    expect_reference_completion(d1[i], kTokens, "group 1 client " + std::to_string(i));
    finished_s = std::max(finished_s, seconds_between(t_kill, d1[i].ended));
  }
  EXPECT_GT(finished_s, detected.seconds) << "the requests did not run across the failure";
  const double back_s = expect_controller_recovery(server, detected, watch, t_kill);
  std::cout << "[timing] " << GetParam().name << " SIGKILL the controller: /health 503 after "
            << detected.seconds << " s, the dispatched requests finished after " << finished_s
            << " s, back in service after " << back_s << " s\n";
  EXPECT_TRUE(all_gone({controller}, seconds(5)));
  const pid_t controller2 = controller_of(server);
  ASSERT_GT(controller2, 0);
  EXPECT_NE(controller2, controller);
  EXPECT_EQ(scheduler_ranks(server), before) << "the ranks were restarted";
  json info = server_info(server);
  EXPECT_EQ(info["server_state"], "serving") << info.dump();
  EXPECT_EQ(info["data_parallel_controller"]["pid"], controller2) << info.dump();
  EXPECT_EQ(info["data_parallel_controller"]["state"], "alive") << info.dump();
  EXPECT_EQ(info["data_parallel_controller"]["restarts"], 1) << info.dump();
  for (const json& r : info["ranks"]) EXPECT_EQ(r["restarts"], 0) << r.dump();
  EXPECT_THAT(server.log(),
              HasSubstr("the data parallel controller (node 0, pid " + std::to_string(controller) +
                        ") died (killed by signal 9 (Killed)); restarting it in 1 s (restart 1"));

  // 2. Requests it never dispatched: lost in its queues, they fail instead of hanging.
  ASSERT_EQ(::kill(controller2, SIGSTOP), 0);
  LoadClients lost(server, 2, 2, 32);
  std::this_thread::sleep_for(milliseconds(300));
  const auto t_kill2 = RecoveryClock::now();
  ASSERT_EQ(::kill(controller2, SIGKILL), 0);
  const Detection detected2 = wait_recovering(server, t_kill2);
  RecoveryWatch watch2(server);
  const std::vector<ClientOutcome>& never = lost.join();
  double lost_s = 0;
  for (size_t i = 0; i < never.size(); ++i) {
    const ClientOutcome& o = never[i];
    lost_s = std::max(lost_s, seconds_between(t_kill2, o.ended));
    EXPECT_LT(seconds_between(t_kill2, o.ended), 10.0) << "undispatched client " << i;
    EXPECT_TRUE(o.error) << "undispatched client " << i << ": " << o.body.substr(0, 300);
    EXPECT_THAT(o.body, HasSubstr("the data parallel controller is restarting"));
    if (i < 2) {
      EXPECT_EQ(o.status, 200) << o.body;
      EXPECT_TRUE(o.done_marker) << "stream " << i << " did not end with [DONE]";
    } else {
      EXPECT_EQ(o.status, 503) << o.body;
      EXPECT_GE(std::atoi(o.retry_after.c_str()), 1) << "503 without Retry-After";
    }
  }
  const double back2_s = expect_controller_recovery(server, detected2, watch2, t_kill2);
  std::cout << "[timing] " << GetParam().name
            << " SIGKILL the stopped controller: undispatched requests failed after " << lost_s
            << " s, back in service after " << back2_s << " s (restart 2: back-off 2 s)\n";
  const pid_t controller3 = controller_of(server);
  EXPECT_GT(controller3, 0);
  EXPECT_NE(controller3, controller2);
  EXPECT_EQ(scheduler_ranks(server), before) << "the ranks were restarted";
  info = server_info(server);
  EXPECT_EQ(info["server_state"], "serving") << info.dump();
  EXPECT_EQ(info["data_parallel_controller"]["restarts"], 2) << info.dump();

  std::vector<pid_t> all = children_of(server.pid());
  ASSERT_EQ(::kill(server.pid(), SIGTERM), 0);
  EXPECT_EQ(server.wait_exit(seconds(20)), 0) << server.log();
  EXPECT_TRUE(all_gone(all, seconds(5))) << "a child outlived the server";
}

// Over two nodes the controller's sockets are tcp with ports the system chose at the first start
// (published in the coordinator, read once by node 1's leader): the restarted controller binds the
// same ports, so node 1's leader, never restarted, reconnects by itself and group 1 serves again.
TEST(MultiNodeLifecycle, KilledControllerRebindsItsTcpPorts) {
  LoopbackNodes nodes({"--dp-size", "2", "--tp-size", "1", "--max-total-tokens", "16384",
                       "--cluster-secret", "controller-recovery"});
  ASSERT_TRUE(nodes.wait_healthy(seconds(90)));
  ServerProcess& node0 = nodes.node0;
  const std::map<int, pid_t> before0 = scheduler_ranks(node0);
  const std::map<int, pid_t> before1 = scheduler_ranks(nodes.node1);
  ASSERT_TRUE(before1.count(1));
  const pid_t controller = controller_of(node0);
  ASSERT_GT(controller, 0);
  LoadClients group1(node0, 2, 1, 480, {{"data_parallel_rank", 1}});
  ASSERT_TRUE(group1.wait_streams_started(seconds(30)));
  const auto t_kill = RecoveryClock::now();
  ASSERT_EQ(::kill(controller, SIGKILL), 0);
  const std::vector<ClientOutcome>& d1 = group1.join();
  for (size_t i = 0; i < d1.size(); ++i) {
    expect_reference_completion(d1[i], 480, "group 1 (node 1) client " + std::to_string(i));
  }
  RecoveryWatch pinned(node0, {{"data_parallel_rank", 1}});
  pinned.join();
  ASSERT_TRUE(pinned.recovered()) << node0.log() << nodes.node1.log();
  const double back_s = seconds_between(t_kill, pinned.back());
  EXPECT_LT(back_s, 30.0);
  EXPECT_TRUE(probe(node0, {{"data_parallel_rank", 0}}).reference);
  std::cout << "[timing] 2 nodes plain DP 2, SIGKILL the controller: group 1 (node 1) back after "
            << back_s << " s\n";
  // The new controller was given explicit ports, no "*".
  const pid_t controller2 = controller_of(node0);
  ASSERT_GT(controller2, 0);
  EXPECT_NE(controller2, controller);
  std::string cmd = read_file("/proc/" + std::to_string(controller2) + "/cmdline");
  std::replace(cmd.begin(), cmd.end(), '\0', ' ');
  EXPECT_THAT(cmd, HasSubstr("--leader-input tcp://0.0.0.0:")) << cmd;
  EXPECT_THAT(cmd, ::testing::Not(HasSubstr(":*"))) << cmd;
  EXPECT_EQ(scheduler_ranks(node0), before0);
  EXPECT_EQ(scheduler_ranks(nodes.node1), before1) << "node 1's leader was not restarted";

  expect_sigterm_stops_both(node0, nodes.node1);
}

INSTANTIATE_TEST_SUITE_P(DpFaults, ControllerFaults,
                         ::testing::Values(ControllerCase{"plain DP 2", {"--dp-size", "2"}, 2},
                                           ControllerCase{"DP attention 2x2",
                                                          {"--tp-size", "2", "--dp-size", "2",
                                                           "--enable-dp-attention"},
                                                          2}),
                         [](const ::testing::TestParamInfo<ControllerCase>& i) {
                           return i.index == 0 ? std::string("PlainDp")
                                               : std::string("DpAttention");
                         });

}  // namespace
