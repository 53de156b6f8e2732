// ZeroMQ helpers: PUSH/PULL over ipc:// in a RuntimeDir between threads, timeouts, polling
// several sockets, garbage on the wire, and messages between two real processes (spawned
// children: one streams outputs, one answers requests).

#include <chrono>
#include <thread>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dpserve/common/errors.h"
#include "dpserve/ipc/io_struct.h"
#include "dpserve/ipc/process.h"
#include "dpserve/ipc/zmq_socket.h"

namespace dpserve {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

TokenizedGenerateReq req(std::string rid, std::vector<int32_t> ids) {
  TokenizedGenerateReq r;
  r.rid = std::move(rid);
  r.input_ids = std::move(ids);
  r.sampling_params_json = "{}";
  return r;
}

TEST(ZmqSocket, PushPullBetweenThreadsKeepsOrder) {
  RuntimeDir dir;
  MessageSocket pull(zmq::socket_type::pull);
  pull.bind(dir.endpoint("scheduler_input"));
  constexpr int kCount = 1000;
  std::thread producer([&] {
    MessageSocket push(zmq::socket_type::push);
    push.connect(dir.endpoint("scheduler_input"));
    for (int i = 0; i < kCount; ++i) {
      ASSERT_TRUE(push.send(req(fmt::format("r{}", i), {i, i + 1}), Millis(5000)));
    }
    // Linger 0 drops what is still queued on close: wait for the consumer's last receive.
    push.set_linger(Millis(5000));
  });
  for (int i = 0; i < kCount; ++i) {
    std::optional<Message> m = pull.recv(Millis(5000));
    ASSERT_TRUE(m.has_value()) << "message " << i;
    const auto& r = std::get<TokenizedGenerateReq>(*m);
    EXPECT_EQ(r.rid, fmt::format("r{}", i));
    EXPECT_EQ(r.input_ids, (std::vector<int32_t>{i, i + 1}));
  }
  producer.join();
}

TEST(ZmqSocket, RecvTimesOutAndSendWithoutPeerTimesOut) {
  RuntimeDir dir;
  MessageSocket pull(zmq::socket_type::pull);
  pull.bind(dir.endpoint("a"));
  const auto t0 = Clock::now();
  EXPECT_FALSE(pull.recv(Millis(50)).has_value());
  EXPECT_GE(Clock::now() - t0, Millis(45));
  EXPECT_FALSE(pull.recv(Millis(0)).has_value());
  EXPECT_FALSE(pull.readable());

  MessageSocket push(zmq::socket_type::push);
  push.bind(dir.endpoint("nobody"));  // no peer: nothing can be queued
  EXPECT_FALSE(push.send(FlushCacheReq{}, Millis(50)));
}

TEST(ZmqSocket, PollReportsWhichSocketIsReadable) {
  RuntimeDir dir;
  MessageSocket a(zmq::socket_type::pull), b(zmq::socket_type::pull);
  a.bind(dir.endpoint("a"));
  b.bind(dir.endpoint("b"));
  MessageSocket to_b(zmq::socket_type::push);
  to_b.connect(dir.endpoint("b"));
  MessageSocket* both[] = {&a, &b};
  EXPECT_TRUE(poll_readable(both, Millis(20)).empty());
  ASSERT_TRUE(to_b.send(AbortReq{"x", false}, Millis(2000)));
  EXPECT_EQ(poll_readable(both, Millis(5000)), std::vector<size_t>{1});
  ASSERT_TRUE(b.readable());
  EXPECT_EQ(std::get<AbortReq>(*b.recv(Millis(0))).rid, "x");
}

TEST(ZmqSocket, GarbageOnTheWireIsAnErrorAndTheSocketKeepsWorking) {
  RuntimeDir dir;
  MessageSocket pull(zmq::socket_type::pull);
  pull.bind(dir.endpoint("in"));
  MessageSocket push(zmq::socket_type::push);
  push.connect(dir.endpoint("in"));
  ASSERT_TRUE(push.send_bytes("\xc1garbage", Millis(2000)));
  ASSERT_TRUE(push.send(FlushCacheReq{}, Millis(2000)));
  EXPECT_THROW(pull.recv(Millis(5000)), Error);
  std::optional<Message> m = pull.recv(Millis(5000));
  ASSERT_TRUE(m.has_value());
  EXPECT_TRUE(std::holds_alternative<FlushCacheReq>(*m));
}

TEST(ZmqSocket, BadEndpointsAreErrors) {
  MessageSocket s(zmq::socket_type::pull);
  EXPECT_THROW(s.bind("ipc:///nonexistent-dir-xyz/sock"), Error);
  EXPECT_THROW(s.connect("nonsense://x"), Error);
}

TEST(ZmqSocket, LongIpcPathsAreRejected) {
  try {
    ipc_endpoint("/" + std::string(200, 'd'), "sock");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("longer than the"));
  }
  EXPECT_EQ(ipc_endpoint("/tmp/x", "s"), "ipc:///tmp/x/s");
}

// A child process with its own context pushes messages and waits for an acknowledgement.
TEST(ZmqSocket, MessagesBetweenProcesses) {
  RuntimeDir dir;
  MessageSocket from_child(zmq::socket_type::pull);
  from_child.bind(dir.endpoint("up"));
  MessageSocket to_child(zmq::socket_type::push);
  to_child.bind(dir.endpoint("down"));
  constexpr int kCount = 200;
  // A spawned (exec'd) child, not a bare fork(): a fork of this multithreaded process (ZeroMQ's
  // I/O threads) may copy a lock another thread holds, which hung the child under ASan.
  ChildProcess child({.role = "zmq-stream",
                      .args = {dir.endpoint("up"), dir.endpoint("down"), std::to_string(kCount)},
                      .executable = IPC_TEST_CHILD});
  child.wait_ready(Millis(10000));
  for (int i = 0; i < kCount; ++i) {
    std::optional<Message> m = from_child.recv(Millis(10000));
    ASSERT_TRUE(m.has_value()) << i;
    const auto& out = std::get<BatchTokenIdOut>(*m);
    ASSERT_EQ(out.outputs.size(), 1u);
    EXPECT_EQ(out.outputs[0].index, i);
  }
  ASSERT_TRUE(to_child.send(AbortReq{"", true}, Millis(10000)));
  const std::optional<ExitStatus> status = child.wait_exit(Millis(10000));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->signal, 0);
  EXPECT_EQ(status->code, 0);
}

// The layout of the server: the parent binds both ends, a spawned child connects and answers.
TEST(ZmqSocket, RequestsAndRepliesWithASpawnedChild) {
  RuntimeDir dir;
  MessageSocket to_child(zmq::socket_type::push);
  to_child.bind(dir.endpoint("scheduler_input"));
  MessageSocket from_child(zmq::socket_type::pull);
  from_child.bind(dir.endpoint("detokenizer"));
  ChildProcess child({.role = "zmq-echo",
                      .args = {dir.endpoint("scheduler_input"), dir.endpoint("detokenizer")},
                      .executable = IPC_TEST_CHILD});
  child.wait_ready(Millis(10000));

  TokenizedGenerateReq r = req("abc", {5, 6, 7});
  r.input_text = "hi";
  ASSERT_TRUE(to_child.send(r, Millis(5000)));
  std::optional<Message> m = from_child.recv(Millis(10000));
  ASSERT_TRUE(m.has_value());
  const auto& out = std::get<BatchTokenIdOut>(*m);
  ASSERT_EQ(out.outputs.size(), 1u);
  EXPECT_EQ(out.outputs[0].rid, "abc");
  EXPECT_EQ(out.outputs[0].new_token_ids, (std::vector<int32_t>{7, 6, 5}));
  EXPECT_EQ(out.outputs[0].new_text, "hi");
  EXPECT_TRUE(out.outputs[0].finished);
  EXPECT_EQ(out.outputs[0].prompt_tokens, 3);

  ASSERT_TRUE(to_child.send(FlushCacheReq{}, Millis(5000)));
  m = from_child.recv(Millis(10000));
  ASSERT_TRUE(m.has_value());
  EXPECT_TRUE(std::get<FlushCacheResp>(*m).success);

  ASSERT_TRUE(to_child.send(GetServerInfoReq{}, Millis(5000)));
  m = from_child.recv(Millis(10000));
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(std::get<GetServerInfoResp>(*m).info_json, R"({"role":"zmq-echo"})");

  // Garbage reaches the child, which reports it and keeps serving.
  ASSERT_TRUE(to_child.send_bytes("not msgpack", Millis(5000)));
  m = from_child.recv(Millis(10000));
  ASSERT_TRUE(m.has_value());
  EXPECT_THAT(std::get<FlushCacheResp>(*m).message, HasSubstr("ipc: malformed message"));

  ASSERT_TRUE(to_child.send(AbortReq{"", true}, Millis(5000)));
  std::optional<ExitStatus> st = child.wait_exit(Millis(10000));
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->code, 0);
}

}  // namespace
}  // namespace dpserve
