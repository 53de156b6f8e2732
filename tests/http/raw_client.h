#pragma once
// Raw TCP clients for the reliability tests: connections that send what a test says when it says
// so (a request cut anywhere, one byte at a time), read only when asked, and report when the
// server closed them.

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <optional>
#include <string>

namespace dpserve_test {

class RawConnection {
 public:
  using Clock = std::chrono::steady_clock;

  // Connects to 127.0.0.1:port; `rcvbuf` > 0 shrinks the receive buffer first (a client that
  // stops reading then blocks the server's writes sooner).
  explicit RawConnection(int port, int rcvbuf = 0) : opened_(Clock::now()) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  bool connected() const { return connected_; }
  // Sends all of `bytes`; false when the connection is gone.
  bool send(const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }
  // Reads what has arrived, waiting up to `wait_ms` for the first bytes. Notes the time the
  // server closed the connection (end of stream or a reset) and returns false then.
  bool poll_read(int wait_ms = 0) {
    if (closed_at_) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, wait_ms) <= 0) return true;
    char buf[65536];
    for (;;) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        received_.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      if (n < 0 && errno == EINTR) continue;
      closed_at_ = Clock::now();
      return false;
    }
  }
  // Reads until the server closes the connection or `timeout` passes; true when it closed.
  bool wait_closed(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (poll_read(50)) {
      if (Clock::now() >= deadline) return false;
    }
    return true;
  }
  // Closes our side now (a client going away).
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // Seconds from connecting to the server closing the connection, if it did.
  std::optional<double> closed_after() const {
    if (!closed_at_) return std::nullopt;
    return std::chrono::duration<double>(*closed_at_ - opened_).count();
  }
  // Everything received so far.
  const std::string& received() const { return received_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
  Clock::time_point opened_;
  std::optional<Clock::time_point> closed_at_;
  std::string received_;
};

}  // namespace dpserve_test
