#include "dpserve/distributed/parallel_state.h"

#include <fmt/format.h>

#include "dpserve/layers/dp_attention.h"

namespace dpserve {

std::string ParallelState::describe() const {
  return fmt::format("tp {}/{} attn_tp {}/{} attn_dp {}/{} dp_rank {}", tp_rank, tp_size,
                     attn_tp_rank, attn_tp_size, attn_dp_rank,
                     attn_tp_size == tp_size ? 1 : dp_size, dp_rank);
}

void validate_parallel_config(const ParallelConfig& c) {
  validate_parallel_flags(c.tp_size, c.dp_size, c.enable_dp_attention);
  if (c.world_size != c.tp_size) {
    throw_error("world size {} must equal --tp-size {} (one process per TP rank)", c.world_size,
                c.tp_size);
  }
  if (c.world_rank < 0 || c.world_rank >= c.world_size) {
    throw_error("world rank must be in [0, {}), got {}", c.world_size, c.world_rank);
  }
  if (c.enable_dp_attention && c.dp_replica != 0) {
    throw_error("dp_replica must be 0 under --enable-dp-attention (one model instance), got {}",
                c.dp_replica);
  }
  if (c.dp_replica < 0 || c.dp_replica >= c.dp_size) {
    throw_error("dp_replica must be in [0, --dp-size) = [0, {}), got {}", c.dp_size, c.dp_replica);
  }
}

ParallelGroupRanks compute_group_ranks(const ParallelConfig& c) {
  validate_parallel_config(c);
  const auto info =
      compute_dp_attention_world_info(c.enable_dp_attention, c.world_rank, c.tp_size, c.dp_size);
  ParallelGroupRanks g;
  for (int r = 0; r < c.world_size; ++r) g.world.push_back(r);
  g.tp = g.world;
  const int head = info.attn_dp_rank * info.attn_tp_size;
  for (int r = 0; r < info.attn_tp_size; ++r) g.attn_tp.push_back(head + r);
  if (c.enable_dp_attention) {
    for (int d = 0; d < c.dp_size; ++d) g.dp.push_back(info.attn_tp_rank + d * info.attn_tp_size);
  } else {
    g.dp.push_back(c.world_rank);
  }
  return g;
}

ParallelState initialize_parallel_state(const ParallelConfig& c,
                                        std::shared_ptr<gloo::rendezvous::Store> store,
                                        const std::string& key_prefix,
                                        const GlooTransportOptions& options) {
  const ParallelGroupRanks ranks = compute_group_ranks(c);  // validates
  const auto info =
      compute_dp_attention_world_info(c.enable_dp_attention, c.world_rank, c.tp_size, c.dp_size);

  ParallelState s;
  s.world_rank = c.world_rank;
  s.world_size = c.world_size;
  s.tp_rank = c.world_rank;
  s.tp_size = c.tp_size;
  s.attn_tp_rank = info.attn_tp_rank;
  s.attn_tp_size = info.attn_tp_size;
  s.attn_dp_rank = info.attn_dp_rank;
  s.dp_size = c.dp_size;
  s.dp_rank = c.enable_dp_attention ? info.attn_dp_rank : c.dp_replica;

  // One TCP device (listening socket + event loop) for all groups that need a transport.
  std::shared_ptr<gloo::transport::Device> device;
  if (c.world_size > 1) device = make_gloo_tcp_device(options);

  const std::string base = fmt::format("{}/replica{}/", key_prefix, c.dp_replica);
  auto make = [&](const std::string& name, const std::string& key, int rank, int size) {
    return std::make_shared<GlooProcessGroup>(name, rank, size, store, base + key, options, device);
  };
  // The fixed construction order (world, tp, attn_tp, dp): see the header.
  s.world = make("world", "world", c.world_rank, c.world_size);
  s.tp = make("tp", "tp", c.world_rank, c.tp_size);
  s.attn_tp = make("attn_tp", fmt::format("attn_tp{}", info.attn_dp_rank), info.attn_tp_rank,
                   static_cast<int>(ranks.attn_tp.size()));
  s.dp = c.enable_dp_attention
             ? make("dp", fmt::format("dp{}", info.attn_tp_rank), info.attn_dp_rank, c.dp_size)
             : make("dp", "dp_self", 0, 1);
  return s;
}

}  // namespace dpserve
