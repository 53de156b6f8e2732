#include "dpserve/distributed/gloo_group.h"

#include <cstring>
#include <exception>
#include <numeric>

#include <gloo/allgather.h>
#include <gloo/allgatherv.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/common/logging.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

namespace dpserve {
namespace {

// The text of an exception thrown by Gloo (or by anything it calls, such as a store).
std::string describe(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const gloo::IoException& ex) {
    return fmt::format("I/O error: {}", ex.what());
  } catch (const gloo::EnforceNotMet& ex) {
    return fmt::format("Gloo check failed: {}", ex.what());
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "unknown exception";
  }
}

// gloo::sum<float> with the signature the options API wants.
void sum_floats(void* c, const void* a, const void* b, size_t n) { gloo::sum<float>(c, a, b, n); }

}  // namespace

std::shared_ptr<gloo::transport::Device> make_gloo_tcp_device(const GlooTransportOptions& options) {
  gloo::transport::tcp::attr attr;
  if (!options.hostname.empty()) {
    attr.hostname = options.hostname;
  } else if (!options.iface.empty()) {
    attr.iface = options.iface;
  }
  try {
    return gloo::transport::tcp::CreateDevice(attr);
  } catch (...) {
    throw DistributedError(
        fmt::format("cannot create the Gloo TCP device (hostname '{}', iface '{}'): {}",
                    options.hostname, options.iface, describe(std::current_exception())));
  }
}

GlooProcessGroup::GlooProcessGroup(std::string name, int rank, int size,
                                   std::shared_ptr<gloo::rendezvous::Store> store,
                                   const std::string& key_prefix,
                                   const GlooTransportOptions& options,
                                   std::shared_ptr<gloo::transport::Device> device)
    : name_(std::move(name)),
      rank_(rank),
      size_(size),
      timeout_(options.timeout),
      allreduce_(options.allreduce) {
  DPSERVE_CHECK(size_ >= 1 && rank_ >= 0 && rank_ < size_, "group {}: rank {} of {}", name_, rank_,
                size_);
  DPSERVE_CHECK(timeout_.count() > 0, "group {}: timeout must be positive", name_);
  if (size_ == 1) return;  // no peers: no transport
  DPSERVE_CHECK(store != nullptr, "group {}: a store is needed for {} ranks", name_, size_);
  if (!device) device = make_gloo_tcp_device(options);
  try {
    auto context = std::make_shared<gloo::rendezvous::Context>(rank_, size_);
    context->setTimeout(timeout_);
    gloo::rendezvous::PrefixStore prefixed(key_prefix, *store);
    context->connectFullMesh(prefixed, device);
    context_ = std::move(context);
  } catch (...) {
    throw DistributedError(fmt::format(
        "group '{}' (rank {} of {}): connecting to the other ranks (store prefix '{}', timeout "
        "{} ms) failed: {}",
        name_, rank_, size_, key_prefix, timeout_.count(), describe(std::current_exception())));
  }
}

GlooProcessGroup::~GlooProcessGroup() = default;

template <typename F>
void GlooProcessGroup::run(const char* op, F&& f) {
  if (!failure_.empty()) {
    throw DistributedError(
        fmt::format("group '{}' (rank {} of {}): {} after an earlier failure: {}", name_, rank_,
                    size_, op, failure_));
  }
  try {
    f();
  } catch (...) {
    failure_ = fmt::format("{} failed: {}", op, describe(std::current_exception()));
    throw DistributedError(
        fmt::format("group '{}' (rank {} of {}): {}", name_, rank_, size_, failure_));
  }
}

// Algorithm choice: see docs/architecture.md "Process groups" for GlooBench's numbers. bcube
// (the default) was as fast as ring or faster at every size from 4 KB to 2 MB and 2 to 4 ranks,
// and equal at 8 MB. Every collective here uses Gloo's options (unbound-buffer) API only: the
// older buffer-based
// algorithms (AllreduceHalvingDoubling ...) were faster alone for small sizes, but interleaved
// with options-API collectives on the same connections they stalled (the collective tests ran
// 3-7x slower), and they notice a dead peer only at their timeout instead of at once.
void GlooProcessGroup::all_reduce_sum(float* data, int64_t n) {
  DPSERVE_CHECK(n >= 0 && (n == 0 || data != nullptr), "all_reduce_sum: n {}", n);
  run("all_reduce_sum", [&] {
    if (size_ == 1 || n == 0) return;
    gloo::AllreduceOptions opts(context_);
    opts.setOutput(data, static_cast<size_t>(n));
    opts.setReduceFunction(&sum_floats);
    opts.setAlgorithm(allreduce_ == GlooAllreduceAlgorithm::kBcube
                          ? gloo::AllreduceOptions::Algorithm::BCUBE
                          : gloo::AllreduceOptions::Algorithm::RING);
    opts.setTag(next_tag());
    opts.setTimeout(timeout_);
    gloo::allreduce(opts);
  });
}

void GlooProcessGroup::all_gatherv(const float* in, float* out,
                                   const std::vector<int64_t>& counts) {
  DPSERVE_CHECK(counts.size() == static_cast<size_t>(size_), "all_gatherv: {} counts for {} ranks",
                counts.size(), size_);
  int64_t total = 0, offset = 0;
  for (int r = 0; r < size_; ++r) {
    DPSERVE_CHECK(counts[r] >= 0, "all_gatherv: counts[{}] = {}", r, counts[r]);
    if (r < rank_) offset += counts[r];
    total += counts[r];
  }
  run("all_gatherv", [&] {
    if (counts[rank_] > 0) {
      std::memmove(out + offset, in, static_cast<size_t>(counts[rank_]) * sizeof(float));
    }
    if (size_ == 1 || total == 0) return;
    // In place: this rank's rows are already at their offset in `out`.
    gloo::AllgathervOptions opts(context_);
    opts.setOutput(out, std::vector<size_t>(counts.begin(), counts.end()));
    opts.setTag(next_tag());
    opts.setTimeout(timeout_);
    gloo::allgatherv(opts);
  });
}

void GlooProcessGroup::all_gather_bytes(const void* in, size_t bytes, void* out) {
  run("all_gather_bytes", [&] {
    if (bytes == 0) return;
    auto* dst = static_cast<uint8_t*>(out);
    std::memmove(dst + static_cast<size_t>(rank_) * bytes, in, bytes);
    if (size_ == 1) return;
    gloo::AllgatherOptions opts(context_);
    opts.setOutput(dst, bytes * static_cast<size_t>(size_));
    opts.setTag(next_tag());
    opts.setTimeout(timeout_);
    gloo::allgather(opts);
  });
}

void GlooProcessGroup::broadcast_bytes(void* data, size_t bytes, int root) {
  DPSERVE_CHECK(root >= 0 && root < size_, "broadcast_bytes: root {} of {}", root, size_);
  run("broadcast_bytes", [&] {
    if (size_ == 1 || bytes == 0) return;
    gloo::BroadcastOptions opts(context_);
    opts.setOutput(static_cast<uint8_t*>(data), bytes);
    opts.setRoot(root);
    opts.setTag(next_tag());
    opts.setTimeout(timeout_);
    gloo::broadcast(opts);
  });
}

void GlooProcessGroup::barrier() {
  run("barrier", [&] {
    if (size_ == 1) return;
    gloo::BarrierOptions opts(context_);
    opts.setTag(next_tag());
    opts.setTimeout(timeout_);
    gloo::barrier(opts);
  });
}

}  // namespace dpserve
