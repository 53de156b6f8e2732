// The cluster secret (ipc/zmq_auth.h) over real tcp sockets on 127.0.0.1: key derivation, a
// secured ROUTER that a client with the secret reaches, and strangers (a wrong secret, no
// security, raw bytes, a client that learned the server's public key but not the secret) that
// get nothing through and are logged; then the same at the Coordinator / CoordinatorClient level.

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/distributed/coordinator.h"
#include "dpserve/distributed/coordinator_client.h"
#include "dpserve/ipc/zmq_auth.h"
#include "dpserve/ipc/zmq_socket.h"

namespace dpserve {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

// How long to wait for what must happen (a loaded CI machine can be slow; a pass is quick).
constexpr std::chrono::seconds kPatience(15);

// Captures every log line of the process (the refusals are logged from other threads).
class LogCapture {
 public:
  LogCapture() : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4096)) {
    previous_ = spdlog::default_logger();
    auto logger = std::make_shared<spdlog::logger>("capture", sink_);
    logger->set_level(spdlog::level::info);
    spdlog::set_default_logger(logger);
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }

  // Every line so far, joined.
  std::string text() const {
    std::string out;
    for (const std::string& l : sink_->last_formatted()) out += l;
    return out;
  }
  // Waits until the log contains `needle`; false after `timeout`.
  bool wait_for(const std::string& needle, std::chrono::milliseconds timeout) const {
    const auto deadline = Clock::now() + timeout;
    while (text().find(needle) == std::string::npos) {
      if (Clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
  }

 private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
  std::shared_ptr<spdlog::logger> previous_;
};

// Waits until refused_peer_count() exceeds `before`; false after `timeout`.
bool wait_refused(int64_t before, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (refused_peer_count() <= before) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// A secured ROUTER on 127.0.0.1 (ephemeral port) that records what reaches it.
class SecuredRouter {
 public:
  SecuredRouter(const ClusterSecret& secret, const std::string& name)
      : socket_(zmq_context(), zmq::socket_type::router) {
    socket_.set(zmq::sockopt::linger, 0);
    secure_server_socket(socket_, secret, name);
    socket_.bind("tcp://127.0.0.1:*");
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  }

  const std::string& endpoint() const { return endpoint_; }
  int port() const { return std::stoi(endpoint_.substr(endpoint_.rfind(':') + 1)); }

  // The payload of the next message within `timeout`, echoed back as "echo:<payload>"; empty
  // when none arrives.
  std::string receive_and_echo(std::chrono::milliseconds timeout) {
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, timeout) <= 0) return "";
    zmq::message_t identity, payload;
    if (!socket_.recv(identity) || !socket_.recv(payload)) return "";
    const std::string got = payload.to_string();
    socket_.send(identity, zmq::send_flags::sndmore);
    socket_.send(zmq::buffer("echo:" + got), zmq::send_flags::none);
    return got;
  }

 private:
  zmq::socket_t socket_;
  std::string endpoint_;
};

// A DEALER connected to `endpoint`, configured by `setup` before connecting.
zmq::socket_t dealer(const std::string& endpoint,
                     const std::function<void(zmq::socket_t&)>& setup = nullptr) {
  zmq::socket_t s(zmq_context(), zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  if (setup) setup(s);
  s.connect(endpoint);
  return s;
}

// Sends `bytes` over a plain TCP connection to 127.0.0.1:port and closes it after a while.
void send_raw_tcp(int port, const std::string& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(bytes.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::close(fd);
}

TEST(ClusterSecret, KeyDerivationIsDeterministicAndSecretSpecific) {
  const ClusterSecret a1("correct horse battery staple");
  const ClusterSecret a2("correct horse battery staple");
  const ClusterSecret b("correct horse battery stapler");
  EXPECT_EQ(a1.public_key(), a2.public_key());
  EXPECT_EQ(a1.secret_key(), a2.secret_key());
  EXPECT_NE(a1.public_key(), b.public_key());
  EXPECT_NE(a1.secret_key(), b.secret_key());
  EXPECT_NE(a1.public_key(), a1.secret_key());
  EXPECT_EQ(a1.value(), "correct horse battery staple");
  EXPECT_FALSE(a1.empty());
  EXPECT_TRUE(ClusterSecret().empty());
  // The public key is the Curve25519 public key of the secret key (what ZeroMQ computes).
  char secret_z85[41] = {}, public_z85[41] = {}, want_z85[41] = {};
  ASSERT_NE(zmq_z85_encode(secret_z85, a1.secret_key().data(), 32), nullptr);
  ASSERT_EQ(zmq_curve_public(public_z85, secret_z85), 0);
  ASSERT_NE(zmq_z85_encode(want_z85, a1.public_key().data(), 32), nullptr);
  EXPECT_STREQ(public_z85, want_z85);
  try {
    ClusterSecret empty{std::string()};
    FAIL() << "an empty secret was accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("--cluster-secret"));
  }
  const ClusterSecret g1 = ClusterSecret::generate(), g2 = ClusterSecret::generate();
  EXPECT_EQ(g1.value().size(), 64u);
  EXPECT_EQ(g1.value().find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(g1.value(), g2.value());
  EXPECT_NE(g1.public_key(), g2.public_key());
}

TEST(ClusterSecret, ClientWithTheSecretTalksToASecuredServer) {
  const ClusterSecret secret("s3cret-right");
  SecuredRouter server(secret, "test-server-ok");
  const int64_t refused_before = refused_peer_count();
  zmq::socket_t client =
      dealer(server.endpoint(), [&](zmq::socket_t& s) { secure_client_socket(s, secret); });
  client.send(zmq::str_buffer("hello"), zmq::send_flags::none);
  EXPECT_EQ(server.receive_and_echo(kPatience), "hello");
  zmq::message_t reply;
  zmq::pollitem_t item{client.handle(), 0, ZMQ_POLLIN, 0};
  ASSERT_EQ(zmq::poll(&item, 1, std::chrono::milliseconds(5000)), 1);
  ASSERT_TRUE(client.recv(reply));
  EXPECT_EQ(reply.to_string(), "echo:hello");
  EXPECT_EQ(refused_peer_count(), refused_before);
}

TEST(ClusterSecret, WrongSecretGetsNothingThroughAndIsLogged) {
  LogCapture log;
  SecuredRouter server(ClusterSecret("s3cret-right"), "test-server-wrong");
  const int64_t refused_before = refused_peer_count();
  zmq::socket_t stranger = dealer(server.endpoint(), [](zmq::socket_t& s) {
    secure_client_socket(s, ClusterSecret("s3cret-wrong"));
  });
  stranger.send(zmq::str_buffer("register me"), zmq::send_flags::none);
  EXPECT_EQ(server.receive_and_echo(std::chrono::milliseconds(1500)), "");
  EXPECT_TRUE(wait_refused(refused_before, kPatience));
  EXPECT_TRUE(log.wait_for("test-server-wrong: refused a peer at 127.0.0.1", kPatience))
      << log.text();
  EXPECT_THAT(log.text(), HasSubstr("a different --cluster-secret"));
  EXPECT_THAT(log.text(), Not(HasSubstr("s3cret")));  // never the secret itself
}

TEST(ClusterSecret, PlainZeroMqClientGetsNothingThroughAndIsLogged) {
  LogCapture log;
  SecuredRouter server(ClusterSecret("s3cret-right"), "test-server-plain");
  const int64_t refused_before = refused_peer_count();
  zmq::socket_t stranger = dealer(server.endpoint());
  stranger.send(zmq::str_buffer("register me"), zmq::send_flags::none);
  EXPECT_EQ(server.receive_and_echo(std::chrono::milliseconds(1500)), "");
  EXPECT_TRUE(wait_refused(refused_before, kPatience));
  // (When the stranger hangs up first, its address may be gone before it could be read.)
  EXPECT_TRUE(log.wait_for("test-server-plain: refused a peer at ", kPatience)) << log.text();
  // Which side notices the mechanism mismatch first is a race: the refusal reads either way.
  EXPECT_THAT(log.text(), ::testing::AnyOf(HasSubstr("did not use CURVE security"),
                                           HasSubstr("the connection ended during the handshake")));
}

TEST(ClusterSecret, RawTcpGarbageGetsNothingThroughAndIsLogged) {
  LogCapture log;
  const ClusterSecret secret("s3cret-right");
  SecuredRouter server(secret, "test-server-raw");
  const int64_t refused_before = refused_peer_count();
  send_raw_tcp(server.port(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  // Garbage that starts like a ZMTP greeting, too.
  send_raw_tcp(server.port(), std::string("\xff\0\0\0\0\0\0\0\0\x7f\x03\x00NULL", 16) +
                                  std::string(48, '\0') + "garbage");
  EXPECT_EQ(server.receive_and_echo(std::chrono::milliseconds(500)), "");
  EXPECT_TRUE(wait_refused(refused_before + 1, kPatience))
      << refused_peer_count() - refused_before << " refused\n"
      << log.text();
  EXPECT_TRUE(log.wait_for("test-server-raw: refused a peer", kPatience)) << log.text();
  // The server still serves members afterwards.
  zmq::socket_t client =
      dealer(server.endpoint(), [&](zmq::socket_t& s) { secure_client_socket(s, secret); });
  client.send(zmq::str_buffer("still there?"), zmq::send_flags::none);
  EXPECT_EQ(server.receive_and_echo(kPatience), "still there?");
}

// A client that knows the server's public key (say, it leaked) but not the secret: the CURVE
// handshake completes, and the ZAP handler refuses its key.
TEST(ClusterSecret, KnownServerKeyWithoutTheSecretIsRefusedByZap) {
  LogCapture log;
  const ClusterSecret secret("s3cret-right");
  SecuredRouter server(secret, "test-server-zap");
  const int64_t refused_before = refused_peer_count();
  char pub[41] = {}, sec[41] = {};
  ASSERT_EQ(zmq_curve_keypair(pub, sec), 0);
  zmq::socket_t stranger = dealer(server.endpoint(), [&](zmq::socket_t& s) {
    s.set(zmq::sockopt::curve_serverkey,
          zmq::buffer(secret.public_key().data(), secret.public_key().size()));
    s.set(zmq::sockopt::curve_publickey, std::string(pub));
    s.set(zmq::sockopt::curve_secretkey, std::string(sec));
  });
  stranger.send(zmq::str_buffer("register me"), zmq::send_flags::none);
  EXPECT_EQ(server.receive_and_echo(std::chrono::milliseconds(1500)), "");
  EXPECT_TRUE(wait_refused(refused_before, kPatience));
  EXPECT_TRUE(log.wait_for("test-server-zap: refused a peer at 127.0.0.1", kPatience))
      << log.text();
  EXPECT_THAT(log.text(), HasSubstr("its CURVE key is not the cluster's"));
}

TEST(ClusterSecret, SecuringNeedsASecret) {
  zmq::socket_t s(zmq_context(), zmq::socket_type::router);
  EXPECT_THROW(secure_server_socket(s, ClusterSecret(), "x"), Error);
  EXPECT_THROW(secure_client_socket(s, ClusterSecret()), Error);
}

// The coordinator and its client: members register; a client with another secret, or none,
// fails after its --dist-timeout naming --cluster-secret, and the coordinator logs it and goes on.
TEST(ClusterSecretCoordinator, OnlyMembersJoin) {
  LogCapture log;
  CoordinatorOptions o;
  o.host = "127.0.0.1";
  o.heartbeat_interval = Millis(100);
  o.heartbeat_timeout = Millis(2000);
  o.secret = ClusterSecret("cluster-a");
  Coordinator coordinator(o);

  auto client_options = [&](ClusterSecret secret) {
    CoordinatorClientOptions c;
    c.address = coordinator.endpoint();
    c.dist_timeout = Millis(3000);
    c.secret = std::move(secret);
    return c;
  };
  for (ClusterSecret wrong : {ClusterSecret("cluster-b"), ClusterSecret()}) {
    const int64_t refused_before = refused_peer_count();
    const auto t0 = Clock::now();
    try {
      CoordinatorClient stranger(client_options(wrong));
      ADD_FAILURE() << "a client with " << (wrong.empty() ? "no" : "a wrong")
                    << " secret reached the coordinator";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("did not accept")) << log.text();
      EXPECT_THAT(e.what(), HasSubstr("--cluster-secret"));
      EXPECT_THAT(e.what(), HasSubstr(coordinator.endpoint()));
    }
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(10));
    EXPECT_TRUE(wait_refused(refused_before, kPatience)) << log.text();
  }
  EXPECT_TRUE(log.wait_for("coordinator: refused a peer at 127.0.0.1", kPatience)) << log.text();
  EXPECT_TRUE(coordinator.rank_states().empty());

  std::unique_ptr<CoordinatorClient> member_ptr;
  try {
    CoordinatorClientOptions c = client_options(ClusterSecret("cluster-a"));
    c.dist_timeout = kPatience;
    member_ptr = std::make_unique<CoordinatorClient>(c);
  } catch (const Error& e) {
    FAIL() << e.what() << "\n" << log.text();
  }
  CoordinatorClient& member = *member_ptr;
  RankInfo info;
  info.global_rank = 0;
  info.host = "127.0.0.1";
  info.pid = getpid();
  member.register_rank(info);
  member.set("k", "v");
  EXPECT_EQ(member.get("k", Millis(1000)), "v");
  ASSERT_EQ(coordinator.rank_states().size(), 1u);
  EXPECT_THAT(log.text(), Not(HasSubstr("cluster-a")));
  EXPECT_THAT(log.text(), Not(HasSubstr("cluster-b")));
}

}  // namespace
}  // namespace dpserve
