#include "dpserve/http/connection.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <thread>

#include <spdlog/spdlog.h>

namespace dpserve {

namespace {

using Clock = std::chrono::steady_clock;

// A wait is cut into slices this long so that server shutdown is noticed.
constexpr std::chrono::milliseconds kStopCheck(100);
constexpr size_t kReadBuffer = 4096;

// The connection served by this thread, while its requests run.
thread_local ConnectionStream* t_connection = nullptr;

struct ConnectionScope {
  explicit ConnectionScope(ConnectionStream* s) { t_connection = s; }
  ~ConnectionScope() { t_connection = nullptr; }
  ConnectionScope(const ConnectionScope&) = delete;
  ConnectionScope& operator=(const ConnectionScope&) = delete;
};

void address_of(int fd, bool remote, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  const int rc = remote ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
                        : ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  if (rc != 0) return;
  char host[NI_MAXHOST];
  char serv[NI_MAXSERV];
  if (::getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
    ip = host;
    port = std::atoi(serv);
  }
}

double seconds(std::chrono::milliseconds d) { return static_cast<double>(d.count()) / 1000.0; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// ThreadPerTaskQueue

ThreadPerTaskQueue::ThreadPerTaskQueue(size_t max_threads)
    : max_threads_(std::max<size_t>(max_threads, 1)) {}

ThreadPerTaskQueue::~ThreadPerTaskQueue() { shutdown(); }

void ThreadPerTaskQueue::enqueue(std::function<void()> fn) {
  std::unique_lock<std::mutex> lock(mu_);
  if (threads_ >= max_threads_) {
    jobs_.push_back(std::move(fn));
    return;
  }
  ++threads_;
  peak_ = std::max(peak_, threads_);
  // Started outside the lock: creating a thread (its stack mapping) is slow under load, and
  // threads that end must not queue behind it.
  lock.unlock();
  auto job = std::make_shared<std::function<void()>>(std::move(fn));
  try {
    // Detached: shutdown() waits for the count to reach zero instead of joining.
    std::thread([this, job] { run(std::move(*job)); }).detach();
  } catch (const std::system_error& e) {
    spdlog::error("http: cannot start a connection thread ({}); the connection waits", e.what());
    lock.lock();
    --threads_;
    jobs_.push_back(std::move(*job));
  }
}

void ThreadPerTaskQueue::run(std::function<void()> job) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    lock.unlock();
    job();
    job = nullptr;  // the job's captures die outside the lock
    lock.lock();
    if (jobs_.empty()) break;
    job = std::move(jobs_.front());  // max_threads were busy: this thread takes a waiting job
    jobs_.pop_front();
  }
  --threads_;
  // Notified under the lock: shutdown() cannot return (and the queue die) before it is released.
  exit_cv_.notify_all();
}

void ThreadPerTaskQueue::shutdown() {
  std::unique_lock<std::mutex> lock(mu_);
  exit_cv_.wait(lock, [&] { return threads_ == 0; });
}

size_t ThreadPerTaskQueue::num_threads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return threads_;
}

size_t ThreadPerTaskQueue::peak_threads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}

// ---------------------------------------------------------------------------------------------
// ConnectionStream

ConnectionStream::ConnectionStream(int fd, const ConnectionLimits& limits,
                                   std::function<bool()> stopping)
    : fd_(fd),
      limits_(limits),
      stopping_(std::move(stopping)),
      request_deadline_(Clock::now() + limits.request_timeout),
      buf_(kReadBuffer) {
  address_of(fd_, /*remote=*/true, remote_ip_, remote_port_);
  address_of(fd_, /*remote=*/false, local_ip_, local_port_);
}

ConnectionStream::WaitResult ConnectionStream::wait(short events,
                                                    Clock::time_point deadline) const {
  for (;;) {
    if (stopping_ && stopping_()) return WaitResult::kStopping;
    const auto now = Clock::now();
    if (now >= deadline) return WaitResult::kDeadline;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
    pollfd p{fd_, events, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(std::min(left, kStopCheck).count()));
    if (rc < 0) {
      if (errno == EINTR) continue;
      return WaitResult::kError;
    }
    if (rc == 0) continue;
    // POLLHUP / POLLERR: the next recv / send reports what happened.
    return WaitResult::kReady;
  }
}

bool ConnectionStream::wait_for_request() {
  if (buf_begin_ < buf_end_) return true;  // a pipelined request is buffered already
  return wait(POLLIN, Clock::now() + limits_.keep_alive_timeout) == WaitResult::kReady;
}

void ConnectionStream::start_request() {
  request_deadline_ = Clock::now() + limits_.request_timeout;
}

bool ConnectionStream::is_readable() const {
  if (buf_begin_ < buf_end_) return true;
  const WaitResult r = wait(POLLIN, request_deadline_);
  if (r == WaitResult::kDeadline) timed_out_ = Timeout::kRequest;
  return r == WaitResult::kReady;
}

ssize_t ConnectionStream::read(char* ptr, size_t size) {
  if (buf_begin_ == buf_end_) {
    if (!is_readable()) return -1;
    ssize_t n;
    do {
      n = ::recv(fd_, buf_.data(), buf_.size(), MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return read(ptr, size);  // spurious readiness: wait again (bounded by the deadline)
    }
    if (n <= 0) return n;  // 0: the client closed; -1: a socket error
    buf_begin_ = 0;
    buf_end_ = static_cast<size_t>(n);
  }
  const size_t n = std::min(size, buf_end_ - buf_begin_);
  std::memcpy(ptr, buf_.data() + buf_begin_, n);
  buf_begin_ += n;
  return static_cast<ssize_t>(n);
}

bool ConnectionStream::peer_alive() const {
  pollfd p{fd_, POLLIN, 0};
  if (::poll(&p, 1, 0) <= 0) return true;  // nothing to read: still connected
  char c;
  const ssize_t n = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return true;  // bytes of a next request
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
}

bool ConnectionStream::is_writable() const {
  if (!peer_alive()) return false;
  const WaitResult r = wait(POLLOUT, Clock::now() + limits_.write_timeout);
  if (r == WaitResult::kDeadline) timed_out_ = Timeout::kWrite;
  return r == WaitResult::kReady;
}

ssize_t ConnectionStream::write(const char* ptr, size_t size) {
  const auto deadline = Clock::now() + limits_.write_timeout;
  size_t sent = 0;
  while (sent < size) {
    const ssize_t n = ::send(fd_, ptr + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      const WaitResult r = wait(POLLOUT, deadline);
      if (r == WaitResult::kReady) continue;
      if (r == WaitResult::kDeadline) timed_out_ = Timeout::kWrite;
    }
    return -1;  // the client went away, the deadline passed or the server is stopping
  }
  return static_cast<ssize_t>(size);
}

void ConnectionStream::get_remote_ip_and_port(std::string& ip, int& port) const {
  ip = remote_ip_;
  port = remote_port_;
}

void ConnectionStream::get_local_ip_and_port(std::string& ip, int& port) const {
  ip = local_ip_;
  port = local_port_;
}

// ---------------------------------------------------------------------------------------------
// ConnectionServer

ConnectionServer::ConnectionServer(ConnectionLimits limits) : limits_(limits) {
  const size_t max_threads = limits_.max_threads;
  new_task_queue = [max_threads] { return new ThreadPerTaskQueue(max_threads); };
  // httplib also puts these on every accepted socket (SO_RCVTIMEO / SO_SNDTIMEO); our stream
  // never blocks in recv / send, so they are only a backstop.
  const auto secs = [](std::chrono::milliseconds d) {
    return std::max<time_t>(std::chrono::ceil<std::chrono::seconds>(d).count(), 1);
  };
  set_read_timeout(secs(limits_.request_timeout));
  set_write_timeout(secs(limits_.write_timeout));
  set_keep_alive_timeout(secs(limits_.keep_alive_timeout));
}

bool ConnectionServer::process_and_close_socket(int sock) {
  ConnectionStream strm(sock, limits_, [this] { return svr_sock_ == INVALID_SOCKET; });
  bool ok = false;
  {
    ConnectionScope scope(&strm);
    for (size_t left = keep_alive_max_count_; left > 0; --left) {
      if (svr_sock_ == INVALID_SOCKET || !strm.wait_for_request()) break;
      strm.start_request();
      bool connection_closed = false;
      ok = process_request(strm, /*close_connection=*/left == 1, connection_closed, nullptr);
      if (!ok || connection_closed || strm.timed_out() != ConnectionStream::Timeout::kNone) break;
    }
  }
  switch (strm.timed_out()) {
    case ConnectionStream::Timeout::kRequest:
      spdlog::info(
          "http: closing the connection of {}: its request did not arrive within {} s "
          "(--http-timeout)",
          strm.peer(), seconds(limits_.request_timeout));
      break;
    case ConnectionStream::Timeout::kWrite:
      spdlog::info(
          "http: closing the connection of {}: it read nothing of its response for {} s "
          "(--http-timeout)",
          strm.peer(), seconds(limits_.write_timeout));
      break;
    case ConnectionStream::Timeout::kNone:
      break;
  }
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ok;
}

bool client_disconnected() { return t_connection != nullptr && !t_connection->peer_alive(); }

bool request_timed_out() {
  return t_connection != nullptr &&
         t_connection->timed_out() == ConnectionStream::Timeout::kRequest;
}

}  // namespace dpserve
