#pragma once
// DP attention rank arithmetic (SGLang / sgl-jax `layers/dp_attention.py`, DESIGN.md §3).
//
// With --enable-dp-attention, the tp_size ranks of one model instance are split into dp_size DP
// groups of attn_tp_size = tp_size / dp_size consecutive ranks. Attention runs inside a group (its
// heads split over the group's attn_tp_size ranks); the MLP runs over all tp_size ranks. Example
// with tp 4, dp 2: ranks {0, 1} are DP group 0 and {2, 3} DP group 1; rank 3 has attn_tp_rank 1,
// attn_dp_rank 1. Without DP attention every rank is in the single group: (tp_rank, tp_size, 0).

namespace dpserve {

// Where one rank sits for attention (SGLang's compute_dp_attention_world_info tuple).
struct DpAttentionWorldInfo {
  int attn_tp_rank = 0;  // index inside its attention-TP group, in [0, attn_tp_size)
  int attn_tp_size = 1;  // ranks that share one DP group's attention
  int attn_dp_rank = 0;  // which DP group the rank serves, in [0, dp_size)

  bool operator==(const DpAttentionWorldInfo&) const = default;
};

// SGLang's compute_dp_attention_world_info: attn_tp_size = tp_size / dp_size,
// attn_dp_rank = tp_rank / attn_tp_size, attn_tp_rank = tp_rank % attn_tp_size under DP attention,
// else (tp_rank, tp_size, 0). Arguments must satisfy validate_parallel_flags and
// 0 <= tp_rank < tp_size (checked: a violation is a bug in the caller).
DpAttentionWorldInfo compute_dp_attention_world_info(bool enable_dp_attention, int tp_rank,
                                                     int tp_size, int dp_size);

// Whether this rank reads requests and publishes them to the rest of its group (seed 2's
// should_run_publisher). Without DP attention, or with dp_size == 1: only rank 0. With DP
// attention: every attn_tp_rank == 0 rank, one per DP group. The seed ran one scheduler per node
// and called it with (node_rank, tp_size = dp_size); that is this function with tp_size == dp_size.
bool should_run_publisher(bool enable_dp_attention, int tp_rank, int tp_size, int dp_size);

// Throws dpserve::Error naming the flags when (--tp-size, --dp-size, --enable-dp-attention) is
// not a valid combination: sizes below 1, or tp_size not divisible by dp_size under DP attention.
// Without DP attention, dp_size > 1 means dp_size independent replicas of tp_size ranks each.
void validate_parallel_flags(int tp_size, int dp_size, bool enable_dp_attention);

}  // namespace dpserve
