// The coordinator, its client and the Gloo store adapter, across real processes over TCP on
// 127.0.0.1 (ephemeral ports). Children are coordinator_test_child (see its roles); every test
// kills its children in TearDown.

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"
#include "dpserve/distributed/coordinator.h"
#include "dpserve/distributed/coordinator_client.h"
#include "dpserve/distributed/coordinator_protocol.h"
#include "dpserve/distributed/coordinator_store.h"
#include "dpserve/ipc/process.h"

namespace dpserve {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A TCP port nobody listens on (bound, read and released).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// Every coordinator and client here shares one cluster secret; the children get it through the
// environment, as a server's ranks do (the refusals of strangers: cluster_secret_test).
const char* const kSecret = "coordinator-test-secret";
// The longest a child may take to start, derive the secret's keys and connect (a loaded
// machine is slow; a healthy one takes well under a second).
const Millis kChildStart(15000);

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    spdlog::set_level(spdlog::level::warn);
    ::setenv("DPSERVE_CLUSTER_SECRET", kSecret, 1);
    CoordinatorOptions o;
    o.secret = ClusterSecret(kSecret);
    o.host = "127.0.0.1";
    o.port = 0;
    o.heartbeat_interval = Millis(100);
    o.heartbeat_timeout = Millis(800);
    o.on_rank_dead = [this](const RankState& s) {
      std::lock_guard<std::mutex> lock(mu_);
      dead_.push_back(s.info.global_rank);
      dead_cv_.notify_all();
    };
    coordinator_ = std::make_unique<Coordinator>(o);
  }

  void TearDown() override {
    for (auto& c : children_) {
      if (!c->exit_status()) c->kill(SIGKILL);
      c->terminate(Millis(1000));
    }
    children_.clear();
    coordinator_.reset();
  }

  CoordinatorClientOptions client_options() {
    CoordinatorClientOptions o;
    o.address = coordinator_->endpoint();
    o.dist_timeout = Millis(2000);
    o.secret = ClusterSecret(kSecret);
    return o;
  }

  ChildProcess& spawn(const std::string& role, std::vector<std::string> args) {
    ChildSpec spec;
    spec.role = role;
    spec.args = std::move(args);
    spec.executable = COORDINATOR_TEST_CHILD;
    children_.push_back(std::make_unique<ChildProcess>(spec));
    return *children_.back();
  }

  // Spawns a rank child and returns its readiness payload ({"ok":..} or {"error":..}).
  nlohmann::json spawn_rank(int global, int node, std::vector<std::string> fingerprint,
                            ChildProcess** out = nullptr) {
    std::vector<std::string> args = {coordinator_->endpoint(), std::to_string(global),
                                     std::to_string(node)};
    args.insert(args.end(), fingerprint.begin(), fingerprint.end());
    ChildProcess& c = spawn("rank", args);
    if (out != nullptr) *out = &c;
    return c.wait_ready(kChildStart);
  }

  // Waits until `n` ranks were reported dead; false on timeout.
  bool wait_dead(size_t n, Millis timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return dead_cv_.wait_for(lock, timeout, [&] { return dead_.size() >= n; });
  }

  std::unique_ptr<Coordinator> coordinator_;
  std::vector<std::unique_ptr<ChildProcess>> children_;
  std::mutex mu_;
  std::condition_variable dead_cv_;
  std::vector<int> dead_;
};

const std::vector<std::string> kFingerprint = {"model_path=/a", "tp_size=2", "dtype=bf16"};

TEST_F(CoordinatorTest, RegistersRanksFromSeveralProcesses) {
  EXPECT_NE(coordinator_->port(), 0);
  EXPECT_EQ(coordinator_->endpoint(), "tcp://127.0.0.1:" + std::to_string(coordinator_->port()));
  std::vector<ChildProcess*> kids(3);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(spawn_rank(r, r / 2, kFingerprint, &kids[r]).value("ok", false), true);
  }
  const std::vector<RankState> states = coordinator_->wait_for_ranks(3, Millis(5000));
  ASSERT_EQ(states.size(), 3u);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(states[r].info.global_rank, r);
    EXPECT_EQ(states[r].info.node_rank, r / 2);
    EXPECT_EQ(states[r].info.pid, kids[r]->pid());
    EXPECT_EQ(states[r].state, RankLiveness::kAlive);
    EXPECT_EQ(states[r].info.endpoints.at("scheduler_input"),
              "tcp://127.0.0.1:" + std::to_string(7000 + r));
  }
  // Clients see the same registry, fingerprint order kept.
  CoordinatorClient client(client_options());
  const std::vector<RankState> seen = client.rank_states();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[2].info.pid, kids[2]->pid());
  ASSERT_EQ(seen[0].info.fingerprint.size(), 3u);
  EXPECT_EQ(seen[0].info.fingerprint[0], (std::pair<std::string, std::string>("model_path", "/a")));
  EXPECT_EQ(seen[0].info.fingerprint[2].first, "dtype");
}

TEST_F(CoordinatorTest, WaitForRanksTimesOutNamingMissingRanks) {
  ASSERT_TRUE(spawn_rank(0, 0, kFingerprint).value("ok", false));
  const auto t0 = Clock::now();
  try {
    coordinator_->wait_for_ranks(3, Millis(300));
    FAIL() << "no timeout";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("only 1 of 3 ranks registered"));
    EXPECT_THAT(e.what(), HasSubstr("missing ranks: 1, 2"));
  }
  EXPECT_LT(since(t0), 1.5);
}

TEST_F(CoordinatorTest, FingerprintMismatchIsRefusedNamingEachFlag) {
  ASSERT_TRUE(spawn_rank(0, 0, kFingerprint).value("ok", false));
  const nlohmann::json r = spawn_rank(2, 1, {"model_path=/b", "tp_size=2", "nnodes=2"});
  ASSERT_TRUE(r.contains("error")) << r.dump();
  EXPECT_EQ(r["error"].get<std::string>(),
            "rank 2 (node 1) differs: --model-path is /a on node 0 but /b here; --dtype is bf16 "
            "on node 0 but not set here; --nnodes is not set on node 0 but 2 here");
  // The refused rank is not registered; a matching one is.
  EXPECT_TRUE(spawn_rank(2, 1, kFingerprint).value("ok", false));
  EXPECT_EQ(coordinator_->rank_states().size(), 2u);
}

TEST_F(CoordinatorTest, SameRankTwiceIsRefusedWhileAlive) {
  ChildProcess* first = nullptr;
  ASSERT_TRUE(spawn_rank(1, 0, kFingerprint, &first).value("ok", false));
  const nlohmann::json r = spawn_rank(1, 0, kFingerprint);
  ASSERT_TRUE(r.contains("error")) << r.dump();
  EXPECT_THAT(r["error"].get<std::string>(),
              HasSubstr("rank 1 (node 0) is already registered (host 127.0.0.1, pid " +
                        std::to_string(first->pid()) + ") and alive"));
  // Once the first one is dead, a replacement may take the rank.
  first->kill(SIGKILL);
  ASSERT_TRUE(wait_dead(1, Millis(3000)));
  ChildProcess* second = nullptr;
  EXPECT_TRUE(spawn_rank(1, 0, kFingerprint, &second).value("ok", false));
  const auto states = coordinator_->rank_states();
  ASSERT_EQ(states.size(), 1u);
  EXPECT_EQ(states[0].state, RankLiveness::kAlive);
  EXPECT_EQ(states[0].info.pid, second->pid());
}

TEST_F(CoordinatorTest, BlockingGetAcrossProcesses) {
  ChildProcess& echo = spawn("echo", {coordinator_->endpoint(), "in", "out", "5000"});
  echo.wait_ready(kChildStart);
  CoordinatorClient client(client_options());
  std::this_thread::sleep_for(Millis(200));  // the child is blocked in get("in") by now
  EXPECT_FALSE(client.check({"in"}));
  client.set("in", std::string("hel\0lo", 6));
  EXPECT_EQ(client.get("out", Millis(5000)), std::string("hel\0lo!", 7));
  const auto status = echo.wait_exit(Millis(5000));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->code, 0);
}

TEST_F(CoordinatorTest, GetAndWaitTimeOut) {
  CoordinatorClient client(client_options());
  auto t0 = Clock::now();
  try {
    client.get("never", Millis(300));
    FAIL() << "no timeout";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("get of key 'never' timed out after 0.3 s"));
  }
  EXPECT_GE(since(t0), 0.29);
  EXPECT_LT(since(t0), 1.5);
  client.set("a", "1");
  try {
    client.wait({"a", "b"}, Millis(200));
    FAIL() << "no timeout";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("keys not set: b"));
  }
  // A timeout in a child process is reported there too.
  ChildProcess& echo = spawn("echo", {coordinator_->endpoint(), "never2", "out2", "200"});
  echo.wait_ready(kChildStart);
  EXPECT_THAT(client.get("out2", Millis(5000)), HasSubstr("error: coordinator get of key"));
  EXPECT_EQ(echo.wait_exit(Millis(5000)).value().code, 3);
}

TEST_F(CoordinatorTest, AddCheckDelete) {
  CoordinatorClient client(client_options());
  EXPECT_EQ(client.add("ctr", 2), 2);
  EXPECT_EQ(client.add("ctr", -5), -3);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) client.add("ctr", 1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(client.get("ctr", Millis(0)), "197");
  EXPECT_TRUE(client.check({"ctr"}));
  EXPECT_TRUE(client.delete_key("ctr"));
  EXPECT_FALSE(client.delete_key("ctr"));
  EXPECT_FALSE(client.check({"ctr"}));
  client.set("text", "abc");
  EXPECT_THROW(client.add("text", 1), Error);
}

TEST_F(CoordinatorTest, BarrierWaitsForALateParticipant) {
  ChildProcess& a = spawn("barrier", {coordinator_->endpoint(), "b1", "3", "5000", "0"});
  ChildProcess& b = spawn("barrier", {coordinator_->endpoint(), "b1", "3", "5000", "500"});
  a.wait_ready(kChildStart);
  b.wait_ready(kChildStart);
  CoordinatorClient client(client_options());
  const auto t0 = Clock::now();
  client.barrier("b1", 3, Millis(5000));
  EXPECT_GE(since(t0), 0.3);
  EXPECT_EQ(a.wait_exit(Millis(3000)).value().code, 0);
  EXPECT_EQ(b.wait_exit(Millis(3000)).value().code, 0);
  // The name is reusable once passed.
  ChildProcess& c = spawn("barrier", {coordinator_->endpoint(), "b1", "2", "5000", "0"});
  c.wait_ready(kChildStart);  // connected (its start-up, key derivation included, is not timed)
  client.barrier("b1", 2, Millis(5000));
  EXPECT_EQ(c.wait_exit(Millis(3000)).value().code, 0);
}

TEST_F(CoordinatorTest, BarrierTimesOutNamingWhoArrived) {
  ChildProcess& a = spawn("barrier", {coordinator_->endpoint(), "b2", "3", "1000", "0"});
  a.wait_ready(kChildStart);
  CoordinatorClient client(client_options());
  std::this_thread::sleep_for(Millis(100));
  const auto t0 = Clock::now();
  try {
    client.barrier("b2", 3, Millis(300));
    FAIL() << "no timeout";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("barrier 'b2' timed out after 0.3 s: 2 of 3 participants "
                                    "arrived (pid " +
                                    std::to_string(a.pid())));
  }
  EXPECT_LT(since(t0), 1.5);
  EXPECT_EQ(a.wait_exit(Millis(3000)).value().code, 3);  // its own timeout
  EXPECT_THROW(client.barrier("b3", 2, Millis(0)), Error);
}

TEST_F(CoordinatorTest, HeartbeatsReportKilledAndStoppedRanksDead) {
  ChildProcess* killed = nullptr;
  ChildProcess* stopped = nullptr;
  ASSERT_TRUE(spawn_rank(0, 0, kFingerprint, &killed).value("ok", false));
  ASSERT_TRUE(spawn_rank(1, 1, kFingerprint, &stopped).value("ok", false));
  coordinator_->wait_for_ranks(2, Millis(5000));
  std::this_thread::sleep_for(Millis(1000));  // heartbeats keep both alive past the timeout
  for (const RankState& s : coordinator_->rank_states()) {
    EXPECT_EQ(s.state, RankLiveness::kAlive);
    EXPECT_LT(s.last_heartbeat_age_s, 0.7);
  }
  const auto t0 = Clock::now();
  killed->kill(SIGKILL);
  stopped->kill(SIGSTOP);
  ASSERT_TRUE(wait_dead(2, Millis(3000)));
  EXPECT_LT(since(t0), 2.0);  // timeout 0.8 s plus the check period
  const auto states = coordinator_->rank_states();
  ASSERT_EQ(states.size(), 2u);
  for (const RankState& s : states) {
    EXPECT_EQ(s.state, RankLiveness::kDead);
    EXPECT_GE(s.last_heartbeat_age_s, 0.8);
  }
  // The stopped rank comes back to find itself declared dead: its client reports the coordinator
  // lost (exit 8) instead of carrying on.
  stopped->kill(SIGCONT);
  const auto status = stopped->wait_exit(Millis(3000));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->code, 8);
}

TEST_F(CoordinatorTest, CleanLeaveIsLeftNotDead) {
  {
    CoordinatorClient client(client_options());
    client.register_rank(RankInfo{.node_rank = 0, .global_rank = 0, .host = "h", .pid = 1});
    client.leave();
  }
  {
    CoordinatorClient client(client_options());  // the destructor leaves
    client.register_rank(RankInfo{.node_rank = 0, .global_rank = 1, .host = "h", .pid = 2});
  }
  std::this_thread::sleep_for(Millis(1000));  // past the heartbeat timeout
  const auto states = coordinator_->rank_states();
  ASSERT_EQ(states.size(), 2u);
  EXPECT_EQ(states[0].state, RankLiveness::kLeft);
  EXPECT_EQ(states[1].state, RankLiveness::kLeft);
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_TRUE(dead_.empty());
}

TEST_F(CoordinatorTest, UnreachableCoordinatorIsAnErrorNamingTheAddress) {
  const std::string address = coordinator_address("127.0.0.1", free_port());
  CoordinatorClientOptions o;
  o.address = address;
  o.dist_timeout = Millis(1000);
  const auto t0 = Clock::now();
  try {
    CoordinatorClient client(o);
    FAIL() << "connected to nothing";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "cannot reach the coordinator at " + address + " after 1.0 s: Connection refused");
  }
  EXPECT_GE(since(t0), 0.95);
  EXPECT_LT(since(t0), 2.5);
}

TEST_F(CoordinatorTest, ShutdownBroadcastReachesClients) {
  ChildProcess* a = nullptr;
  ChildProcess* b = nullptr;
  ASSERT_TRUE(spawn_rank(0, 0, kFingerprint, &a).value("ok", false));
  ASSERT_TRUE(spawn_rank(1, 1, kFingerprint, &b).value("ok", false));
  std::mutex mu;
  std::condition_variable cv;
  std::string reason;
  CoordinatorClientOptions o = client_options();
  o.on_shutdown = [&](const std::string& r) {
    std::lock_guard<std::mutex> lock(mu);
    reason = r;
    cv.notify_all();
  };
  CoordinatorClient client(o);
  EXPECT_EQ(coordinator_->broadcast_shutdown("node 0 is stopping"), 3);
  EXPECT_EQ(a->wait_exit(Millis(3000)).value().code, 7);
  EXPECT_EQ(b->wait_exit(Millis(3000)).value().code, 7);
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, Millis(3000), [&] { return !reason.empty(); }));
    EXPECT_EQ(reason, "node 0 is stopping");
  }
  EXPECT_TRUE(client.lost());
  EXPECT_THROW(client.set("k", "v"), Error);
}

TEST_F(CoordinatorTest, LostCoordinatorDuringACallIsAnError) {
  ChildProcess& coord = spawn("coordinator", {"100", "500"});
  const std::string endpoint = coord.wait_ready(kChildStart).at("endpoint");
  std::mutex mu;
  std::condition_variable cv;
  std::string lost_reason;
  CoordinatorClientOptions o;
  o.address = endpoint;
  o.dist_timeout = Millis(2000);
  o.secret = ClusterSecret(kSecret);
  o.on_lost = [&](const std::string& r) {
    std::lock_guard<std::mutex> lock(mu);
    lost_reason = r;
    cv.notify_all();
  };
  CoordinatorClient client(o);
  client.set("x", "1");
  std::thread killer([&] {
    std::this_thread::sleep_for(Millis(200));
    coord.kill(SIGKILL);
  });
  const auto t0 = Clock::now();
  try {
    client.get("never", Millis(20000));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("lost the coordinator at " + endpoint));
  }
  killer.join();
  EXPECT_LT(since(t0), 2.0);
  EXPECT_TRUE(client.lost());
  EXPECT_THROW(client.get("x", Millis(100)), Error);
  // on_lost runs on the client's thread, right after the calls in flight failed.
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, Millis(2000), [&] { return !lost_reason.empty(); }));
  EXPECT_THAT(lost_reason, HasSubstr(endpoint));
}

TEST_F(CoordinatorTest, GlooRendezvousAndAllreduceThroughTheStore) {
  // Two groups at once through one coordinator: "world" of 3 ranks and "pair" of 2.
  struct Group {
    std::string prefix;
    int size;
  };
  const std::vector<Group> groups = {{"world", 3}, {"pair", 2}};
  std::vector<ChildProcess*> kids;
  for (const Group& g : groups) {
    for (int r = 0; r < g.size; ++r) {
      kids.push_back(&spawn(
          "gloo", {coordinator_->endpoint(), g.prefix, std::to_string(r), std::to_string(g.size)}));
    }
  }
  for (ChildProcess* k : kids) k->wait_ready(kChildStart);
  for (ChildProcess* k : kids) {
    const auto status = k->wait_exit(Millis(20000));
    ASSERT_TRUE(status.has_value()) << k->name() << " still runs";
    EXPECT_EQ(status->code, 0) << status->describe();
  }
  CoordinatorClient client(client_options());
  EXPECT_EQ(client.get("world/result/2", Millis(0)), "6,6,6,6,6,6,6,6");
  EXPECT_EQ(client.get("pair/result/0", Millis(0)), "3,3,3,3,3,3,3,3");
  // The adapter itself: prefixed keys, get, wait with a timeout.
  CoordinatorStore store(client, "g", Millis(300));
  store.set("k", {'a', '\0', 'b'});
  EXPECT_TRUE(client.check({"g/k"}));
  EXPECT_EQ(store.get("k"), (std::vector<char>{'a', '\0', 'b'}));
  store.wait({"k"});
  EXPECT_THROW(store.wait({"k", "missing"}, Millis(100)), Error);
  EXPECT_THROW(store.get("missing"), Error);
}

TEST(CoordinatorProtocolTest, RoundTripsAndRejectsMalformedBytes) {
  CoordRequest req{.id = 7, .op = CoordOp::kRegister, .keys = {"k"}, .timeout_ms = -1};
  req.rank.global_rank = 3;
  req.rank.fingerprint = {{"tp_size", "2"}, {"dtype", "bf16"}};
  req.rank.endpoints["a"] = "tcp://x:1";
  const CoordRequest back = decode_request(encode_request(req));
  EXPECT_EQ(back.id, 7u);
  EXPECT_EQ(back.op, CoordOp::kRegister);
  EXPECT_EQ(back.timeout_ms, -1);
  EXPECT_EQ(back.rank.global_rank, 3);
  EXPECT_EQ(back.rank.fingerprint, req.rank.fingerprint);
  EXPECT_EQ(back.rank.endpoints, req.rank.endpoints);
  CoordReply reply{.id = 9, .ok = false, .error = "no"};
  reply.ranks.push_back(RankState{req.rank, RankLiveness::kLeft, 1.5});
  const CoordReply rb = decode_reply(encode_reply(reply));
  EXPECT_EQ(rb.error, "no");
  ASSERT_EQ(rb.ranks.size(), 1u);
  EXPECT_EQ(rb.ranks[0].state, RankLiveness::kLeft);
  EXPECT_EQ(rb.ranks[0].last_heartbeat_age_s, 1.5);
  const std::string bytes = encode_request(req);
  EXPECT_THROW(decode_request("garbage"), Error);
  EXPECT_THROW(decode_request(bytes.substr(0, bytes.size() - 3)), Error);
  EXPECT_THROW(decode_request(bytes + "x"), Error);
  EXPECT_THROW(decode_reply(bytes), Error);  // a request is not a reply
  EXPECT_EQ(coordinator_address("::1", 5), "tcp://[::1]:5");
  EXPECT_EQ(fingerprint_diff({{"tp_size", "2"}}, 0, {{"tp_size", "2"}}), "");
}

}  // namespace
}  // namespace dpserve
