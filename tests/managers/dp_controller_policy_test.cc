// The DataParallelController's dispatch policy without sockets: where each of a sequence of
// requests goes for round_robin, shortest_queue and minimum_tokens under known load reports,
// the spreading of a burst between two reports, stale groups, explicit DP ranks; and the
// LoadReporter's rate limit over a real socket pair.

#include <chrono>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dpserve/common/errors.h"
#include "dpserve/managers/data_parallel_controller.h"
#include "dpserve/managers/load_reporter.h"

namespace dpserve {
namespace {

using std::chrono::milliseconds;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

const SteadyTime kT0 = std::chrono::steady_clock::time_point(std::chrono::seconds(1000));

TokenizedGenerateReq req(int tokens, int32_t dp_rank = -1) {
  TokenizedGenerateReq r;
  r.rid = "r";
  r.input_ids.assign(static_cast<size_t>(tokens), 1);
  r.data_parallel_rank = dp_rank;
  return r;
}

LoadReport report(int32_t rank, int64_t running, int64_t waiting, int64_t used = 0,
                  int64_t queued = 0) {
  LoadReport r;
  r.dp_rank = rank;
  r.num_running_reqs = running;
  r.num_waiting_reqs = waiting;
  r.num_used_tokens = used;
  r.num_queued_tokens = queued;
  r.max_total_tokens = 1000;
  return r;
}

// The groups chosen for `n` requests of `tokens` prompt tokens each, all at time `now`.
std::vector<int32_t> route(DpDispatchPolicy& p, int n, int tokens = 10, SteadyTime now = kT0) {
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    const DispatchDecision d = p.dispatch(req(tokens), now);
    EXPECT_TRUE(d.error.empty()) << d.error;
    EXPECT_FALSE(d.explicit_rank);
    out.push_back(d.dp_rank);
  }
  return out;
}

TEST(DpDispatchPolicy, MethodNamesParse) {
  EXPECT_EQ(parse_load_balance_method("round_robin"), LoadBalanceMethod::kRoundRobin);
  EXPECT_EQ(parse_load_balance_method("shortest_queue"), LoadBalanceMethod::kShortestQueue);
  EXPECT_EQ(parse_load_balance_method("minimum_tokens"), LoadBalanceMethod::kMinimumTokens);
  EXPECT_EQ(load_balance_method_name(LoadBalanceMethod::kMinimumTokens), "minimum_tokens");
  try {
    parse_load_balance_method("random");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("round_robin, shortest_queue, minimum_tokens; got 'random'"));
  }
}

TEST(DpDispatchPolicy, RoundRobinCyclesAndIgnoresLoad) {
  DpDispatchPolicy p(3, LoadBalanceMethod::kRoundRobin, milliseconds(1000), kT0);
  p.on_report(report(0, 100, 100), kT0);  // load does not matter to round robin
  EXPECT_THAT(route(p, 7), ElementsAre(0, 1, 2, 0, 1, 2, 0));
  // An explicit rank is honoured and does not move the rotation.
  const DispatchDecision d = p.dispatch(req(5, 0), kT0);
  EXPECT_EQ(d.dp_rank, 0);
  EXPECT_TRUE(d.explicit_rank);
  EXPECT_THAT(route(p, 2), ElementsAre(1, 2));
  EXPECT_EQ(p.group(0).total_dispatched, 4);
  EXPECT_EQ(p.group(1).total_dispatched, 3);
}

TEST(DpDispatchPolicy, ShortestQueueUsesReportsPlusDispatchedSince) {
  DpDispatchPolicy p(3, LoadBalanceMethod::kShortestQueue, milliseconds(1000), kT0);
  // Before any report every group counts only what was dispatched to it: a burst is spread.
  EXPECT_THAT(route(p, 6), ElementsAre(0, 1, 2, 0, 1, 2));
  // Reports replace what was dispatched before them: 4, 2 and 2 requests.
  p.on_report(report(0, 3, 1), kT0);
  p.on_report(report(1, 2, 0), kT0);
  p.on_report(report(2, 1, 1), kT0);
  EXPECT_EQ(p.group(1).dispatched_reqs, 0);
  EXPECT_EQ(p.group(1).requests(), 2);
  // 1 and 2 tie at 2 (lowest rank first), then 3 / 3, then everyone at 4.
  EXPECT_THAT(route(p, 7), ElementsAre(1, 2, 1, 2, 0, 1, 2));
  EXPECT_EQ(p.group(0).requests(), 5);
  EXPECT_EQ(p.group(1).requests(), 5);
  EXPECT_EQ(p.group(2).requests(), 5);
  // A burst right after a report on a heavily loaded group 0 fills the others first.
  p.on_report(report(0, 10, 0), kT0);
  p.on_report(report(1, 0, 0), kT0);
  p.on_report(report(2, 7, 0), kT0);
  EXPECT_THAT(route(p, 10), ElementsAre(1, 1, 1, 1, 1, 1, 1, 1, 2, 1));
}

TEST(DpDispatchPolicy, MinimumTokensUsesTokensInUseAndQueued) {
  DpDispatchPolicy p(2, LoadBalanceMethod::kMinimumTokens, milliseconds(1000), kT0);
  p.on_report(report(0, 1, 0, /*used=*/80, /*queued=*/20), kT0);  // 100 tokens
  p.on_report(report(1, 5, 5, /*used=*/0, /*queued=*/0), kT0);    // many requests, no tokens
  // 30-token requests: group 1 goes 0 -> 30 -> 60 -> 90 -> 120; at 120 vs 100 group 0 takes one.
  EXPECT_THAT(route(p, 5, 30), ElementsAre(1, 1, 1, 1, 0));
  EXPECT_EQ(p.group(0).tokens(), 130);
  EXPECT_EQ(p.group(1).tokens(), 120);
  EXPECT_EQ(p.group(1).dispatched_tokens, 120);
  // Ties (equal tokens) go to the lowest rank.
  p.on_report(report(0, 0, 0, 50, 0), kT0);
  p.on_report(report(1, 0, 0, 50, 0), kT0);
  EXPECT_THAT(route(p, 4, 10), ElementsAre(0, 1, 0, 1));
}

TEST(DpDispatchPolicy, StaleGroupsAreSkippedWhileOthersAreFresh) {
  for (LoadBalanceMethod m : {LoadBalanceMethod::kRoundRobin, LoadBalanceMethod::kShortestQueue,
                              LoadBalanceMethod::kMinimumTokens}) {
    SCOPED_TRACE(std::string(load_balance_method_name(m)));
    DpDispatchPolicy p(3, m, milliseconds(1000), kT0);
    // Group 1 keeps reporting a heavy load; 0 and 2 go silent after the start.
    p.on_report(report(1, 50, 50, 5000, 5000), kT0 + milliseconds(900));
    const SteadyTime t = kT0 + milliseconds(1500);
    EXPECT_TRUE(p.is_stale(0, t));
    EXPECT_FALSE(p.is_stale(1, t));
    EXPECT_THAT(p.update_staleness(t), ElementsAre(0, 2));
    EXPECT_TRUE(p.group(0).stale);
    EXPECT_THAT(p.update_staleness(t), ElementsAre());  // no change, nothing to log
    EXPECT_THAT(route(p, 4, 10, t), ElementsAre(1, 1, 1, 1));
    // An explicit rank still reaches a stale group.
    EXPECT_EQ(p.dispatch(req(10, 2), t).dp_rank, 2);
    // Group 0 reports again and is back (it is the least loaded).
    p.on_report(report(0, 0, 0), t);
    EXPECT_THAT(p.update_staleness(t), ElementsAre(0));
    EXPECT_EQ(p.dispatch(req(10), t).dp_rank, 0);
    // When every group is stale, dispatch still goes somewhere (the method over all groups).
    const SteadyTime later = t + milliseconds(5000);
    EXPECT_THAT(p.update_staleness(later), ElementsAre(0, 1));
    const DispatchDecision d = p.dispatch(req(10), later);
    EXPECT_GE(d.dp_rank, 0);
    EXPECT_TRUE(d.error.empty());
  }
}

TEST(DpDispatchPolicy, RoundRobinResumesAfterAStaleGroupReturns) {
  DpDispatchPolicy p(3, LoadBalanceMethod::kRoundRobin, milliseconds(100), kT0);
  const SteadyTime t = kT0 + milliseconds(200);
  p.on_report(report(0, 0, 0), t);
  p.on_report(report(2, 0, 0), t);
  EXPECT_THAT(route(p, 4, 1, t), ElementsAre(0, 2, 0, 2));
  p.on_report(report(1, 0, 0), t);
  EXPECT_THAT(route(p, 3, 1, t), ElementsAre(0, 1, 2));
}

TEST(DpDispatchPolicy, DownGroupsAreNeverChosenUntilUpAgain) {
  for (LoadBalanceMethod m : {LoadBalanceMethod::kRoundRobin, LoadBalanceMethod::kShortestQueue,
                              LoadBalanceMethod::kMinimumTokens}) {
    SCOPED_TRACE(std::string(load_balance_method_name(m)));
    DpDispatchPolicy p(3, m, milliseconds(1000), kT0);
    p.on_report(report(1, 50, 50, 5000, 5000), kT0);  // busy, but up
    p.set_down(0, "rank 0 died");
    EXPECT_TRUE(p.is_down(0));
    EXPECT_THAT(route(p, 4), ::testing::Each(::testing::Ne(0)));
    const DispatchDecision pinned = p.dispatch(req(10, 0), kT0);
    EXPECT_EQ(pinned.dp_rank, -1);
    EXPECT_THAT(pinned.error, HasSubstr("DP group 0 is restarting (rank 0 died)"));
    // A down group is not stale (nothing to log while it restarts), and says why it is down.
    EXPECT_THAT(p.update_staleness(kT0 + milliseconds(5000)), ElementsAre(1, 2));
    const nlohmann::json j = p.group_json(0, kT0);
    EXPECT_EQ(j["down"], true);
    EXPECT_EQ(j["stale"], false);
    EXPECT_EQ(j["down_reason"], "rank 0 died");
    // Every group down: rejected with a clear error.
    p.set_down(1, "x");
    p.set_down(2, "y");
    const DispatchDecision none = p.dispatch(req(10), kT0);
    EXPECT_EQ(none.dp_rank, -1);
    EXPECT_THAT(none.error, HasSubstr("every group is restarting"));
    // Back up with a fresh, empty load view: the least loaded group again.
    p.set_up(1, kT0 + milliseconds(6000));
    EXPECT_FALSE(p.group(1).last_report.has_value());
    EXPECT_EQ(p.group(1).dispatched_reqs, 0);
    EXPECT_EQ(p.dispatch(req(10), kT0 + milliseconds(6000)).dp_rank, 1);
  }
}

TEST(DpDispatchPolicy, ExplicitRanksOutOfRangeAreRejected) {
  DpDispatchPolicy p(2, LoadBalanceMethod::kShortestQueue, milliseconds(1000), kT0);
  for (int32_t bad : {2, 7, -2}) {
    const DispatchDecision d = p.dispatch(req(10, bad), kT0);
    EXPECT_EQ(d.dp_rank, -1);
    EXPECT_THAT(d.error, HasSubstr(fmt::format("data_parallel_rank {} is out of range", bad)));
    EXPECT_THAT(d.error, HasSubstr("this server has 2 DP groups (valid: 0 to 1"));
  }
  EXPECT_EQ(p.group(0).total_dispatched + p.group(1).total_dispatched, 0);  // nothing counted
  const DispatchDecision ok = p.dispatch(req(10, 1), kT0);
  EXPECT_EQ(ok.dp_rank, 1);
  EXPECT_TRUE(ok.explicit_rank);
  EXPECT_EQ(p.group(1).dispatched_reqs, 1);  // counted in the load view like any other
  EXPECT_FALSE(p.on_report(report(2, 0, 0), kT0));
  EXPECT_FALSE(p.on_report(report(-1, 0, 0), kT0));
}

TEST(DpDispatchPolicy, GroupJsonShowsTheLoadView) {
  DpDispatchPolicy p(2, LoadBalanceMethod::kMinimumTokens, milliseconds(1000), kT0);
  nlohmann::json j = p.group_json(0, kT0);
  EXPECT_EQ(j["num_reports"], 0);
  EXPECT_TRUE(j["seconds_since_report"].is_null());
  LoadReport r = report(0, 2, 3, 40, 50);
  r.timestamp = 12.5;
  p.on_report(r, kT0);
  p.dispatch(req(7, 0), kT0);  // group 1 (no tokens) would win on its own
  j = p.group_json(0, kT0 + milliseconds(250));
  EXPECT_EQ(j["dp_rank"], 0);
  EXPECT_EQ(j["num_running_reqs"], 2);
  EXPECT_EQ(j["num_waiting_reqs"], 3);
  EXPECT_EQ(j["num_used_tokens"], 40);
  EXPECT_EQ(j["num_queued_tokens"], 50);
  EXPECT_EQ(j["max_total_tokens"], 1000);
  EXPECT_EQ(j["report_timestamp"], 12.5);
  EXPECT_EQ(j["dispatched_since_report"], 1);
  EXPECT_EQ(j["dispatched_tokens_since_report"], 7);
  EXPECT_EQ(j["load_requests"], 6);
  EXPECT_EQ(j["load_tokens"], 97);
  EXPECT_DOUBLE_EQ(j["seconds_since_report"].get<double>(), 0.25);
  EXPECT_EQ(j["stale"], false);
  EXPECT_EQ(p.group_json(1, kT0 + milliseconds(1500))["stale"], true);
}

TEST(LoadReporter, SendsAtMostOncePerInterval) {
  RuntimeDir dir("dpc-reporter");
  MessageSocket pull(zmq::socket_type::pull);
  pull.bind(dir.endpoint("load"));
  MessageSocket push(zmq::socket_type::push);
  push.connect(dir.endpoint("load"));
  LoadReporter reporter(push, 3, milliseconds(200));
  EXPECT_TRUE(reporter.due());
  SchedulerLoad load{.num_running_reqs = 4,
                     .num_waiting_reqs = 5,
                     .num_used_tokens = 600,
                     .num_queued_tokens = 70,
                     .max_total_tokens = 8000};
  const double before =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_TRUE(reporter.report(load));
  EXPECT_FALSE(reporter.due());
  EXPECT_FALSE(reporter.report(load));  // within the interval: not sent
  load.num_running_reqs = 9;
  EXPECT_TRUE(reporter.report(load, /*force=*/true));
  std::this_thread::sleep_for(milliseconds(250));
  EXPECT_TRUE(reporter.due());
  EXPECT_EQ(reporter.num_sent(), 2);

  std::optional<Message> m = pull.recv(milliseconds(5000));
  ASSERT_TRUE(m && std::holds_alternative<LoadReport>(*m));
  const LoadReport& r = std::get<LoadReport>(*m);
  EXPECT_EQ(r.dp_rank, 3);
  EXPECT_EQ(r.num_running_reqs, 4);
  EXPECT_EQ(r.num_waiting_reqs, 5);
  EXPECT_EQ(r.num_used_tokens, 600);
  EXPECT_EQ(r.num_queued_tokens, 70);
  EXPECT_EQ(r.max_total_tokens, 8000);
  EXPECT_GE(r.timestamp, before);
  EXPECT_LT(r.timestamp, before + 60);
  m = pull.recv(milliseconds(5000));
  ASSERT_TRUE(m && std::holds_alternative<LoadReport>(*m));
  EXPECT_EQ(std::get<LoadReport>(*m).num_running_reqs, 9);
  EXPECT_FALSE(pull.recv(milliseconds(100)).has_value());  // the third call sent nothing
}

TEST(LoadReporter, NeverBlocksWithoutAController) {
  RuntimeDir dir("dpc-reporter");
  MessageSocket push(zmq::socket_type::push);
  push.connect(dir.endpoint("nobody"));  // nothing is bound there (a controller not up yet)
  LoadReporter reporter(push, 0, milliseconds(1));
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) reporter.report({}, /*force=*/true);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, milliseconds(500));
  EXPECT_EQ(reporter.num_sent() + reporter.num_dropped(), 100);
}

}  // namespace
}  // namespace dpserve
