#pragma once
// ProcessGroup: the collectives ranks use to compute together (tensor parallelism, DP attention,
// the scheduler's per-step broadcast). Implemented on Gloo over TCP (gloo_group.h); the model and
// the scheduler see only this interface.
//
// Every collective is blocking and must be called by every rank of the group, in the same order,
// with matching sizes. A peer that died or stopped answering turns into a DistributedError after
// the group's timeout, never a hang.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dpserve/common/errors.h"

namespace dpserve {

// A collective failed: a peer is gone, the connection broke, or the timeout passed. The message
// names the group, the operation and the cause.
class DistributedError : public Error {
 public:
  using Error::Error;
};

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;

  // This rank's index inside the group, in [0, size()).
  virtual int rank() const = 0;
  // Number of ranks in the group.
  virtual int size() const = 0;
  // The group's name in logs and errors ("tp", "world", "attn_tp", "dp" ...).
  virtual const std::string& name() const = 0;

  // data[i] = sum over ranks of data[i], in place (n floats on every rank).
  virtual void all_reduce_sum(float* data, int64_t n) = 0;
  // out = concatenation over ranks r of rank r's `in` (counts[r] floats each; counts is the same
  // on every rank and counts[rank()] is this rank's count). out holds sum(counts) floats.
  virtual void all_gatherv(const float* in, float* out, const std::vector<int64_t>& counts) = 0;
  // out = concatenation over ranks of `bytes` bytes from each rank (out holds size() * bytes).
  virtual void all_gather_bytes(const void* in, size_t bytes, void* out) = 0;
  // Copies `bytes` bytes from `root`'s data to every rank's data.
  virtual void broadcast_bytes(void* data, size_t bytes, int root) = 0;
  // Returns when every rank has entered the barrier.
  virtual void barrier() = 0;

  // Broadcasts a variable-length message from `root` (its size first, then the payload); on the
  // other ranks `data` is replaced. SGLang's broadcast_pyobj, for serialized messages.
  void broadcast_string(std::string& data, int root) {
    uint64_t n = data.size();
    broadcast_bytes(&n, sizeof(n), root);
    if (rank() != root) data.resize(n);
    if (n > 0) broadcast_bytes(data.data(), n, root);
  }
  // Every rank's value, in rank order.
  std::vector<int64_t> all_gather_i64(int64_t value) {
    std::vector<int64_t> out(static_cast<size_t>(size()));
    all_gather_bytes(&value, sizeof(value), out.data());
    return out;
  }
};

}  // namespace dpserve
