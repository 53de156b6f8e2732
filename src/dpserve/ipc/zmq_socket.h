#pragma once
// Thin helpers over cppzmq for dpserve's process layout: a process-wide context, sockets that send
// and receive encoded Messages (ipc/io_struct.h) with timeouts, and polling over several sockets.
//
// Layout (after SGLang's PortArgs, inside a RuntimeDir): the main process binds a PUSH socket at
// `scheduler_input` and a PULL socket at `detokenizer`; the scheduler connects a PULL to the first
// and a PUSH to the second. Binding in the parent before a child starts means the endpoints exist
// by the time the child connects (ZeroMQ also queues a connect until the peer binds).
//
// Sockets are not thread-safe: use each from one thread at a time (ZeroMQ's rule). Every socket
// is created with linger 0 (closing never blocks; unsent messages to a dead peer are dropped) and
// unlimited high-water marks (like SGLang), so sends only block while no peer is connected.

#include <chrono>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

#include "dpserve/ipc/io_struct.h"

namespace dpserve {

// A timeout; negative waits forever.
using Millis = std::chrono::milliseconds;

// The process-wide ZeroMQ context. It is created on first use and never destroyed (so that exit
// never waits on a socket somebody forgot to close); a process forked from the creator gets a
// context of its own on its first call.
zmq::context_t& zmq_context();

// "ipc://<dir>/<name>"; throws dpserve::Error when the path is too long for a Unix socket.
std::string ipc_endpoint(std::string_view dir, std::string_view name);

class MessageSocket {
 public:
  // A socket of `type` (zmq::socket_type::push, pull, pair, dealer, ...) on `context`.
  explicit MessageSocket(zmq::socket_type type, zmq::context_t& context = zmq_context());
  MessageSocket(MessageSocket&&) = default;
  MessageSocket& operator=(MessageSocket&&) = default;

  // Binds to an endpoint ("ipc://...", "tcp://host:port"); throws dpserve::Error naming it.
  void bind(const std::string& endpoint);
  // Connects to an endpoint; throws dpserve::Error naming it.
  void connect(const std::string& endpoint);
  // Sets how long close waits to deliver pending messages (default 0; -1 = until delivered).
  void set_linger(Millis linger);

  // Sends one frame; false when it could not be queued within `timeout` (no peer yet).
  bool send_bytes(std::string_view bytes, Millis timeout = Millis(-1));
  // Encodes and sends a message; false on timeout as send_bytes.
  bool send(const Message& msg, Millis timeout = Millis(-1));
  // Receives one frame; nullopt when none arrives within `timeout`.
  std::optional<std::string> recv_bytes(Millis timeout = Millis(-1));
  // Receives and decodes one message; nullopt on timeout; dpserve::Error on malformed bytes.
  std::optional<Message> recv(Millis timeout = Millis(-1));

  // True when a frame can be received now without blocking.
  bool readable();
  // Closes the socket (also done by the destructor).
  void close();
  // The endpoint of the last bind or connect.
  const std::string& endpoint() const { return endpoint_; }
  // The endpoint the last bind really got ("tcp://0.0.0.0:41234" for a bind to port 0).
  std::string bound_endpoint();
  // The underlying cppzmq socket, for options not wrapped here.
  zmq::socket_t& raw() { return socket_; }

 private:
  bool wait_for(short events, Millis timeout);

  zmq::socket_t socket_;
  std::string endpoint_;
};

// Waits until at least one socket has a frame to receive, or the timeout passes; returns the
// indices of the readable sockets (empty on timeout).
std::vector<size_t> poll_readable(std::span<MessageSocket* const> sockets, Millis timeout);

}  // namespace dpserve
