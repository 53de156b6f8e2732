// The DataParallelController as a real child process (the dpserve binary, role dp_controller)
// between real ZeroMQ ipc sockets: this test binds the TokenizerManager's two sockets and plays
// the DP group leaders with sockets of its own (they receive the requests and send LoadReports and
// control answers, the controller's real protocol peers). Checked: exactly-once delivery under 64
// concurrent senders, explicit DP ranks, a bad DP rank answered with a clear error, aborts and
// flushes reaching every group with one combined answer, per-group load in the server info,
// load-aware dispatch and stale groups, and the controller dying with its parent.

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/managers/data_parallel_controller.h"
#include "dpserve/managers/load_reporter.h"

namespace dpserve {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// One running controller child with the TokenizerManager's sockets and N fake leaders.
class ControllerHarness {
 public:
  ControllerHarness(int dp_size, std::string_view method, milliseconds stale = milliseconds(10000))
      : dir_("dpc-test"), to_ctrl_(zmq::socket_type::push), from_ctrl_(zmq::socket_type::pull) {
    // The main process binds these two (as launch_server does for one scheduler).
    to_ctrl_.bind(dir_.endpoint("scheduler_input"));
    from_ctrl_.bind(dir_.endpoint("scheduler_output"));
    child_ = std::make_unique<ChildProcess>(ChildSpec{
        .role = kDpControllerRole,
        .args = data_parallel_controller_args(dir_.path(), dp_size, method, stale, "warning"),
        .name = "dp controller",
        .executable = DPSERVE_BINARY});
    ready_ = child_->wait_ready(milliseconds(30000));
    for (int k = 0; k < dp_size; ++k) {
      leader_in_.emplace_back(zmq::socket_type::pull);
      leader_in_.back().connect(dir_.endpoint(dp_leader_input_socket(k)));
      leader_out_.emplace_back(zmq::socket_type::push);
      leader_out_.back().connect(dir_.endpoint(kDpControllerLoadSocket));
    }
  }

  // Sends from the TokenizerManager's side (thread-safe).
  void send(const Message& m) {
    std::lock_guard<std::mutex> lock(send_mu_);
    ASSERT_TRUE(to_ctrl_.send(m, milliseconds(5000)));
  }
  // Sends from leader k to the controller.
  void leader_send(int k, const Message& m) {
    ASSERT_TRUE(leader_out_[static_cast<size_t>(k)].send(m, milliseconds(5000)));
  }
  // What the TokenizerManager receives next, past the dispatch notices (kept in notices()).
  std::optional<Message> tm_recv(milliseconds timeout = milliseconds(10000)) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      std::optional<Message> m = from_ctrl_.recv(std::max(left, milliseconds(0)));
      if (!m || !std::holds_alternative<DpDispatchNotice>(*m)) return m;
      const auto& n = std::get<DpDispatchNotice>(*m);
      EXPECT_EQ(n.rids.size(), n.dp_ranks.size());
      for (size_t i = 0; i < n.rids.size() && i < n.dp_ranks.size(); ++i) {
        notices_[n.rids[i]] = n.dp_ranks[i];
      }
    }
  }
  // rid -> DP group, from the dispatch notices tm_recv has seen.
  const std::map<std::string, int32_t>& notices() const { return notices_; }
  // Next message at leader k.
  std::optional<Message> leader_recv(int k, milliseconds timeout = milliseconds(10000)) {
    return leader_in_[static_cast<size_t>(k)].recv(timeout);
  }
  // Every message reaching any leader until `count` arrived or `timeout` passed: (group, message).
  std::vector<std::pair<int, Message>> drain_leaders(size_t count, milliseconds timeout) {
    std::vector<std::pair<int, Message>> got;
    std::vector<MessageSocket*> socks;
    for (MessageSocket& s : leader_in_) socks.push_back(&s);
    const auto deadline = Clock::now() + timeout;
    while (got.size() < count && Clock::now() < deadline) {
      for (size_t k : poll_readable(socks, milliseconds(100))) {
        while (std::optional<Message> m = socks[k]->recv(milliseconds(0))) {
          got.emplace_back(static_cast<int>(k), std::move(*m));
        }
      }
    }
    return got;
  }
  // The per-group load view through a GetServerInfoReq that every leader answers.
  nlohmann::json server_info(const std::vector<int>& answering) {
    send(GetServerInfoReq{});
    for (int k : answering) {
      std::optional<Message> m = leader_recv(k);
      EXPECT_TRUE(m && std::holds_alternative<GetServerInfoReq>(*m)) << "group " << k;
      leader_send(k, GetServerInfoResp{
                         nlohmann::json{{"num_running_reqs", k + 1}, {"leader", k}}.dump(), k});
    }
    std::optional<Message> resp = tm_recv();
    EXPECT_TRUE(resp && std::holds_alternative<GetServerInfoResp>(*resp));
    if (!resp || !std::holds_alternative<GetServerInfoResp>(*resp)) return {};
    return nlohmann::json::parse(std::get<GetServerInfoResp>(*resp).info_json);
  }

  ChildProcess& child() { return *child_; }
  const nlohmann::json& ready() const { return ready_; }

 private:
  RuntimeDir dir_;
  MessageSocket to_ctrl_;
  MessageSocket from_ctrl_;
  std::mutex send_mu_;
  std::unique_ptr<ChildProcess> child_;
  nlohmann::json ready_;
  std::vector<MessageSocket> leader_in_;
  std::vector<MessageSocket> leader_out_;
  std::map<std::string, int32_t> notices_;
};

TokenizedGenerateReq gen(std::string rid, int32_t dp_rank = -1, int tokens = 4,
                         std::string params = R"({"max_new_tokens":8})") {
  TokenizedGenerateReq r;
  r.rid = std::move(rid);
  r.input_ids.assign(static_cast<size_t>(tokens), 7);
  r.sampling_params_json = std::move(params);
  r.data_parallel_rank = dp_rank;
  return r;
}

TEST(DpControllerProcess, ReportsReadyWithItsEndpoints) {
  ControllerHarness h(3, "shortest_queue");
  EXPECT_EQ(h.ready()["dp_size"], 3);
  EXPECT_EQ(h.ready()["load_balance_method"], "shortest_queue");
  EXPECT_EQ(h.ready()["leader_endpoints"].size(), 3u);
  EXPECT_THAT(h.ready()["leader_endpoints"][2].get<std::string>(),
              HasSubstr("scheduler_input_dp2"));
}

TEST(DpControllerProcess, BadArgumentsFailAtStartup) {
  RuntimeDir dir("dpc-test");
  ChildProcess child(ChildSpec{.role = kDpControllerRole,
                               .args = data_parallel_controller_args(dir.path(), 2, "fastest"),
                               .name = "dp controller",
                               .executable = DPSERVE_BINARY});
  try {
    child.wait_ready(milliseconds(30000));
    FAIL() << "started";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("--load-balance-method must be one of round_robin"));
  }
}

// 64 threads push 20 requests each through the TokenizerManager's socket; half name their group.
TEST(DpControllerProcess, ConcurrentRequestsAreDeliveredExactlyOnce) {
  constexpr int kGroups = 4, kThreads = 64, kPerThread = 20;
  ControllerHarness h(kGroups, "round_robin");
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&h, t] {
      for (int j = 0; j < kPerThread; ++j) {
        const int32_t rank = j % 2 == 0 ? (t + j) % kGroups : -1;
        h.send(gen(fmt::format("t{}-{}-{}", t, j, rank), rank, 1 + (t + j) % 9));
      }
    });
  }
  for (std::thread& th : threads) th.join();
  constexpr size_t kTotal = kThreads * kPerThread;
  const auto got = h.drain_leaders(kTotal, milliseconds(60000));
  ASSERT_EQ(got.size(), kTotal);
  std::set<std::string> seen;
  std::map<int, int> auto_routed;
  for (const auto& [group, msg] : got) {
    ASSERT_TRUE(std::holds_alternative<TokenizedGenerateReq>(msg)) << message_name(msg);
    const auto& r = std::get<TokenizedGenerateReq>(msg);
    EXPECT_TRUE(seen.insert(r.rid).second) << "delivered twice: " << r.rid;
    if (r.data_parallel_rank >= 0) {
      EXPECT_EQ(group, r.data_parallel_rank) << r.rid;
    } else {
      ++auto_routed[group];
    }
  }
  EXPECT_EQ(seen.size(), kTotal);
  // Round robin over fresh groups: the requests without a rank are spread exactly evenly.
  for (int k = 0; k < kGroups; ++k) EXPECT_EQ(auto_routed[k], kTotal / 2 / kGroups) << k;
  EXPECT_TRUE(h.drain_leaders(1, milliseconds(300)).empty());  // nothing more
  EXPECT_FALSE(h.tm_recv(milliseconds(100)).has_value());      // nothing rejected
}

TEST(DpControllerProcess, BadDpRankIsAnsweredWithAClearError) {
  ControllerHarness h(2, "round_robin");
  h.send(gen("bad-rank", 5, 6, R"({"max_new_tokens":8,"n":2})"));
  std::optional<Message> m = h.tm_recv();
  ASSERT_TRUE(m && std::holds_alternative<BatchTokenIdOut>(*m));
  const auto& outs = std::get<BatchTokenIdOut>(*m).outputs;
  ASSERT_EQ(outs.size(), 2u);  // one finished row per completion (n = 2)
  for (int64_t i = 0; i < 2; ++i) {
    const TokenIdOut& o = outs[static_cast<size_t>(i)];
    EXPECT_EQ(o.rid, "bad-rank");
    EXPECT_EQ(o.index, i);
    EXPECT_TRUE(o.finished);
    EXPECT_TRUE(o.new_token_ids.empty());
    EXPECT_EQ(o.prompt_tokens, 6);
    const nlohmann::json reason = nlohmann::json::parse(o.finish_reason_json);
    EXPECT_EQ(reason["type"], "abort");
    EXPECT_THAT(reason["message"].get<std::string>(),
                HasSubstr("data_parallel_rank 5 is out of range: this server has 2 DP groups"));
  }
  // Not delivered anywhere; the next good request still flows.
  h.send(gen("good", 1));
  const auto got = h.drain_leaders(1, milliseconds(10000));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].first, 1);
  EXPECT_EQ(std::get<TokenizedGenerateReq>(got[0].second).rid, "good");
}

TEST(DpControllerProcess, AbortsAndFlushesReachEveryGroup) {
  constexpr int kGroups = 3;
  ControllerHarness h(kGroups, "round_robin");
  h.send(AbortReq{"r-17", false});
  h.send(AbortReq{"", true});
  for (int k = 0; k < kGroups; ++k) {
    std::optional<Message> a = h.leader_recv(k);
    ASSERT_TRUE(a && std::holds_alternative<AbortReq>(*a)) << k;
    EXPECT_EQ(std::get<AbortReq>(*a).rid, "r-17");
    std::optional<Message> all = h.leader_recv(k);
    ASSERT_TRUE(all && std::holds_alternative<AbortReq>(*all)) << k;
    EXPECT_TRUE(std::get<AbortReq>(*all).abort_all);
  }

  // Every group flushes: one successful answer.
  h.send(FlushCacheReq{});
  for (int k = 0; k < kGroups; ++k) {
    std::optional<Message> f = h.leader_recv(k);
    ASSERT_TRUE(f && std::holds_alternative<FlushCacheReq>(*f)) << k;
    h.leader_send(k, FlushCacheResp{true, "", k});
  }
  std::optional<Message> resp = h.tm_recv();
  ASSERT_TRUE(resp && std::holds_alternative<FlushCacheResp>(*resp));
  EXPECT_TRUE(std::get<FlushCacheResp>(*resp).success);
  EXPECT_FALSE(h.tm_recv(milliseconds(200)).has_value());  // exactly one answer

  // Group 1 has running requests: the combined answer fails and names it.
  h.send(FlushCacheReq{});
  for (int k = kGroups - 1; k >= 0; --k) {  // answers in any order
    ASSERT_TRUE(h.leader_recv(k).has_value());
    h.leader_send(k, FlushCacheResp{k != 1, k != 1 ? "" : "3 requests are running", k});
  }
  resp = h.tm_recv();
  ASSERT_TRUE(resp && std::holds_alternative<FlushCacheResp>(*resp));
  EXPECT_FALSE(std::get<FlushCacheResp>(*resp).success);
  EXPECT_THAT(std::get<FlushCacheResp>(*resp).message,
              HasSubstr("DP group 1: 3 requests are running"));
  EXPECT_THAT(std::get<FlushCacheResp>(*resp).message, ::testing::Not(HasSubstr("group 0")));
}

TEST(DpControllerProcess, ServerInfoShowsEveryGroupsLoad) {
  ControllerHarness h(2, "minimum_tokens");
  LoadReport r0;
  r0.dp_rank = 0;
  r0.num_used_tokens = 500;
  r0.num_queued_tokens = 20;
  r0.max_total_tokens = 4096;
  r0.timestamp = 1.0;
  h.leader_send(0, r0);
  h.send(gen("a", -1, 30));  // may or may not see the report first; counted either way
  ASSERT_EQ(h.drain_leaders(1, milliseconds(10000)).size(), 1u);
  // The report arrives before the info request is answered (same socket, in order).
  const nlohmann::json info = h.server_info({0, 1});
  EXPECT_EQ(info["dp_size"], 2);
  EXPECT_EQ(info["load_balance_method"], "minimum_tokens");
  EXPECT_EQ(info["num_running_reqs"], 1 + 2);  // summed over the groups
  EXPECT_EQ(info["leader"], 0);                // group 0's own facts at the top level
  ASSERT_EQ(info["dp_groups"].size(), 2u);
  const nlohmann::json& g0 = info["dp_groups"][0];
  EXPECT_EQ(g0["info"]["leader"], 0);
  EXPECT_EQ(g0["load"]["num_reports"], 1);
  EXPECT_EQ(g0["load"]["num_used_tokens"], 500);
  EXPECT_EQ(g0["load"]["max_total_tokens"], 4096);
  EXPECT_EQ(g0["load"]["stale"], false);
  EXPECT_EQ(info["dp_groups"][1]["load"]["num_reports"], 0);
  EXPECT_EQ(info["dp_groups"][1]["info"]["leader"], 1);
  EXPECT_EQ(g0["load"]["total_dispatched"].get<int>() +
                info["dp_groups"][1]["load"]["total_dispatched"].get<int>(),
            1);
}

TEST(DpControllerProcess, ShortestQueueFollowsTheReports) {
  ControllerHarness h(2, "shortest_queue");
  // Group 0 is busy (5 requests), group 1 idle; the info round trip proves both reports arrived.
  h.leader_send(0, LoadReport{0, 4, 1, 100, 10, 1000, 1.0});
  h.leader_send(1, LoadReport{1, 0, 0, 0, 0, 1000, 1.0});
  const nlohmann::json info = h.server_info({0, 1});
  ASSERT_EQ(info["dp_groups"][0]["load"]["load_requests"], 5);
  ASSERT_EQ(info["dp_groups"][1]["load"]["load_requests"], 0);
  // A burst before the next report: 5 go to group 1, then the tie goes to group 0, then 1 ...
  for (int i = 0; i < 8; ++i) h.send(gen(fmt::format("q{}", i)));
  const auto got = h.drain_leaders(8, milliseconds(10000));
  ASSERT_EQ(got.size(), 8u);
  std::vector<int> groups(8, -1);  // by request index
  for (const auto& [g, m] : got) {
    const int idx = std::stoi(std::get<TokenizedGenerateReq>(m).rid.substr(1));
    groups.at(static_cast<size_t>(idx)) = g;
  }
  EXPECT_EQ(groups, (std::vector<int>{1, 1, 1, 1, 1, 0, 1, 0}));
}

TEST(DpControllerProcess, StaleGroupIsAvoidedUntilItReportsAgain) {
  ControllerHarness h(2, "round_robin", milliseconds(600));
  // Group 1 reports every 50 ms through the LoadReporter; group 0 stays silent.
  std::atomic<bool> stop{false};
  std::atomic<bool> report0{false};
  std::thread reporters([&] {
    MessageSocket s0(zmq::socket_type::push), s1(zmq::socket_type::push);
    s0.connect(h.ready()["load_endpoint"].get<std::string>());
    s1.connect(h.ready()["load_endpoint"].get<std::string>());
    LoadReporter l0(s0, 0, milliseconds(50)), l1(s1, 1, milliseconds(50));
    while (!stop.load()) {
      l1.report({.max_total_tokens = 1000});
      if (report0.load()) l0.report({.max_total_tokens = 1000});
      std::this_thread::sleep_for(milliseconds(10));
    }
  });
  std::this_thread::sleep_for(milliseconds(1200));  // group 0 is stale by now
  for (int i = 0; i < 6; ++i) h.send(gen(fmt::format("s{}", i)));
  h.send(gen("explicit-0", 0));  // an explicit rank still reaches the stale group
  auto got = h.drain_leaders(7, milliseconds(10000));
  ASSERT_EQ(got.size(), 7u);
  for (const auto& [g, m] : got) {
    const std::string& rid = std::get<TokenizedGenerateReq>(m).rid;
    EXPECT_EQ(g, rid == "explicit-0" ? 0 : 1) << rid;
  }
  // Group 0 reports again: round robin uses both groups.
  report0.store(true);
  std::this_thread::sleep_for(milliseconds(300));
  for (int i = 0; i < 6; ++i) h.send(gen(fmt::format("f{}", i)));
  got = h.drain_leaders(6, milliseconds(10000));
  stop.store(true);
  reporters.join();
  ASSERT_EQ(got.size(), 6u);
  int to0 = 0;
  for (const auto& [g, m] : got) to0 += g == 0 ? 1 : 0;
  EXPECT_EQ(to0, 3);
}

// A group the main process marks down gets nothing (explicit requests for it are rejected with
// the reason), every dispatch is told to the TokenizerManager, and the group is back once up.
TEST(DpControllerProcess, DownGroupIsSkippedAndDispatchesAreNotified) {
  ControllerHarness h(2, "round_robin");
  h.send(DpGroupState{1, false, "rank 1 died"});
  for (int i = 0; i < 4; ++i) h.send(gen(fmt::format("d{}", i)));
  h.send(gen("pinned-1", 1));
  auto got = h.drain_leaders(4, milliseconds(10000));
  ASSERT_EQ(got.size(), 4u);
  for (const auto& [g, m] : got) EXPECT_EQ(g, 0) << std::get<TokenizedGenerateReq>(m).rid;
  std::optional<Message> m = h.tm_recv();
  ASSERT_TRUE(m && std::holds_alternative<BatchTokenIdOut>(*m));
  const TokenIdOut& o = std::get<BatchTokenIdOut>(*m).outputs.at(0);
  EXPECT_EQ(o.rid, "pinned-1");
  EXPECT_THAT(o.finish_reason_json, HasSubstr("DP group 1 is restarting (rank 1 died)"));
  EXPECT_FALSE(h.tm_recv(milliseconds(300)).has_value());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(h.notices().at(fmt::format("d{}", i)), 0);
  EXPECT_EQ(h.notices().count("pinned-1"), 0u);  // rejected, not dispatched

  h.send(DpGroupState{1, true, ""});
  for (int i = 0; i < 4; ++i) h.send(gen(fmt::format("u{}", i)));
  got = h.drain_leaders(4, milliseconds(10000));
  ASSERT_EQ(got.size(), 4u);
  int to1 = 0;
  for (const auto& [g, msg] : got) to1 += g == 1 ? 1 : 0;
  EXPECT_EQ(to1, 2);
  EXPECT_FALSE(h.tm_recv(milliseconds(300)).has_value());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(h.notices().count(fmt::format("u{}", i)), 1u);
}

// The controller must die with its parent: a forked intermediate process spawns it, the test
// kills the intermediate and, as a subreaper, waits for the orphaned controller.
TEST(DpControllerProcess, ExitsWhenItsParentDies) {
  RuntimeDir dir("dpc-test");
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t mid = fork();
  ASSERT_GE(mid, 0);
  if (mid == 0) {
    close(fds[0]);
    try {
      ChildProcess c(ChildSpec{.role = kDpControllerRole,
                               .args = data_parallel_controller_args(dir.path(), 2, "round_robin"),
                               .name = "dp controller",
                               .executable = DPSERVE_BINARY});
      c.wait_ready(milliseconds(30000));
      const pid_t pid = c.pid();
      if (write(fds[1], &pid, sizeof(pid)) != sizeof(pid)) _exit(2);
      for (;;) pause();
    } catch (...) {
      _exit(1);
    }
  }
  close(fds[1]);
  pid_t controller = 0;
  ASSERT_EQ(read(fds[0], &controller, sizeof(controller)),
            static_cast<ssize_t>(sizeof(controller)));
  close(fds[0]);
  ASSERT_EQ(kill(controller, 0), 0);  // alive
  kill(mid, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(mid, &status, 0), mid);

  std::atomic<bool> done{false};
  std::thread watchdog([&] {
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (!done && Clock::now() < until) std::this_thread::sleep_for(milliseconds(10));
    if (!done) kill(controller, SIGTERM);
  });
  pid_t r;
  do {
    r = waitpid(controller, &status, 0);
  } while (r < 0 && errno == EINTR);
  done = true;
  watchdog.join();
  prctl(PR_SET_CHILD_SUBREAPER, 0);
  ASSERT_EQ(r, controller);
  // PDEATHSIG (SIGKILL), or the controller's own parent check (exit 0); not the watchdog.
  EXPECT_TRUE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) ||
              (WIFEXITED(status) && WEXITSTATUS(status) == 0))
      << status;
}

}  // namespace
}  // namespace dpserve
