#pragma once
// CoordinatorStore: Gloo's rendezvous store (gloo::rendezvous::Store) on top of the coordinator's
// key-value store, so Gloo contexts of every rank on every node rendezvous through node 0's
// coordinator the way PyTorch's rendezvous goes through its TCPStore:
//
//   CoordinatorStore store(client, "tp");            // keys become "tp/<key>"
//   auto dev = gloo::transport::tcp::CreateDevice({.hostname = my_ip});
//   auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
//   ctx->connectFullMesh(store, dev);
//
// The prefix keeps groups apart: several groups (world, tp, attn_tp, ...) can rendezvous through
// one coordinator, each with its own prefix. Values are bytes. Failures (timeout, lost
// coordinator) are dpserve::Error exceptions, which Gloo lets through to the caller.

#include <chrono>
#include <string>
#include <vector>

#include <gloo/rendezvous/store.h>

#include "dpserve/distributed/coordinator_client.h"

namespace dpserve {

class CoordinatorStore : public gloo::rendezvous::Store {
 public:
  // A store over `client` (which must outlive it) with keys "<prefix>/<key>"; get() and wait()
  // without a timeout wait up to `default_timeout`.
  CoordinatorStore(CoordinatorClient& client, std::string prefix,
                   Millis default_timeout = gloo::rendezvous::Store::kDefaultTimeout);

  // Sets key = data.
  void set(const std::string& key, const std::vector<char>& data) override;
  // The value of key, waiting up to the default timeout for it to be set.
  std::vector<char> get(const std::string& key) override;
  // Waits up to the default timeout until every key is set.
  void wait(const std::vector<std::string>& keys) override;
  // Waits up to `timeout` until every key is set.
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;

  // The key as stored in the coordinator: "<prefix>/<key>".
  std::string full_key(const std::string& key) const;
  // The prefix given at construction.
  const std::string& prefix() const { return prefix_; }

 private:
  CoordinatorClient& client_;
  std::string prefix_;
  Millis default_timeout_;
};

}  // namespace dpserve
