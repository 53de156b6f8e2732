#pragma once
// How dpserve's HTTP server runs its connections under cpp-httplib (Debian's 0.11, compiled).
//
// httplib's own socket stream applies its read and write timeouts to each system call, so a
// client that sends one byte every few seconds (slowloris) or reads one byte now and then holds
// a connection thread for ever, and its fixed thread pool lets a few hundred long streams starve
// every other request. ConnectionServer replaces the per-connection loop (httplib's
// process_and_close_socket, a virtual hook) with one over ConnectionStream, which bounds:
//   - the idle wait for a request on a kept-alive connection (keep_alive_timeout);
//   - the whole request, from its first byte to the end of its body (request_timeout): a client
//     that has not sent it all by then gets 408 (or nothing, mid request line) and is closed;
//   - every response write (write_timeout): a client that does not read for that long is cut
//     off; for a stream this ends the response, which drops its GenerateHandle and so aborts the
//     request in the scheduler and frees its KV pages.
// Every connection runs on a thread of its own (ThreadPerTaskQueue, up to max_threads at once), so
// long streams never starve short requests below that bound.
//
// The stream of the connection being served is thread-local while its handlers run, which lets a
// handler ask whether its client is still there (client_disconnected()).

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include <httplib.h>

namespace dpserve {

// Time and size bounds of the HTTP connections.
struct ConnectionLimits {
  std::chrono::milliseconds request_timeout{60000};    // a request's bytes must all arrive within
  std::chrono::milliseconds write_timeout{60000};      // the longest one response write may block
  std::chrono::milliseconds keep_alive_timeout{5000};  // idle wait for the next request
  size_t max_threads = 2048;                           // most connections served at once
};

// A TaskQueue that runs every job (a connection) on a thread of its own, started for it and
// ended with it, at most max_threads at once (more jobs wait in a queue for a thread to finish).
// Fresh threads rather than a pool: glibc gives every thread its own cache of freed blocks
// (tcache), and the long-lived threads of a pool serving hundreds of streams filled theirs up
// one by one (measured: 256 streaming clients grew the main process's RSS by 7 % in 5 minutes
// and kept growing; a thread that ends hands its cache and stack back, and RSS stays flat).
class ThreadPerTaskQueue : public httplib::TaskQueue {
 public:
  // Starts no thread yet.
  explicit ThreadPerTaskQueue(size_t max_threads);
  // Runs shutdown().
  ~ThreadPerTaskQueue() override;
  ThreadPerTaskQueue(const ThreadPerTaskQueue&) = delete;
  ThreadPerTaskQueue& operator=(const ThreadPerTaskQueue&) = delete;

  // Starts a thread for `fn`, or queues it while max_threads threads run.
  void enqueue(std::function<void()> fn) override;
  // Waits until every queued job ran and every thread ended.
  void shutdown() override;
  // Threads running now.
  size_t num_threads() const;
  // Most threads running at once so far.
  size_t peak_threads() const;

 private:
  void run(std::function<void()> job);

  const size_t max_threads_;
  mutable std::mutex mu_;
  std::condition_variable exit_cv_;         // a thread ended
  std::deque<std::function<void()>> jobs_;  // waiting for a thread (max_threads running)
  size_t threads_ = 0;
  size_t peak_ = 0;
};

// One client connection: httplib::Stream over the socket with the deadlines above. A wait
// also ends when `stopping` returns true (server shutdown).
class ConnectionStream : public httplib::Stream {
 public:
  // Why the connection was cut off.
  enum class Timeout { kNone, kRequest, kWrite };

  // Takes `fd` (an accepted socket) without owning it.
  ConnectionStream(int fd, const ConnectionLimits& limits, std::function<bool()> stopping);

  // True when bytes can be read before the request deadline.
  bool is_readable() const override;
  // True when a write can start within write_timeout and the client has not closed.
  bool is_writable() const override;
  // Reads up to `size` bytes; -1 once the request deadline passed.
  ssize_t read(char* ptr, size_t size) override;
  // Writes all `size` bytes within write_timeout, or returns -1.
  ssize_t write(const char* ptr, size_t size) override;
  // The client's address.
  void get_remote_ip_and_port(std::string& ip, int& port) const override;
  // This server's address on the connection.
  void get_local_ip_and_port(std::string& ip, int& port) const override;
  // The socket.
  int socket() const override { return fd_; }

  // Waits up to keep_alive_timeout for the next request's first byte; false when none came.
  bool wait_for_request();
  // Starts the request deadline (call right before a request is read).
  void start_request();
  // False once the client closed its side (or the socket failed). Never blocks.
  bool peer_alive() const;
  // Which deadline cut the connection off, if any.
  Timeout timed_out() const { return timed_out_; }
  // "address:port" of the client, for logs.
  std::string peer() const { return remote_ip_ + ":" + std::to_string(remote_port_); }

 private:
  enum class WaitResult { kReady, kDeadline, kStopping, kError };
  // Polls for `events` until `deadline` (or server shutdown).
  WaitResult wait(short events, std::chrono::steady_clock::time_point deadline) const;

  int fd_;
  ConnectionLimits limits_;
  std::function<bool()> stopping_;
  std::chrono::steady_clock::time_point request_deadline_;
  mutable Timeout timed_out_ = Timeout::kNone;
  std::vector<char> buf_;
  size_t buf_begin_ = 0;
  size_t buf_end_ = 0;
  std::string remote_ip_, local_ip_;
  int remote_port_ = -1, local_port_ = -1;
};

// httplib::Server whose connections run over ConnectionStream, each on its own thread.
class ConnectionServer : public httplib::Server {
 public:
  // Configures the limits and the thread pool.
  explicit ConnectionServer(ConnectionLimits limits);
  // The limits in use.
  const ConnectionLimits& limits() const { return limits_; }

 private:
  // httplib calls this (virtually) on a pool thread for every accepted socket.
  bool process_and_close_socket(int sock) override;

  ConnectionLimits limits_;
};

// True when the client of the request this thread is handling closed its connection; false
// outside an HTTP handler. Non-streaming handlers poll it to abort work nobody will receive.
bool client_disconnected();

// True when the request this thread is handling was cut off by the request deadline (its
// error answer is then 408).
bool request_timed_out();

}  // namespace dpserve
