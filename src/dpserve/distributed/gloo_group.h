#pragma once
// GlooProcessGroup: ProcessGroup over Gloo's TCP transport.
//
// Construction is a rendezvous: every rank of the group publishes its listening address under
// `key_prefix` in a shared gloo::rendezvous::Store (the coordinator's store in a server, a
// FileStore or HashStore in tests) and connects to every other rank (connectFullMesh). It returns
// when all `size` ranks have connected, or throws DistributedError after the timeout. A key prefix
// must be used by one group construction only (stale keys from an earlier group would be read).
//
// A size-1 group needs no store and no transport: every collective is a local copy or a no-op.
//
// Not thread-safe: one thread at a time runs collectives on a group (different groups may be used
// from different threads). After a collective fails the group is broken for good: every later call
// throws DistributedError with the first failure's cause.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dpserve/distributed/process_group.h"

namespace gloo {
class Context;
namespace rendezvous {
class Store;
}  // namespace rendezvous
namespace transport {
class Device;
}  // namespace transport
}  // namespace gloo

namespace dpserve {

// Gloo's all-reduce algorithms (docs/architecture.md "Process groups" has the measurements).
enum class GlooAllreduceAlgorithm {
  kRing,   // gloo::allreduce, ring (reduce-scatter + all-gather, 1 MiB segments)
  kBcube,  // gloo::allreduce, bcube (log2(size) exchange rounds)
};

// Where a group listens, how long it waits for peers, and its all-reduce algorithm.
struct GlooTransportOptions {
  std::string hostname;  // address or host name to bind and publish ("127.0.0.1"); or empty
  std::string iface;     // network interface to bind (e.g. "eth0") when hostname is empty
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};  // connect and per-collective limit
  GlooAllreduceAlgorithm allreduce = GlooAllreduceAlgorithm::kBcube;  // all_reduce_sum's algorithm
};

// One TCP device (a listening socket and an event-loop thread) that several groups of one process
// can share. Throws DistributedError when the address cannot be resolved or bound. With both
// hostname and iface empty, Gloo binds the address that this machine's host name resolves to.
std::shared_ptr<gloo::transport::Device> make_gloo_tcp_device(const GlooTransportOptions& options);

// ProcessGroup over Gloo's TCP transport (rendezvous, failures and threading: see above).
class GlooProcessGroup : public ProcessGroup {
 public:
  // Joins the group `name` as `rank` of `size` (blocking rendezvous, see above). `device` may be
  // null: the group then makes its own from `options`. store and device are unused when size == 1.
  GlooProcessGroup(std::string name, int rank, int size,
                   std::shared_ptr<gloo::rendezvous::Store> store, const std::string& key_prefix,
                   const GlooTransportOptions& options,
                   std::shared_ptr<gloo::transport::Device> device = nullptr);
  // Closes the connections (peers see their pairs closed).
  ~GlooProcessGroup() override;

  GlooProcessGroup(const GlooProcessGroup&) = delete;
  GlooProcessGroup& operator=(const GlooProcessGroup&) = delete;

  // This rank's index in the group.
  int rank() const override { return rank_; }
  // Number of ranks in the group.
  int size() const override { return size_; }
  // The group's name, used in errors.
  const std::string& name() const override { return name_; }

  // Sum of n floats over ranks, in place (GlooTransportOptions::allreduce, bcube by default).
  void all_reduce_sum(float* data, int64_t n) override;
  // Concatenation of every rank's counts[r] floats (counts may hold zeros).
  void all_gatherv(const float* in, float* out, const std::vector<int64_t>& counts) override;
  // Concatenation of `bytes` bytes from every rank.
  void all_gather_bytes(const void* in, size_t bytes, void* out) override;
  // root's `bytes` bytes to every rank.
  void broadcast_bytes(void* data, size_t bytes, int root) override;
  // Returns when every rank has entered it.
  void barrier() override;

  // The per-collective timeout this group was created with.
  std::chrono::milliseconds timeout() const { return timeout_; }

 private:
  // Runs one Gloo collective, turning any exception into DistributedError("<group> <op>: cause").
  template <typename F>
  void run(const char* op, F&& f);
  // The tag of the next collective (same sequence on every rank).
  uint32_t next_tag() { return tag_++; }

  std::string name_;                        // group name for errors
  int rank_ = 0;                            // this rank
  int size_ = 1;                            // ranks in the group
  std::chrono::milliseconds timeout_;       // per-collective timeout
  GlooAllreduceAlgorithm allreduce_;        // all_reduce_sum's algorithm
  std::shared_ptr<gloo::Context> context_;  // null when size_ == 1
  uint32_t tag_ = 0;                        // next collective's tag
  std::string failure_;                     // first failure's message; non-empty = broken
};

}  // namespace dpserve
