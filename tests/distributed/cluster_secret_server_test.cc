// The cluster secret end to end: real `dpserve serve` processes. A stranger on the network (a
// plain ZeroMQ client speaking the coordinator's protocol, a CoordinatorClient with a wrong
// secret, raw TCP bytes) cannot join a running TP=2 server's coordinator or inject requests; it
// is refused and logged and the server keeps serving. Two nodes with different secrets: node 1
// fails within --dist-timeout naming --cluster-secret, node 0 does not crash. Several nodes need
// a secret; one node generates its own and hands it to its ranks through the environment.

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "cluster_util.h"
#include "dpserve/common/errors.h"
#include "dpserve/distributed/coordinator_client.h"
#include "dpserve/distributed/coordinator_protocol.h"
#include "dpserve/ipc/zmq_socket.h"

namespace {

using namespace dpserve_test;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

// The coordinator's endpoint from a node 0 log ("coordinator listening on tcp://...:port").
std::string coordinator_endpoint(const std::string& log) {
  std::smatch m;
  static const std::regex re("coordinator listening on (tcp://[0-9.]+:[0-9]+)");
  return std::regex_search(log, m, re) ? m[1].str() : std::string();
}

// The NUL-separated contents of /proc/<pid>/<what> as one string with spaces.
std::string proc_text(pid_t pid, const std::string& what) {
  std::string s = read_file("/proc/" + std::to_string(pid) + "/" + what);
  for (char& c : s) {
    if (c == '\0') c = ' ';
  }
  return s;
}

// Waits until `log()` contains `needle`; false after `timeout`.
bool log_has(const ServerProcess& s, const std::string& needle, milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (s.log().find(needle) == std::string::npos) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return true;
}

// A TP=2 server on one node generated its secret; strangers cannot join or inject anything.
TEST(ClusterSecretServer, StrangersAreRefusedAndTheServerKeepsServing) {
  ServerProcess server({"--tp-size", "2", "--max-total-tokens", "4096"});
  ASSERT_TRUE(server.wait_healthy(seconds(60))) << server.log();
  const std::string endpoint = coordinator_endpoint(server.log());
  ASSERT_FALSE(endpoint.empty()) << server.log();
  const int port = std::stoi(endpoint.substr(endpoint.rfind(':') + 1));

  // The generated secret reached the ranks through their environment, not their argv.
  const auto ranks = run_command("pgrep -P " + std::to_string(server.pid())).out;
  std::istringstream in(ranks);
  int seen = 0;
  for (pid_t p; in >> p; ++seen) {
    EXPECT_EQ(proc_text(p, "cmdline").find("cluster-secret"), std::string::npos);
    EXPECT_NE(proc_text(p, "environ").find("DPSERVE_CLUSTER_SECRET="), std::string::npos);
  }
  EXPECT_EQ(seen, 2);

  // 1. A plain ZeroMQ DEALER speaking the coordinator protocol: hello, register as rank 7 on
  //    host "stranger-host", overwrite a store key. Nothing comes back.
  {
    zmq::socket_t s(dpserve::zmq_context(), zmq::socket_type::dealer);
    s.set(zmq::sockopt::linger, 0);
    s.connect(endpoint);
    dpserve::CoordRequest hello{
        .id = 1, .op = dpserve::CoordOp::kHello, .pid = 1, .host = "stranger-host"};
    dpserve::CoordRequest reg{.id = 2, .op = dpserve::CoordOp::kRegister};
    reg.rank.global_rank = 7;
    reg.rank.host = "stranger-host";
    reg.rank.pid = 1;
    dpserve::CoordRequest set{
        .id = 3, .op = dpserve::CoordOp::kSet, .keys = {"gloo/poison"}, .value = "x"};
    for (const auto& r : {hello, reg, set}) {
      s.send(zmq::buffer(dpserve::encode_request(r)), zmq::send_flags::dontwait);
    }
    zmq::pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
    EXPECT_EQ(zmq::poll(&item, 1, milliseconds(2000)), 0) << "the coordinator answered a stranger";
  }
  // (When the stranger hangs up first, its address may be gone before it could be read.)
  EXPECT_TRUE(log_has(server, "coordinator: refused a peer at ", seconds(15))) << server.log();
  // Which side notices the mechanism mismatch first is a race: the refusal reads either way.
  EXPECT_TRUE(server.log().find("did not use CURVE security") != std::string::npos ||
              server.log().find("the connection ended during the handshake") != std::string::npos)
      << server.log();

  // 2. A CoordinatorClient with a wrong secret gives up after its timeout, naming the flag.
  {
    dpserve::CoordinatorClientOptions o;
    o.address = endpoint;
    o.dist_timeout = dpserve::Millis(3000);
    o.secret = dpserve::ClusterSecret("not-the-secret");
    try {
      dpserve::CoordinatorClient stranger(o);
      ADD_FAILURE() << "a client with a wrong secret reached the coordinator";
    } catch (const dpserve::Error& e) {
      EXPECT_NE(std::string(e.what()).find("--cluster-secret"), std::string::npos) << e.what();
    }
  }
  EXPECT_TRUE(log_has(server, "a different --cluster-secret", seconds(15))) << server.log();
  // Node 0 hung up on it, so its address is known.
  EXPECT_NE(server.log().find("coordinator: refused a peer at 127.0.0.1"), std::string::npos)
      << server.log();

  // 3. Raw TCP bytes (ZeroMQ's greeting is all that may come back).
  const std::string answer = raw_http(port, "GET /register HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_LE(answer.size(), 64u) << "the coordinator port answered a raw request";
  EXPECT_TRUE(log_has(server, "did not speak the ZeroMQ protocol", seconds(15))) << server.log();

  // Nothing of the stranger's reached the coordinator; the server serves as before.
  EXPECT_EQ(server.log().find("stranger-host"), std::string::npos) << server.log();
  EXPECT_EQ(server.log().find("rank 7"), std::string::npos) << server.log();
  const json ref = reference_outputs();
  EXPECT_EQ(greedy_ids(server, ref["prompt_text"], 32),
            ref["greedy"]["ids"].get<std::vector<int>>());
  EXPECT_FALSE(server.wait_exit(milliseconds(0)).has_value()) << server.log();
  // The secret is never shown: not in the log, not in /get_server_info.
  EXPECT_FALSE(server_info(server).contains("cluster_secret"));
}

// Two nodes on loopback given different secrets: node 1's rank is refused at the handshake and
// node 1 exits within --dist-timeout naming --cluster-secret; node 0 logs the refusal and ends
// with an error (its rank 0 waited for a peer that never came), not a crash.
TEST(ClusterSecretServer, MismatchedSecretsFailNamingTheFlag) {
  const int coord_port = free_port();
  const std::vector<std::string> common = {
      "--tp-size",        "2",         "--nnodes",           "2",
      "--node-0-address", "127.0.0.1", "--coordinator-port", std::to_string(coord_port),
      "--dist-timeout",   "4",         "--max-total-tokens", "4096"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), common.begin(), common.end());
    return extra;
  };
  ServerProcess node0(with({"--node-rank", "0", "--cluster-secret", "node-zero-secret"}));
  // Node 1 starts once the coordinator listens, so that its --dist-timeout is spent knocking.
  ASSERT_TRUE(log_has(node0, "coordinator listening on", seconds(30))) << node0.log();
  ServerProcess node1(with({"--node-rank", "1", "--cluster-secret", "node-one-secret"}));
  const auto code1 = node1.wait_exit(seconds(30));
  ASSERT_TRUE(code1.has_value()) << node1.log();
  EXPECT_EQ(*code1, 1) << node1.log();
  EXPECT_NE(node1.log().find("--cluster-secret"), std::string::npos) << node1.log();
  EXPECT_NE(node1.log().find("did not accept"), std::string::npos) << node1.log();
  EXPECT_TRUE(log_has(node0, "coordinator: refused a peer at 127.0.0.1", seconds(15)))
      << node0.log();
  const auto code0 = node0.wait_exit(seconds(30));
  ASSERT_TRUE(code0.has_value()) << node0.log();
  EXPECT_LT(*code0, 128) << "node 0 died of a signal\n" << node0.log();
  EXPECT_EQ(node0.log().find("CHECK failed"), std::string::npos) << node0.log();
  for (const ServerProcess* n : {&node0, &node1}) {
    EXPECT_EQ(n->log().find("node-zero-secret"), std::string::npos);
    EXPECT_EQ(n->log().find("node-one-secret"), std::string::npos);
  }
}

// Two nodes given the same secret, node 0 through the flag and node 1 through the environment
// variable, serve together.
TEST(ClusterSecretServer, SameSecretThroughFlagAndEnvironmentServes) {
  const int coord_port = free_port();
  const std::vector<std::string> common = {
      "--tp-size",          "2",         "--nnodes",           "2",
      "--node-0-address",   "127.0.0.1", "--coordinator-port", std::to_string(coord_port),
      "--max-total-tokens", "4096"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), common.begin(), common.end());
    return extra;
  };
  ::setenv("DPSERVE_CLUSTER_SECRET", "shared-secret", 1);
  ServerProcess node1(with({"--node-rank", "1"}));
  ::unsetenv("DPSERVE_CLUSTER_SECRET");
  ServerProcess node0(with({"--node-rank", "0", "--cluster-secret", "shared-secret"}));
  ASSERT_TRUE(node0.wait_healthy(seconds(60))) << node0.log() << node1.log();
  const json ref = reference_outputs();
  EXPECT_EQ(greedy_ids(node0, ref["prompt_text"], 32),
            ref["greedy"]["ids"].get<std::vector<int>>());
  EXPECT_EQ(node0.log().find("refused a peer"), std::string::npos) << node0.log();
}

// Several nodes without a secret is a startup error naming the flag.
TEST(ClusterSecretServer, SeveralNodesNeedASecret) {
  ServerProcess node({"--tp-size", "2", "--nnodes", "2", "--node-rank", "1", "--node-0-address",
                      "127.0.0.1", "--coordinator-port", std::to_string(free_port())});
  const auto code = node.wait_exit(seconds(10));
  ASSERT_TRUE(code.has_value()) << node.log();
  EXPECT_EQ(*code, 1);
  EXPECT_NE(node.log().find("--cluster-secret is required when --nnodes > 1"), std::string::npos)
      << node.log();
}

}  // namespace
