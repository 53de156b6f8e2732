#pragma once
// parallel_state: the process groups of one scheduler rank (SGLang's parallel_state +
// initialize_dp_attention), built over Gloo.
//
// One model instance has tp_size ranks (processes, on one or several machines); world_rank is a
// rank's index in it and equals its tp_rank. Four groups, each with its own connections:
//   world    all tp_size ranks: the scheduler's control collectives (per-step token counts,
//            barriers, request broadcast without DP attention);
//   tp       the same ranks: the model's collectives (row-parallel all-reduce, DP gather/scatter
//            for the MLP). Kept apart from `world` so the two may run on different threads;
//   attn_tp  the ranks that share one DP group's attention: with --enable-dp-attention the
//            attn_tp_size = tp_size / dp_size consecutive ranks [attn_dp_rank * attn_tp_size, ...),
//            else all tp_size ranks;
//   dp       one rank per DP group, those with this rank's attn_tp_rank:
//            {attn_tp_rank + g * attn_tp_size, g in [0, dp_size)}; size dp_size under DP attention,
//            else 1 (this rank alone).
// Group rank order is world-rank order. Size-1 groups use no transport.
//
// Plain data parallelism (--dp-size > 1 without --enable-dp-attention), our reading of DESIGN.md
// §2 and of SGLang: dp_size independent replicas, each a full model copy with its own TP group of
// tp_size ranks (tp_size * dp_size processes in all, on one node); --tp-size is the TP width of one
// replica, so it need not be divisible by --dp-size. Replicas share no collective: each builds its
// own world of tp_size ranks, told apart in the store by `dp_replica`. The DataParallelController
// routes requests to replicas. Under DP attention there is one instance (dp_replica 0).
//
// Order: every rank of an instance calls initialize_parallel_state, which builds its groups in the
// fixed order world, tp, attn_tp, dp. A group's construction blocks until all its members have
// joined, so every rank must build them in this same order (and nothing else collective in
// between), or ranks wait on each other until the timeout.

#include <memory>
#include <string>
#include <vector>

#include "dpserve/distributed/gloo_group.h"
#include "dpserve/distributed/process_group.h"

namespace dpserve {

// The flags and the identity of one rank.
struct ParallelConfig {
  int world_rank = 0;                // this rank's index in its model instance, [0, world_size)
  int world_size = 1;                // ranks of one model instance; must equal tp_size
  int tp_size = 1;                   // --tp-size
  int dp_size = 1;                   // --dp-size
  bool enable_dp_attention = false;  // --enable-dp-attention
  int dp_replica = 0;                // plain DP: this rank's replica in [0, dp_size); else 0
};

// The world ranks of each of one rank's groups, in group-rank order (pure arithmetic).
struct ParallelGroupRanks {
  std::vector<int> world;    // all ranks of the instance
  std::vector<int> tp;       // == world
  std::vector<int> attn_tp;  // this rank's attention-TP group
  std::vector<int> dp;       // this rank's DP group
};

// A rank's coordinates and groups.
struct ParallelState {
  int world_rank = 0;    // index in the model instance
  int world_size = 1;    // ranks in the model instance
  int tp_rank = 0;       // == world_rank
  int tp_size = 1;       // == world_size
  int attn_tp_rank = 0;  // index in the attention-TP group
  int attn_tp_size = 1;  // size of the attention-TP group
  int attn_dp_rank = 0;  // DP group under DP attention (0 without it, as in SGLang)
  int dp_size = 1;       // --dp-size: DP groups (DP attention) or replicas (plain DP)
  int dp_rank = 0;       // the DP rank this rank serves: attn_dp_rank, or the replica (plain DP)

  std::shared_ptr<ProcessGroup> world;    // all ranks of the instance (control)
  std::shared_ptr<ProcessGroup> tp;       // all ranks of the instance (model)
  std::shared_ptr<ProcessGroup> attn_tp;  // the ranks of this rank's DP group
  std::shared_ptr<ProcessGroup> dp;       // one rank per DP group, same attn_tp_rank

  // "tp 3/4 attn_tp 1/2 attn_dp 1/2 dp_rank 1" for logs.
  std::string describe() const;
};

// Throws dpserve::Error naming the field when the config is inconsistent (invalid flags, see
// validate_parallel_flags; world_size != tp_size; world_rank or dp_replica out of range).
void validate_parallel_config(const ParallelConfig& config);

// The members of this rank's groups (validates the config first).
ParallelGroupRanks compute_group_ranks(const ParallelConfig& config);

// Validates the config and builds the groups in the order world, tp, attn_tp, dp (see above),
// over `store` under the keys "<key_prefix>/replica<k>/<group>[<index>]". The groups share one
// TCP device made from `options`. Throws dpserve::Error for a bad config, DistributedError when a
// group cannot connect within options.timeout.
ParallelState initialize_parallel_state(const ParallelConfig& config,
                                        std::shared_ptr<gloo::rendezvous::Store> store,
                                        const std::string& key_prefix,
                                        const GlooTransportOptions& options);

}  // namespace dpserve
