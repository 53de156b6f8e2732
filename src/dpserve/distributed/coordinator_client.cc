#include "dpserve/distributed/coordinator_client.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <future>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/distributed/coordinator_protocol.h"
#include "dpserve/ipc/zmq_socket.h"

namespace dpserve {

namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string this_host() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

// Why nothing answers at `address` ("tcp://host:port"): a plain TCP connect tells refused,
// unreachable or unknown host apart from a port that is open but silent.
std::string probe_cause(const std::string& address) {
  std::string rest = address.starts_with("tcp://") ? address.substr(6) : address;
  const size_t colon = rest.rfind(':');
  if (colon == std::string::npos) return "the address has no port";
  std::string host = rest.substr(0, colon), port = rest.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return fmt::format("cannot resolve '{}': {}", host, gai_strerror(rc));
  }
  std::string cause = "no address to try";
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    const int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    int err = 0;
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        if (poll(&p, 1, 1000) <= 0) {
          err = ETIMEDOUT;
        } else {
          socklen_t len = sizeof(err);
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        }
      }
    }
    ::close(fd);
    if (err == 0) {
      cause = "the port accepts TCP connections but nothing answers as a dpserve coordinator";
      break;
    }
    cause = std::strerror(err);
  }
  freeaddrinfo(res);
  return cause;
}

}  // namespace

// The I/O thread and what it shares with callers (under `mu`).
struct CoordinatorClient::Io {
  struct Pending {
    std::promise<CoordReply> promise;
    CoordOp op;
    std::optional<Clock::time_point> deadline;
  };

  const CoordinatorClientOptions& options;
  zmq::socket_t dealer;
  zmq::socket_t monitor;  // PAIR receiving the DEALER's connect / disconnect events
  int wake_fd = -1;
  std::thread thread;

  std::mutex mu;
  std::deque<std::string> outgoing;  // encoded requests for the I/O thread to send
  std::map<uint64_t, Pending> pending;
  uint64_t next_id = 1;
  bool stopping = false;
  std::string lost_reason;  // set once the coordinator is lost or shut down
  std::string label = fmt::format("pid {}", getpid());
  Millis heartbeat_interval{0}, heartbeat_timeout{0};  // from the hello answer
  bool hello_done = false;
  int refused_handshakes = 0;  // connections the coordinator dropped during the handshake

  explicit Io(const CoordinatorClientOptions& o) : options(o) {}

  void wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd, &one, sizeof(one));
  }

  // Marks the coordinator lost (under mu): fails every call in flight. Returns false when it
  // already was.
  bool mark_lost(const std::string& reason) {
    if (!lost_reason.empty()) return false;
    lost_reason = reason;
    for (auto& [_, p] : pending) p.promise.set_exception(std::make_exception_ptr(Error(reason)));
    pending.clear();
    return true;
  }

  void run();

  // Stops the I/O thread (failing calls still in flight) and closes the sockets.
  void close() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
    }
    if (thread.joinable()) {
      wake();
      thread.join();
    }
    // Stop the monitor first: ZeroMQ's I/O thread blocks sending an event (a reconnection's
    // handshake failing, say) to a monitor whose reader is gone, which hangs every socket.
    if (dealer.handle() != nullptr) zmq_socket_monitor(dealer.handle(), nullptr, 0);
    monitor.close();
    dealer.close();
    if (wake_fd >= 0) ::close(wake_fd);
    wake_fd = -1;
  }
};

void CoordinatorClient::Io::run() {
  Clock::time_point last_rx = Clock::now(), next_heartbeat = Clock::now();
  Clock::time_point last_check = Clock::now();  // when this loop last looked at the time
  bool connected = false;
  while (true) {
    std::vector<std::string> to_send;
    std::function<void()> callback;
    Clock::time_point now = Clock::now();
    long timeout_ms = 200;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (stopping) break;
      to_send.assign(std::make_move_iterator(outgoing.begin()),
                     std::make_move_iterator(outgoing.end()));
      outgoing.clear();
      Clock::time_point wake_at = now + Millis(200);
      if (hello_done && lost_reason.empty()) {
        wake_at = std::min({wake_at, next_heartbeat, last_rx + heartbeat_timeout});
      }
      for (const auto& [_, p] : pending) {
        if (p.deadline) wake_at = std::min(wake_at, *p.deadline);
      }
      timeout_ms = std::max<long>(0, std::chrono::ceil<Millis>(wake_at - now).count());
    }
    for (const std::string& bytes : to_send) {
      try {
        dealer.send(zmq::buffer(bytes), zmq::send_flags::dontwait);
      } catch (const zmq::error_t& e) {
        spdlog::warn("coordinator client: send to {} failed: {}", options.address, e.what());
      }
    }
    if (!to_send.empty()) timeout_ms = 0;  // look again at once: more may have been queued
    zmq_pollitem_t items[3] = {{dealer.handle(), 0, ZMQ_POLLIN, 0},
                               {monitor.handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, wake_fd, ZMQ_POLLIN, 0}};
    if (zmq_poll(items, 3, timeout_ms) < 0 && zmq_errno() != EINTR) {
      spdlog::error("coordinator client: poll failed: {}", zmq_strerror(zmq_errno()));
      break;
    }
    if (items[2].revents & ZMQ_POLLIN) {
      uint64_t n;
      [[maybe_unused]] ssize_t r = ::read(wake_fd, &n, sizeof(n));
    }
    std::vector<CoordReply> replies;
    for (zmq::message_t frame; dealer.recv(frame, zmq::recv_flags::dontwait);) {
      try {
        replies.push_back(decode_reply(frame.to_string()));
      } catch (const Error& e) {
        spdlog::warn("coordinator client: dropped a message from {}: {}", options.address,
                     e.what());
      }
    }
    bool disconnected = false;
    for (zmq::message_t event; monitor.recv(event, zmq::recv_flags::dontwait);) {
      uint16_t id = 0;
      if (event.size() >= sizeof(id)) std::memcpy(&id, event.data(), sizeof(id));
      zmq::message_t endpoint;
      if (event.more()) (void)monitor.recv(endpoint, zmq::recv_flags::none);
      if (id == ZMQ_EVENT_CONNECTED) connected = true;
      if (id == ZMQ_EVENT_DISCONNECTED && connected) disconnected = true;
      if (id == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL || id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ||
          id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
        // Without the cluster's secret the coordinator drops the connection mid-handshake (once
        // connected, a failed reconnection is the coordinator going away, reported as lost).
        std::lock_guard<std::mutex> lock(mu);
        if (!hello_done && refused_handshakes++ == 0) {
          spdlog::warn(
              "{}: the coordinator at {} did not accept the handshake; is --cluster-secret "
              "the same as node 0's? (retrying until --dist-timeout)",
              label, options.address);
        }
      }
    }
    now = Clock::now();
    std::unique_lock<std::mutex> lock(mu);
    if (!replies.empty()) last_rx = now;
    if (hello_done && now - last_check > heartbeat_timeout / 2) {
      // This process was suspended (SIGSTOP, a debugger, swapping): the silence is ours, not the
      // coordinator's. Ask again before judging it; the answer may be that we were declared dead.
      last_rx = now;
      next_heartbeat = now;
    }
    last_check = now;
    for (CoordReply& r : replies) {
      if (r.kind == CoordReplyKind::kShutdown) {
        if (mark_lost(
                fmt::format("the coordinator at {} shut down: {}", options.address, r.error))) {
          spdlog::warn("{}: the coordinator asked to shut down: {}", label, r.error);
          if (options.on_shutdown)
            callback = [this, reason = r.error] { options.on_shutdown(reason); };
        }
        continue;
      }
      auto it = pending.find(r.id);
      if (it == pending.end()) {
        // A heartbeat's answer; an error there means the coordinator gave up on this rank.
        if (r.id == 0 && !r.ok && mark_lost(r.error)) {
          spdlog::error("{}: {}", label, r.error);
          if (options.on_lost) callback = [this, reason = r.error] { options.on_lost(reason); };
        }
        continue;
      }
      if (it->second.op == CoordOp::kHello && r.ok) {
        heartbeat_interval = Millis(r.heartbeat_interval_ms);
        heartbeat_timeout = Millis(r.heartbeat_timeout_ms);
        hello_done = true;
        next_heartbeat = now + heartbeat_interval;
      }
      it->second.promise.set_value(std::move(r));
      pending.erase(it);
    }
    if (hello_done && lost_reason.empty()) {
      std::string why;
      if (disconnected) {
        why = fmt::format("lost the coordinator at {}: the connection closed", options.address);
      } else if (now - last_rx > heartbeat_timeout) {
        why = fmt::format("lost the coordinator at {}: no answer for {:.1f} s", options.address,
                          seconds(now - last_rx));
      }
      if (!why.empty() && mark_lost(why)) {
        spdlog::error("{}: {}", label, why);
        if (options.on_lost) callback = [this, why] { options.on_lost(why); };
      } else if (now >= next_heartbeat) {
        CoordRequest hb{.id = 0, .op = CoordOp::kHeartbeat};
        outgoing.push_back(encode_request(hb));
        next_heartbeat = now + heartbeat_interval;
      }
    }
    for (auto it = pending.begin(); it != pending.end();) {
      if (it->second.deadline && *it->second.deadline <= now) {
        it->second.promise.set_exception(std::make_exception_ptr(
            Error(fmt::format("no answer from the coordinator at {} to {}", options.address,
                              coord_op_name(it->second.op)))));
        it = pending.erase(it);
      } else {
        ++it;
      }
    }
    if (callback) {
      // Run outside the lock (the callback may read lost() or label()).
      lock.unlock();
      callback();
    }
  }
  std::lock_guard<std::mutex> lock(mu);
  for (auto& [_, p] : pending) {
    p.promise.set_exception(std::make_exception_ptr(Error("the coordinator client was closed")));
  }
  pending.clear();
}

CoordinatorClient::CoordinatorClient(CoordinatorClientOptions options)
    : options_(std::move(options)), io_(std::make_unique<Io>(options_)) {
  static std::atomic<uint64_t> counter{0};
  const std::string monitor_ep =
      fmt::format("inproc://coordinator-client-monitor-{}-{}", getpid(), counter++);
  io_->dealer = zmq::socket_t(zmq_context(), zmq::socket_type::dealer);
  io_->dealer.set(zmq::sockopt::linger, 0);
  io_->dealer.set(zmq::sockopt::sndhwm, 0);
  io_->dealer.set(zmq::sockopt::rcvhwm, 0);
  if (options_.address.find('[') != std::string::npos) io_->dealer.set(zmq::sockopt::ipv6, 1);
  if (!options_.secret.empty()) secure_client_socket(io_->dealer, options_.secret);
  const int events = ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED |
                     ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                     ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
  if (zmq_socket_monitor(io_->dealer.handle(), monitor_ep.c_str(), events) != 0) {
    throw_error("coordinator client: socket monitor failed: {}", zmq_strerror(zmq_errno()));
  }
  io_->monitor = zmq::socket_t(zmq_context(), zmq::socket_type::pair);
  io_->monitor.set(zmq::sockopt::linger, 0);
  io_->monitor.set(zmq::sockopt::rcvhwm, 0);  // a full monitor queue would block ZeroMQ's I/O
  io_->monitor.connect(monitor_ep);
  try {
    io_->dealer.connect(options_.address);
  } catch (const zmq::error_t& e) {
    throw_error("cannot reach the coordinator at {}: {}", options_.address, e.what());
  }
  io_->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (io_->wake_fd < 0) throw_error("coordinator client: eventfd failed: {}", strerror(errno));
  io_->thread = std::thread([this] { io_->run(); });

  CoordRequest hello{.op = CoordOp::kHello, .pid = getpid(), .host = this_host()};
  try {
    call(std::move(hello));
  } catch (const Error&) {
    io_->close();
    const int refused = io_->refused_handshakes;  // the I/O thread has stopped
    const std::string cause =
        refused > 0 ? fmt::format(
                          "the coordinator did not accept this rank ({} handshake{} refused); a "
                          "wrong --cluster-secret (it must be the same on every node) is the "
                          "likely cause",
                          refused, refused == 1 ? "" : "s")
                    : probe_cause(options_.address);
    const std::string msg =
        fmt::format("cannot reach the coordinator at {} after {:.1f} s: {}", options_.address,
                    options_.dist_timeout.count() / 1000.0, cause);
    spdlog::error("{}", msg);
    throw Error(msg);
  }
  spdlog::info("{}: connected to the coordinator at {} (heartbeat every {} ms)", label(),
               options_.address, heartbeat_interval().count());
}

CoordinatorClient::~CoordinatorClient() {
  if (registered_ && !lost()) {
    try {
      leave();
    } catch (const Error& e) {
      spdlog::warn("{}: leaving the coordinator failed: {}", label(), e.what());
    }
  }
  io_->close();
}

CoordReply CoordinatorClient::call(CoordRequest req) {
  DPSERVE_CHECK(std::this_thread::get_id() != io_->thread.get_id(),
                "a coordinator client callback called the client");
  std::future<CoordReply> result;
  {
    std::lock_guard<std::mutex> lock(io_->mu);
    if (!io_->lost_reason.empty()) throw Error(io_->lost_reason);
    req.id = io_->next_id++;
    std::optional<Clock::time_point> deadline;
    if (req.op == CoordOp::kHello) {
      deadline = Clock::now() + options_.dist_timeout;
    } else if (req.timeout_ms >= 0) {
      deadline = Clock::now() + Millis(req.timeout_ms) + io_->heartbeat_timeout;
    }
    Io::Pending& p = io_->pending[req.id];
    p.op = req.op;
    p.deadline = deadline;
    result = p.promise.get_future();
    io_->outgoing.push_back(encode_request(req));
  }
  io_->wake();
  CoordReply reply = result.get();  // the I/O thread always settles it (deadline, lost, close)
  if (!reply.ok) throw Error(reply.error);
  return reply;
}

void CoordinatorClient::register_rank(const RankInfo& info) {
  const std::string who = rank_label(info.global_rank, info.node_rank);
  call(CoordRequest{.op = CoordOp::kRegister, .rank = info});
  {
    std::lock_guard<std::mutex> lock(io_->mu);
    io_->label = who;
  }
  registered_ = true;
  spdlog::info("{}: registered with the coordinator at {}", who, options_.address);
}

void CoordinatorClient::leave() {
  if (!registered_) return;
  call(CoordRequest{.op = CoordOp::kLeave});
  registered_ = false;
  spdlog::info("{}: left the coordinator at {}", label(), options_.address);
}

std::vector<RankState> CoordinatorClient::rank_states() {
  return call(CoordRequest{.op = CoordOp::kRankStates}).ranks;
}

void CoordinatorClient::set(const std::string& key, const std::string& value) {
  call(CoordRequest{.op = CoordOp::kSet, .keys = {key}, .value = value});
}

std::string CoordinatorClient::get(const std::string& key, Millis timeout) {
  return call(CoordRequest{.op = CoordOp::kGet, .keys = {key}, .timeout_ms = timeout.count()})
      .value;
}

int64_t CoordinatorClient::add(const std::string& key, int64_t delta) {
  return call(CoordRequest{.op = CoordOp::kAdd, .keys = {key}, .number = delta}).number;
}

bool CoordinatorClient::check(const std::vector<std::string>& keys) {
  return call(CoordRequest{.op = CoordOp::kCheck, .keys = keys}).number != 0;
}

void CoordinatorClient::wait(const std::vector<std::string>& keys, Millis timeout) {
  call(CoordRequest{.op = CoordOp::kWait, .keys = keys, .timeout_ms = timeout.count()});
}

bool CoordinatorClient::delete_key(const std::string& key) {
  return call(CoordRequest{.op = CoordOp::kDelete, .keys = {key}}).number != 0;
}

void CoordinatorClient::barrier(const std::string& name, int n, Millis timeout) {
  call(CoordRequest{
      .op = CoordOp::kBarrier, .keys = {name}, .number = n, .timeout_ms = timeout.count()});
}

Millis CoordinatorClient::heartbeat_interval() const {
  std::lock_guard<std::mutex> lock(io_->mu);
  return io_->heartbeat_interval;
}

bool CoordinatorClient::lost() const {
  std::lock_guard<std::mutex> lock(io_->mu);
  return !io_->lost_reason.empty();
}

std::string CoordinatorClient::label() const {
  std::lock_guard<std::mutex> lock(io_->mu);
  return io_->label;
}

}  // namespace dpserve
