// DP attention end to end: `dpserve serve --tp-size T --dp-size D --enable-dp-attention` runs one
// model instance of T ranks in D DP groups (each its own KV pool, radix cache and scheduler) behind
// the DataParallelController. Concurrent requests land on both groups, some steps one group
// prefills while the other decodes or idles, every answer is the reference, every group's pages
// come back after a flush, and an idle server sleeps.

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <zmq.hpp>

#include "cluster_util.h"
#include "netns_cluster.h"

namespace {

using namespace dpserve_test;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

// `n` concurrent greedy requests for the reference prompt, started a few ms apart (so some steps
// prefill in one group while the other decodes or idles).
std::vector<std::vector<int>> concurrent_greedy(ServerProcess& s, const std::string& prompt,
                                                int n) {
  std::vector<std::vector<int>> got(static_cast<size_t>(n));
  std::vector<std::thread> clients;
  for (int i = 0; i < n; ++i) {
    clients.emplace_back([&, i] {
      std::this_thread::sleep_for(milliseconds(15 * i));
      got[static_cast<size_t>(i)] = greedy_ids(s, prompt, 32);
    });
  }
  for (auto& t : clients) t.join();
  return got;
}

// The controller's per-group view from /get_server_info.
json dp_groups(ServerProcess& s) {
  httplib::Client c = s.client();
  auto r = c.Get("/get_server_info");
  if (!r || r->status != 200) return json::array();
  return json::parse(r->body)["internal_states"][0]["dp_groups"];
}

// utime + stime of `pid` in seconds (0 if gone).
double cpu_seconds(pid_t pid) {
  std::ifstream st("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!st || !std::getline(st, line)) return 0;
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::string field;
  long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {  // fields 3.. after "pid (comm)"
    if (i == 14) utime = std::stoll(field);
    if (i == 15) stime = std::stoll(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

class DpAttentionServe : public ::testing::TestWithParam<int> {};

// 16 concurrent clients on 2 DP groups of tp/2 attention ranks: every answer is the reference,
// both groups served (round robin: 8 each), after a flush every group's pages are free, and the
// idle server uses little CPU although every rank syncs with the others each idle iteration.
TEST_P(DpAttentionServe, GroupsServeTheReferenceAndShareTheLoad) {
  const int tp = GetParam();
  ServerProcess server({"--tp-size", std::to_string(tp), "--dp-size", "2", "--enable-dp-attention",
                        "--max-total-tokens", "4096", "--load-balance-method", "round_robin"});
  ASSERT_TRUE(server.wait_healthy(seconds(90))) << server.log();
  const json ref = reference_outputs();
  const auto want = ref["greedy"]["ids"].get<std::vector<int>>();
  const auto got = concurrent_greedy(server, ref["prompt_text"], 16);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want) << "client " << i;

  const json groups = dp_groups(server);
  ASSERT_EQ(groups.size(), 2u) << groups.dump();
  EXPECT_EQ(groups[0]["load"]["total_dispatched"].get<int64_t>(), 8) << groups.dump();
  EXPECT_EQ(groups[1]["load"]["total_dispatched"].get<int64_t>(), 8) << groups.dump();
  // Both groups computed: each prefilled and decoded its own requests.
  for (const json& g : groups) {
    EXPECT_GT(g["info"]["stats"]["num_decode_batches"].get<int64_t>(), 0) << g.dump();
  }

  // A request pinned to group 0 alone: group 1 joins its every forward with an idle one.
  const int64_t idle_before = groups[1]["info"]["stats"]["num_idle_batches"].get<int64_t>();
  {
    httplib::Client pc = server.client();
    const json body = {{"text", ref["prompt_text"]},
                       {"sampling_params", {{"max_new_tokens", 32}, {"temperature", 0}}},
                       {"data_parallel_rank", 0}};
    auto r = pc.Post("/generate", body.dump(), "application/json");
    ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "no answer");
    EXPECT_EQ(json::parse(r->body)["output_ids"].get<std::vector<int>>(), want);
  }
  const json after_pinned = dp_groups(server);
  EXPECT_GE(after_pinned[1]["info"]["stats"]["num_idle_batches"].get<int64_t>() - idle_before, 32)
      << after_pinned.dump();

  httplib::Client c = server.client();
  auto flushed = c.Post("/flush_cache", "", "application/json");
  ASSERT_TRUE(flushed && flushed->status == 200) << (flushed ? flushed->body : "no answer");
  for (const json& g : dp_groups(server)) {
    EXPECT_TRUE(g["info"]["all_pages_free"].get<bool>()) << g.dump();
    EXPECT_EQ(g["info"]["memory_check"].get<std::string>(), "") << g.dump();
  }

  // tp ranks + the controller.
  const std::vector<pid_t> kids = children_of(server.pid());
  EXPECT_EQ(kids.size(), static_cast<size_t>(tp + 1));
  std::this_thread::sleep_for(milliseconds(500));
  double before = 0;
  for (pid_t p : kids) before += cpu_seconds(p);
  std::this_thread::sleep_for(seconds(2));
  double after = 0;
  for (pid_t p : kids) after += cpu_seconds(p);
  EXPECT_LT(after - before, 0.5) << "CPU seconds used by the idle ranks and controller in 2 s";
  std::printf("idle CPU over 2 s: %.2f s\n", after - before);

  // Still serving after the idle period.
  EXPECT_EQ(greedy_ids(server, ref["prompt_text"], 32), want);
}

INSTANTIATE_TEST_SUITE_P(Dp2, DpAttentionServe, ::testing::Values(2, 4),
                         [](const auto& info) { return "Tp" + std::to_string(info.param); });

// The upcycled MoE checkpoint under DP attention (experts over all tp ranks, attention per group)
// reproduces stories260K's greedy text in both groups.
TEST(DpAttentionServeMoe, MixtralUpcycledGreedyEqualsStories) {
  const std::string model = DPSERVE_SHARED_DIR "/models/stories260K-mixtral-4x";
  ServerProcess server({"--tp-size", "2", "--dp-size", "2", "--enable-dp-attention",
                        "--max-total-tokens", "4096", "--load-balance-method", "round_robin"},
                       model);
  ASSERT_TRUE(server.wait_healthy(seconds(90))) << server.log();
  const json ref = reference_outputs();
  const auto want = ref["greedy"]["ids"].get<std::vector<int>>();
  const auto got = concurrent_greedy(server, ref["prompt_text"], 4);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want) << "client " << i;
  const json groups = dp_groups(server);
  ASSERT_EQ(groups.size(), 2u) << groups.dump();
  EXPECT_EQ(groups[1]["load"]["total_dispatched"].get<int64_t>(), 2) << groups.dump();
}

// Steps where one group prefills while the other decodes: a long request pinned to group 1
// decodes while prompts pinned to group 0 prefill. Group 1 counts decode forwards beside a
// prefill, and both groups' tokens are still the reference (the long request's first 32 too).
TEST(DpAttentionServeMixed, OneGroupPrefillsWhileTheOtherDecodes) {
  ServerProcess server(
      {"--tp-size", "2", "--dp-size", "2", "--enable-dp-attention", "--max-total-tokens", "4096"});
  ASSERT_TRUE(server.wait_healthy(seconds(90))) << server.log();
  const json ref = reference_outputs();
  const auto want = ref["greedy"]["ids"].get<std::vector<int>>();
  std::vector<int> long_ids;
  std::thread long_client([&] {
    long_ids = greedy_ids(server, ref["prompt_text"], 400,
                          {{"sampling_params", {{"ignore_eos", true}}}, {"data_parallel_rank", 1}});
  });
  // Wait until group 1 decodes, then prefill in group 0 a few times while it does.
  const auto deadline = std::chrono::steady_clock::now() + seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    const json groups = dp_groups(server);
    if (groups.size() == 2 && groups[1]["info"]["stats"]["num_decode_batches"].get<int64_t>() > 0) {
      break;
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(greedy_ids(server, ref["prompt_text"], 32, {{"data_parallel_rank", 0}}), want);
  }
  const json groups = dp_groups(server);
  long_client.join();
  ASSERT_EQ(long_ids.size(), 400u);
  EXPECT_EQ(std::vector<int>(long_ids.begin(), long_ids.begin() + 32), want);
  ASSERT_EQ(groups.size(), 2u);
  const json& stats1 = groups[1]["info"]["stats"];
  EXPECT_GT(stats1["num_decode_batches_beside_prefill"].get<int64_t>(), 0) << groups.dump();
  // Group 1 was still decoding when the snapshot was taken: the long request had not finished.
  EXPECT_LT(stats1["num_decode_batches"].get<int64_t>(), 400) << groups.dump();
  EXPECT_GE(groups[0]["info"]["stats"]["num_prefill_batches"].get<int64_t>(), 3) << groups.dump();
}

// Node 0 (coordinator, controller, main process) and node 1 on loopback, DP groups spread over
// them: the leaders on node 1 reach node 0's sockets over tcp (published through the
// coordinator). Both groups serve the reference, pages come back, SIGTERM stops both nodes.
class DpTwoNodes : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(DpTwoNodes, GroupsOnBothNodesServeTheReference) {
  std::vector<std::string> flags = {
      "--max-total-tokens", "4096", "--dp-size", "2", "--cluster-secret", "dp-two-nodes-test"};
  flags.insert(flags.end(), GetParam().begin(), GetParam().end());
  LoopbackNodes nodes(flags);
  ASSERT_TRUE(nodes.wait_healthy(seconds(90)));
  ServerProcess& node0 = nodes.node0;
  ServerProcess& node1 = nodes.node1;
  const json ref = reference_outputs();
  const auto want = ref["greedy"]["ids"].get<std::vector<int>>();
  const auto got = concurrent_greedy(node0, ref["prompt_text"], 8);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want) << "client " << i;
  const json groups = dp_groups(node0);
  ASSERT_EQ(groups.size(), 2u) << groups.dump();
  for (const json& g : groups) {
    EXPECT_EQ(g["load"]["total_dispatched"].get<int64_t>(), 4) << g.dump();
    EXPECT_GT(g["load"]["num_reports"].get<int64_t>(), 0) << g.dump();
  }
  // The leader sockets node 1 was given: tcp on node 0, CURVE-secured with the cluster secret.
  std::smatch m;
  const std::string log1 = node1.log();
  ASSERT_TRUE(std::regex_search(
      log1, m, std::regex(R"(leader sockets: input (tcp://\S+), output (tcp://\S+), control)")))
      << log1;
  {
    // A stranger without the secret: a PULL on group 1's input (it would steal requests) and a
    // PUSH of bytes into the main process's output socket. Both are refused and logged; every
    // request still reaches its group and gets the reference.
    zmq::context_t ctx;
    zmq::socket_t thief(ctx, zmq::socket_type::pull);
    thief.connect(m[1].str());
    zmq::socket_t injector(ctx, zmq::socket_type::push);
    injector.connect(m[2].str());
    (void)injector.send(zmq::str_buffer("not a message"), zmq::send_flags::dontwait);
    std::this_thread::sleep_for(milliseconds(300));
    for (const auto& ids : concurrent_greedy(node0, ref["prompt_text"], 4)) EXPECT_EQ(ids, want);
    zmq::message_t stolen;
    EXPECT_FALSE(thief.recv(stolen, zmq::recv_flags::dontwait)) << "a stranger got a request";
    thief.set(zmq::sockopt::linger, 0);
    injector.set(zmq::sockopt::linger, 0);
  }
  EXPECT_NE(node0.log().find("dp controller: refused a peer"), std::string::npos) << node0.log();
  EXPECT_NE(node0.log().find("scheduler output: refused a peer"), std::string::npos) << node0.log();
  // The secret reached the ranks through their environment, not their command line.
  for (pid_t p : children_of(node1.pid())) {
    EXPECT_EQ(read_file("/proc/" + std::to_string(p) + "/cmdline").find("dp-two-nodes-test"),
              std::string::npos);
  }

  httplib::Client c = node0.client();
  auto flushed = c.Post("/flush_cache", "", "application/json");
  ASSERT_TRUE(flushed && flushed->status == 200) << (flushed ? flushed->body : "no answer");
  for (const json& g : dp_groups(node0)) EXPECT_TRUE(g["info"]["all_pages_free"].get<bool>());

  expect_sigterm_stops_both(node0, node1, seconds(15));
}

INSTANTIATE_TEST_SUITE_P(
    Loopback, DpTwoNodes,
    ::testing::Values(std::vector<std::string>{"--tp-size", "2", "--enable-dp-attention"},
                      std::vector<std::string>{"--tp-size", "1"}),
    [](const auto& info) { return info.index == 0 ? "DpAttention" : "PlainReplicas"; });

// The seeds' usage example on two hosts: network namespaces joined by a veth pair, TP 2 in 2 DP
// groups, one group (and its leader) on each host; completions from both groups are the
// reference.
TEST(DpAttentionMultiNode, TwoNetworkNamespaces) {
  if (!namespaces_available()) {
    GTEST_SKIP() << "network namespaces cannot be created here (needs root / CAP_NET_ADMIN)";
  }
  serve_across_two_namespaces({"--tp-size", "2", "--dp-size", "2", "--enable-dp-attention"},
                              "[dp 1] leader sockets: input tcp://10.");
}

}  // namespace
