#pragma once
// The coordinator: a small service on node 0 that every scheduler rank (on every node) connects
// to, the way JAX's coordination service or PyTorch's TCPStore serve theirs. It keeps
//   - the rank registry: who is there (node, global rank, host, pid, ZeroMQ endpoints) and a
//     fingerprint of model and parallel flags that must match the first registered rank's;
//   - a key-value store (set, blocking get, add, check, wait, delete), which also serves Gloo's
//     rendezvous (CoordinatorStore);
//   - named barriers;
//   - heartbeats: a rank silent for longer than heartbeat_timeout is declared dead (callback +
//     rank_states()); a rank that deregisters is "left", not dead;
//   - a shutdown broadcast that node 0 uses to stop the other nodes.
//
// It serves one ROUTER socket on tcp://host:port from one thread of its own; blocking requests
// (get, wait, barrier) are parked and answered when they complete or time out, so one slow
// client never holds up another. The launcher calls the public methods from any thread. The
// socket is secured with the cluster's secret (ipc/zmq_auth.h): a peer without it never gets
// past the handshake, so it can neither register nor send a request, and it is logged.

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dpserve/distributed/coordinator_types.h"
#include "dpserve/ipc/zmq_auth.h"

namespace dpserve {

// How the coordinator runs.
struct CoordinatorOptions {
  std::string host = "0.0.0.0";     // address to bind (node 0's --node-0-address, or all)
  int port = 0;                     // TCP port (--coordinator-port); 0 = an ephemeral port
  Millis heartbeat_interval{1000};  // how often clients heartbeat (told to them on connect)
  Millis heartbeat_timeout{10000};  // silence after which a rank is dead (and the coordinator lost)
  // Only clients presenting this secret's CURVE keys get through (refused peers are logged);
  // empty = plaintext, for tests only (the launcher always sets one).
  ClusterSecret secret;
  // Called on the coordinator's thread when a rank is declared dead; it must return quickly and
  // must not call back into the Coordinator's blocking methods.
  std::function<void(const RankState&)> on_rank_dead;
};

class Coordinator {
 public:
  // Binds tcp://host:port and starts serving; throws dpserve::Error naming the address when the
  // bind fails (port in use, unknown host).
  explicit Coordinator(CoordinatorOptions options);
  // Stops serving (see stop()).
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // The bound endpoint, "tcp://127.0.0.1:41234" (the real port when port was 0).
  const std::string& endpoint() const { return endpoint_; }
  // The bound TCP port.
  int port() const { return port_; }

  // Waits until ranks 0..n-1 are all registered and alive; returns their states in rank order.
  // Throws dpserve::Error after `timeout` naming the ranks still missing (and any dead ones).
  std::vector<RankState> wait_for_ranks(int n, Millis timeout);
  // Every rank that ever registered, in rank order, with its state and heartbeat age.
  std::vector<RankState> rank_states() const;
  // Sends "shutdown" with `reason` to every connected client (their on_shutdown callbacks run);
  // returns how many clients it was sent to. Best effort: it does not wait for them to act.
  int broadcast_shutdown(const std::string& reason);
  // Sets `key` in the store from this process (what the launcher publishes for the ranks, such
  // as node 0's socket endpoints); parked gets of it are answered.
  void set(const std::string& key, const std::string& value);
  // The value of `key` in the store, if set (no waiting): what the launcher reads of the keys
  // other nodes set, such as their ranks' exits and readiness.
  std::optional<std::string> value(const std::string& key) const;
  // Declares `global_rank` dead now (the launcher saw its process exit, or killed it): barriers it
  // was in fail for the others with `why`, and a new process may register the rank again. No
  // on_rank_dead callback runs. Returns false when the rank is unknown or not alive.
  bool declare_dead(int global_rank, const std::string& why);
  // Stops the service thread and closes the socket; clients then see the coordinator as lost.
  // Idempotent.
  void stop();

 private:
  struct State;
  void serve();
  void wake();

  CoordinatorOptions options_;
  std::string endpoint_;
  int port_ = 0;
  int wake_fd_ = -1;  // eventfd: a public method has work for the service thread
  std::unique_ptr<State> state_;
  std::thread thread_;
};

}  // namespace dpserve
