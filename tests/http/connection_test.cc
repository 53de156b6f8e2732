// The connection layer under the HTTP server (http/connection.h) on its own: ConnectionStream's
// deadlines over a real socket pair, and ThreadPerTaskQueue's bound on running threads.

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "dpserve/http/connection.h"

namespace dpserve {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A connected pair of stream sockets: `server` goes to the ConnectionStream, `client` plays the
// client.
struct SocketPair {
  SocketPair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    server = fds[0];
    client = fds[1];
  }
  ~SocketPair() {
    if (server >= 0) ::close(server);
    if (client >= 0) ::close(client);
  }
  int server = -1;
  int client = -1;
};

ConnectionLimits short_limits() {
  ConnectionLimits l;
  l.request_timeout = milliseconds(300);
  l.write_timeout = milliseconds(300);
  l.keep_alive_timeout = milliseconds(200);
  return l;
}

TEST(ConnectionStream, ReadsWhatArrivesAndStopsAtTheRequestDeadline) {
  SocketPair p;
  ConnectionStream s(p.server, short_limits(), nullptr);
  s.start_request();
  ASSERT_EQ(::write(p.client, "GET / HT", 8), 8);
  char buf[64];
  EXPECT_EQ(s.read(buf, sizeof buf), 8);
  EXPECT_EQ(std::string(buf, 8), "GET / HT");
  // Bytes keep coming, but slower than the whole request may take: the deadline is total.
  const auto t = Clock::now();
  ssize_t n = 0;
  for (int i = 0; i < 20 && n >= 0; ++i) {
    ASSERT_EQ(::write(p.client, "T", 1), 1);
    n = s.read(buf, sizeof buf);
    if (n >= 0) std::this_thread::sleep_for(milliseconds(40));
  }
  EXPECT_EQ(n, -1);
  EXPECT_LT(since(t), 0.3 + 0.2);
  EXPECT_EQ(s.timed_out(), ConnectionStream::Timeout::kRequest);
}

TEST(ConnectionStream, KeepAliveWaitEndsWithoutARequest) {
  SocketPair p;
  ConnectionStream s(p.server, short_limits(), nullptr);
  const auto t = Clock::now();
  EXPECT_FALSE(s.wait_for_request());
  EXPECT_GE(since(t), 0.2 - 0.02);
  EXPECT_LT(since(t), 0.2 + 0.2);
  EXPECT_EQ(s.timed_out(), ConnectionStream::Timeout::kNone);  // idle is no timeout
  ASSERT_EQ(::write(p.client, "G", 1), 1);
  EXPECT_TRUE(s.wait_for_request());
}

TEST(ConnectionStream, WriteGivesUpOnAClientThatDoesNotRead) {
  SocketPair p;
  ConnectionStream s(p.server, short_limits(), nullptr);
  const std::string chunk(64 << 10, 'x');
  const auto t = Clock::now();
  ssize_t n = 0;
  int writes = 0;
  while (n >= 0 && since(t) < 5) {
    n = s.write(chunk.data(), chunk.size());
    ++writes;
  }
  EXPECT_EQ(n, -1);
  EXPECT_GT(writes, 1);  // the socket buffers took some first
  EXPECT_EQ(s.timed_out(), ConnectionStream::Timeout::kWrite);
  EXPECT_LT(since(t), 2.0);
  EXPECT_FALSE(s.is_writable());  // still full: no write can start within the timeout
}

TEST(ConnectionStream, NoticesAClosedPeerAtOnce) {
  SocketPair p;
  ConnectionStream s(p.server, short_limits(), nullptr);
  EXPECT_TRUE(s.peer_alive());
  ASSERT_EQ(::write(p.client, "next", 4), 4);  // bytes of a next request: still alive
  EXPECT_TRUE(s.peer_alive());
  char buf[8];
  ASSERT_EQ(s.read(buf, sizeof buf), 4);
  ::close(p.client);
  p.client = -1;
  const auto t = Clock::now();
  EXPECT_FALSE(s.peer_alive());
  EXPECT_FALSE(s.is_writable());
  EXPECT_LT(since(t), 0.05);
  EXPECT_EQ(s.timed_out(), ConnectionStream::Timeout::kNone);
}

TEST(ConnectionStream, StoppingEndsWaitsEarlyWithoutATimeout) {
  SocketPair p;
  ConnectionLimits l = short_limits();
  l.request_timeout = milliseconds(10000);
  std::atomic<bool> stop{false};
  ConnectionStream s(p.server, l, [&] { return stop.load(); });
  s.start_request();
  std::thread stopper([&] {
    std::this_thread::sleep_for(milliseconds(150));
    stop.store(true);
  });
  const auto t = Clock::now();
  char buf[8];
  EXPECT_EQ(s.read(buf, sizeof buf), -1);
  EXPECT_LT(since(t), 1.0);
  EXPECT_EQ(s.timed_out(), ConnectionStream::Timeout::kNone);
  stopper.join();
}

TEST(ThreadPerTaskQueue, RunsEveryJobWithAtMostMaxThreads) {
  ThreadPerTaskQueue q(4);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> running{0}, most{0}, done{0};
  for (int i = 0; i < 10; ++i) {
    q.enqueue([&] {
      const int r = running.fetch_add(1) + 1;
      int m = most.load();
      while (r > m && !most.compare_exchange_weak(m, r)) {
      }
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return release; });
      running.fetch_sub(1);
      done.fetch_add(1);
    });
  }
  const auto t = Clock::now();
  while (running.load() < 4 && since(t) < 5) std::this_thread::sleep_for(milliseconds(5));
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ(running.load(), 4);  // the other 6 wait for a thread
  EXPECT_EQ(q.num_threads(), 4u);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  q.shutdown();  // returns once every job ran and every thread ended
  EXPECT_EQ(done.load(), 10);
  EXPECT_EQ(most.load(), 4);
  EXPECT_EQ(q.peak_threads(), 4u);
  EXPECT_EQ(q.num_threads(), 0u);
}

TEST(ThreadPerTaskQueue, AThreadEndsWithItsJob) {
  ThreadPerTaskQueue q(8);
  std::atomic<int> ran{0};
  for (int i = 0; i < 5; ++i) {
    q.enqueue([&] { ran.fetch_add(1); });
    const auto t = Clock::now();
    while (q.num_threads() > 0 && since(t) < 5) std::this_thread::sleep_for(milliseconds(1));
    EXPECT_EQ(q.num_threads(), 0u) << "job " << i;
  }
  q.shutdown();
  EXPECT_EQ(ran.load(), 5);
  EXPECT_EQ(q.peak_threads(), 1u);
}

}  // namespace
}  // namespace dpserve
