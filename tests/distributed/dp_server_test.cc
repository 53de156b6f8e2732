// Plain data parallelism end to end: `dpserve serve --dp-size N` runs the DataParallelController
// and N replicas (of --tp-size ranks each); requests are spread over them, a request may name its
// group, every reply is right and every group's pages come back.

#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "../http/server_process.h"

namespace {

using namespace dpserve_test;
using json = nlohmann::json;
using std::chrono::seconds;
using ::testing::HasSubstr;

// /generate greedy for the reference prompt, optionally pinned to a DP group.
httplib::Result generate(ServerProcess& s, const std::string& prompt, int n, int dp_rank = -1) {
  json body = {{"text", prompt}, {"sampling_params", {{"max_new_tokens", n}, {"temperature", 0}}}};
  if (dp_rank >= 0) body["data_parallel_rank"] = dp_rank;
  httplib::Client c = s.client();
  return c.Post("/generate", body.dump(), "application/json");
}

// The controller's per-group view from /get_server_info.
json dp_groups(ServerProcess& s) {
  httplib::Client c = s.client();
  auto r = c.Get("/get_server_info");
  if (!r || r->status != 200) return json::array();
  return json::parse(r->body)["internal_states"][0]["dp_groups"];
}

class DpServe : public ::testing::TestWithParam<int> {};

// 16 concurrent clients on 2 replicas (of 1 or 2 TP ranks): every answer is the reference, both
// replicas served (round robin: 8 each), and after a flush every group's pages are free.
TEST_P(DpServe, ReplicasServeTheReferenceAndShareTheLoad) {
  const int tp = GetParam();
  ServerProcess server({"--dp-size", "2", "--tp-size", std::to_string(tp), "--max-total-tokens",
                        "4096", "--load-balance-method", "round_robin"});
  ASSERT_TRUE(server.wait_healthy(seconds(60))) << server.log();
  const json ref = reference_outputs();
  const auto want = ref["greedy"]["ids"].get<std::vector<int>>();
  std::vector<std::vector<int>> got(16);
  std::vector<std::thread> clients;
  for (int i = 0; i < 16; ++i) {
    clients.emplace_back([&, i] {
      auto r = generate(server, ref["prompt_text"], 32);
      if (r && r->status == 200)
        got[i] = json::parse(r->body)["output_ids"].get<std::vector<int>>();
    });
  }
  for (auto& t : clients) t.join();
  for (int i = 0; i < 16; ++i) EXPECT_EQ(got[i], want) << "client " << i;

  const json groups = dp_groups(server);
  ASSERT_EQ(groups.size(), 2u) << groups.dump();
  EXPECT_EQ(groups[0]["load"]["total_dispatched"].get<int64_t>(), 8) << groups.dump();
  EXPECT_EQ(groups[1]["load"]["total_dispatched"].get<int64_t>(), 8) << groups.dump();

  httplib::Client c = server.client();
  auto flushed = c.Post("/flush_cache", "", "application/json");
  ASSERT_TRUE(flushed && flushed->status == 200) << (flushed ? flushed->body : "no answer");
  for (const json& g : dp_groups(server)) {
    EXPECT_TRUE(g["info"]["all_pages_free"].get<bool>()) << g.dump();
  }
}

INSTANTIATE_TEST_SUITE_P(Dp2, DpServe, ::testing::Values(1, 2),
                         [](const auto& info) { return "Tp" + std::to_string(info.param); });

// data_parallel_rank pins a request to a group; an out-of-range rank is a 400 naming the field.
TEST(DpServeRouting, ExplicitRankIsHonouredAndCheckedAtTheDoor) {
  ServerProcess server({"--dp-size", "2", "--max-total-tokens", "4096"});
  ASSERT_TRUE(server.wait_healthy(seconds(60))) << server.log();
  const json ref = reference_outputs();
  for (int i = 0; i < 5; ++i) {
    auto r = generate(server, ref["prompt_text"], 8, 1);
    ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "no answer");
  }
  const json groups = dp_groups(server);
  ASSERT_EQ(groups.size(), 2u) << groups.dump();
  EXPECT_EQ(groups[0]["load"]["total_dispatched"].get<int64_t>(), 0) << groups.dump();
  EXPECT_EQ(groups[1]["load"]["total_dispatched"].get<int64_t>(), 5) << groups.dump();

  auto bad = generate(server, ref["prompt_text"], 8, 2);
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  EXPECT_THAT(bad->body, HasSubstr("data_parallel_rank"));
  EXPECT_THAT(bad->body, HasSubstr("--dp-size"));
  EXPECT_TRUE(generate(server, ref["prompt_text"], 4)->status == 200);
}

// With --max-restarts 0 (fail-stop) a dead replica ends the server with an error naming it
// (recovery: DpFaults.KilledReplicaRecoversWhileTheOtherServes in recovery_server_test.cc).
TEST(DpServeFaults, DeadReplicaIsNamed) {
  ServerProcess server({"--dp-size", "2", "--max-total-tokens", "4096", "--max-restarts", "0"});
  ASSERT_TRUE(server.wait_healthy(seconds(60))) << server.log();
  const auto r = run_command("pgrep -P " + std::to_string(server.pid()) + " -f 'scheduler'");
  std::istringstream in(r.out);
  std::vector<pid_t> pids;
  for (pid_t p; in >> p;) pids.push_back(p);
  ASSERT_GE(pids.size(), 2u) << r.out;
  ASSERT_EQ(::kill(pids.back(), SIGKILL), 0);
  const auto code = server.wait_exit(seconds(20));
  ASSERT_TRUE(code.has_value()) << server.log();
  EXPECT_EQ(*code, 1);
  EXPECT_THAT(server.log(), HasSubstr("DP group"));
}

}  // namespace
