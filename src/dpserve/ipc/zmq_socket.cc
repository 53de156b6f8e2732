#include "dpserve/ipc/zmq_socket.h"

#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>

#include "dpserve/common/errors.h"

namespace dpserve {

namespace {

using Clock = std::chrono::steady_clock;

// Milliseconds left until `deadline` for zmq_poll (-1 = forever, never negative otherwise).
long remaining_ms(std::optional<Clock::time_point> deadline) {
  if (!deadline) return -1;
  const auto left = std::chrono::ceil<Millis>(*deadline - Clock::now()).count();
  return left > 0 ? static_cast<long>(left) : 0;
}

std::optional<Clock::time_point> deadline_after(Millis timeout) {
  if (timeout.count() < 0) return std::nullopt;
  return Clock::now() + timeout;
}

// zmq_poll retried across EINTR until the deadline; returns the number of ready items.
int poll_items(zmq_pollitem_t* items, size_t n, Millis timeout) {
  const auto deadline = deadline_after(timeout);
  while (true) {
    const int rc = zmq_poll(items, static_cast<int>(n), remaining_ms(deadline));
    if (rc >= 0) return rc;
    if (zmq_errno() == EINTR) continue;
    throw_error("zmq poll failed: {}", zmq_strerror(zmq_errno()));
  }
}

}  // namespace

zmq::context_t& zmq_context() {
  static std::mutex mu;
  static zmq::context_t* context = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (context == nullptr || owner != getpid()) {
    // After a fork the parent's context (and its I/O threads) is unusable here: leave it alone.
    context = new zmq::context_t(1);
    owner = getpid();
  }
  return *context;
}

std::string ipc_endpoint(std::string_view dir, std::string_view name) {
  std::string path = std::string(dir) + "/" + std::string(name);
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    throw_error(
        "ipc socket path '{}' is {} bytes, longer than the {} a Unix socket allows; set "
        "XDG_RUNTIME_DIR or TMPDIR to a shorter directory",
        path, path.size(), sizeof(sockaddr_un::sun_path) - 1);
  }
  return "ipc://" + path;
}

MessageSocket::MessageSocket(zmq::socket_type type, zmq::context_t& context)
    : socket_(context, type) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::sndhwm, 0);
  socket_.set(zmq::sockopt::rcvhwm, 0);
}

void MessageSocket::bind(const std::string& endpoint) {
  try {
    socket_.bind(endpoint);
  } catch (const zmq::error_t& e) {
    throw_error("cannot bind a socket to {}: {}", endpoint, e.what());
  }
  endpoint_ = endpoint;
}

std::string MessageSocket::bound_endpoint() { return socket_.get(zmq::sockopt::last_endpoint); }

void MessageSocket::connect(const std::string& endpoint) {
  try {
    socket_.connect(endpoint);
  } catch (const zmq::error_t& e) {
    throw_error("cannot connect a socket to {}: {}", endpoint, e.what());
  }
  endpoint_ = endpoint;
}

void MessageSocket::set_linger(Millis linger) {
  socket_.set(zmq::sockopt::linger, static_cast<int>(linger.count()));
}

bool MessageSocket::wait_for(short events, Millis timeout) {
  zmq_pollitem_t item{socket_.handle(), 0, events, 0};
  return poll_items(&item, 1, timeout) > 0;
}

bool MessageSocket::send_bytes(std::string_view bytes, Millis timeout) {
  const auto deadline = deadline_after(timeout);
  while (true) {
    if (!wait_for(ZMQ_POLLOUT, Millis(remaining_ms(deadline)))) return false;
    try {
      if (socket_.send(zmq::const_buffer(bytes.data(), bytes.size()), zmq::send_flags::dontwait)) {
        return true;
      }
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) throw_error("send on {} failed: {}", endpoint_, e.what());
    }
    if (deadline && Clock::now() >= *deadline) return false;
  }
}

bool MessageSocket::send(const Message& msg, Millis timeout) {
  return send_bytes(encode(msg), timeout);
}

std::optional<std::string> MessageSocket::recv_bytes(Millis timeout) {
  const auto deadline = deadline_after(timeout);
  while (true) {
    if (!wait_for(ZMQ_POLLIN, Millis(remaining_ms(deadline)))) return std::nullopt;
    zmq::message_t frame;
    try {
      if (socket_.recv(frame, zmq::recv_flags::dontwait)) return frame.to_string();
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) throw_error("receive on {} failed: {}", endpoint_, e.what());
    }
    if (deadline && Clock::now() >= *deadline) return std::nullopt;
  }
}

std::optional<Message> MessageSocket::recv(Millis timeout) {
  std::optional<std::string> bytes = recv_bytes(timeout);
  if (!bytes) return std::nullopt;
  return decode(*bytes);
}

bool MessageSocket::readable() { return wait_for(ZMQ_POLLIN, Millis(0)); }

void MessageSocket::close() { socket_.close(); }

std::vector<size_t> poll_readable(std::span<MessageSocket* const> sockets, Millis timeout) {
  std::vector<zmq_pollitem_t> items;
  items.reserve(sockets.size());
  for (MessageSocket* s : sockets) items.push_back({s->raw().handle(), 0, ZMQ_POLLIN, 0});
  std::vector<size_t> ready;
  if (poll_items(items.data(), items.size(), timeout) == 0) return ready;
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].revents & ZMQ_POLLIN) ready.push_back(i);
  }
  return ready;
}

}  // namespace dpserve
