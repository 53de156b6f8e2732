#pragma once
// CoordinatorClient: a scheduler rank's connection to the coordinator (coordinator.h).
//
// Design: one DEALER socket, owned by one I/O thread of the client. Public methods are
// thread-safe: each call gets an id, queues its request for the I/O thread (woken through an
// eventfd) and waits for the reply with that id, so several threads can have calls in flight at
// once and a long blocking get never delays another thread's set. The I/O thread also sends a
// heartbeat every heartbeat_interval (the coordinator tells the client the interval when it
// connects) and watches the coordinator:
//   - the coordinator answers every heartbeat; silence for heartbeat_timeout, or the TCP
//     connection closing once established, means the coordinator is lost: every call in flight
//     and every later call throws dpserve::Error naming the address, and on_lost runs once;
//   - a shutdown broadcast runs on_shutdown, and later calls throw.
// A blocking call (get, wait, barrier) is timed by the coordinator, which answers with an error
// when the timeout passes; the client gives up on its own heartbeat_timeout after that.
//
// Callbacks run on the I/O thread: they must return quickly and must not call the client (that
// would wait on the thread that runs them; it aborts with a CHECK instead).

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dpserve/distributed/coordinator_types.h"
#include "dpserve/ipc/zmq_auth.h"

namespace dpserve {

enum class CoordOp : uint8_t;
struct CoordReply;
struct CoordRequest;

// How a client connects.
struct CoordinatorClientOptions {
  std::string address;         // "tcp://host:port" (coordinator_address())
  Millis dist_timeout{30000};  // how long to retry reaching the coordinator (SGLang --dist-timeout)
  // The cluster's secret: the coordinator accepts only clients presenting its CURVE keys; empty =
  // plaintext (only reaches a coordinator without a secret).
  ClusterSecret secret;
  // Called once when the coordinator broadcasts shutdown, with its reason.
  std::function<void(const std::string& reason)> on_shutdown;
  // Called once when the coordinator is lost (no answer, connection closed), with the cause.
  std::function<void(const std::string& reason)> on_lost;
};

class CoordinatorClient {
 public:
  // Connects and waits until the coordinator answers, retrying until dist_timeout; then throws
  // dpserve::Error "cannot reach the coordinator at tcp://10.0.0.1:5000 after 30.0 s: <cause>"
  // (a refused handshake names --cluster-secret as the likely cause).
  explicit CoordinatorClient(CoordinatorClientOptions options);
  // Leaves (when registered and the coordinator is still there), stops the I/O thread.
  ~CoordinatorClient();
  CoordinatorClient(const CoordinatorClient&) = delete;
  CoordinatorClient& operator=(const CoordinatorClient&) = delete;

  // Registers this process as a rank; throws dpserve::Error with the coordinator's refusal
  // (fingerprint mismatch naming each flag, rank already registered and alive). Once per client.
  void register_rank(const RankInfo& info);
  // Deregisters cleanly: the coordinator reports the rank as "left", not dead. Idempotent.
  void leave();
  // Every rank that registered so far, in rank order (endpoints included).
  std::vector<RankState> rank_states();

  // Sets key = value (bytes), waking every get / wait on it.
  void set(const std::string& key, const std::string& value);
  // The value of `key`, waiting up to `timeout` for it to be set; dpserve::Error on timeout.
  std::string get(const std::string& key, Millis timeout);
  // Atomically adds `delta` to the integer at `key` (0 when unset); returns the new value.
  int64_t add(const std::string& key, int64_t delta);
  // True when every key is set (no waiting).
  bool check(const std::vector<std::string>& keys);
  // Waits up to `timeout` until every key is set; dpserve::Error naming the missing ones.
  void wait(const std::vector<std::string>& keys, Millis timeout);
  // Removes `key`; returns whether it existed.
  bool delete_key(const std::string& key);
  // Returns once `n` participants have entered barrier `name`; dpserve::Error after `timeout`
  // (naming who arrived) or when a participant died. The name is reusable once passed.
  void barrier(const std::string& name, int n, Millis timeout);

  // The coordinator's address.
  const std::string& address() const { return options_.address; }
  // The heartbeat interval the coordinator asked for.
  Millis heartbeat_interval() const;
  // True once the coordinator is lost or shut down (calls throw from then on).
  bool lost() const;
  // "rank 2 (node 1)" once registered, else "pid 1234", for logs.
  std::string label() const;

 private:
  struct Io;
  CoordReply call(CoordRequest req);

  CoordinatorClientOptions options_;
  std::unique_ptr<Io> io_;
  std::atomic<bool> registered_{false};
};

}  // namespace dpserve
