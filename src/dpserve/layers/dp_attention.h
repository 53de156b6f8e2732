#pragma once
// DP attention rank arithmetic (SGLang / sgl-jax `layers/dp_attention.py`, DESIGN.md §3).
//
// With --enable-dp-attention, the tp_size ranks of one model instance are split into dp_size DP
// groups of attn_tp_size = tp_size / dp_size consecutive ranks. Attention runs inside a group (its
// heads split over the group's attn_tp_size ranks); the MLP runs over all tp_size ranks. Example
// with tp 4, dp 2: ranks {0, 1} are DP group 0 and {2, 3} DP group 1; rank 3 has attn_tp_rank 1,
// attn_dp_rank 1. Without DP attention every rank is in the single group: (tp_rank, tp_size, 0).
//
// The data movement around the MLP (DESIGN.md §3, SGLang's dp_gather / dp_scatter): after
// attention every rank of a DP group holds the same hidden rows of its group's tokens (o_proj's
// all-reduce ran over attn_tp). dp_gather concatenates the rows of all DP groups, group after
// group, over the `dp` group (one rank per DP group, same attn_tp_rank), so every one of the
// tp_size ranks ends with the same global buffer and the MLP runs over the whole TP group;
// dp_scatter takes this group's rows back out of the MLP's output.

#include <cstdint>
#include <vector>

#include "dpserve/distributed/process_group.h"

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

// How dp_gather moves the rows of the DP groups (SGLang's DpPaddingMode). Both modes leave the
// same global buffer: sum(counts) rows, group after group (MAX_LEN removes its padding after the
// gather, so the MLP never computes pad rows).
enum class DpPaddingMode {
  kMaxLen,  // every group padded to the largest count: one fixed-size all-gather
  kSumLen,  // the exact counts: one all_gatherv
};

// "max_len" / "sum_len".
const char* to_string(DpPaddingMode mode);

// The mode for one step (DESIGN.md §3; SGLang's classic
// DpPaddingMode.get_dp_padding_mode(is_extend_in_batch, global_num_tokens) in
// layers/dp_attention.py): SUM_LEN if any DP group is extending (prefill) this step; otherwise
// MAX_LEN when 2 * sum(counts) > max(counts) * dp_size (padding moves fewer bytes than the
// all-reduce SGLang's SUM_LEN costs, ~2 * sum), else SUM_LEN. Every rank must pass the same values.
DpPaddingMode get_dp_padding_mode(bool is_extend_in_batch,
                                  const std::vector<int64_t>& global_num_tokens);

// Where each DP group's rows go in one step's gather (the same on every rank).
struct DpGatherPlan {
  DpPaddingMode mode = DpPaddingMode::kSumLen;  // how dp_gather moves the rows
  std::vector<int64_t> num_tokens;              // rows of each DP group, [dp_size]
  std::vector<int64_t> offsets;  // first global row of each group, [dp_size + 1] (last = sum)
  int64_t max_tokens = 0;        // largest entry of num_tokens

  // DP groups.
  int dp_size() const { return static_cast<int>(num_tokens.size()); }
  // Rows of the gathered buffer: the sum of num_tokens.
  int64_t total_tokens() const { return offsets.empty() ? 0 : offsets.back(); }
  // Rows the global buffer passed to dp_gather must hold: total_tokens() for SUM_LEN,
  // max_tokens * dp_size() for MAX_LEN (the padded gather lands there before it is compacted).
  int64_t buffer_rows() const;
};

// The plan for per-group counts `global_num_tokens` (offsets = exclusive prefix sum, SGLang's
// get_dp_local_info). Counts must be >= 0 (checked).
DpGatherPlan make_dp_gather_plan(const std::vector<int64_t>& global_num_tokens, DpPaddingMode mode);

// global[total_tokens()][width] = the `width`-float rows of every DP group, group after group;
// `local` holds this group's plan.num_tokens[dp_rank] rows. `global` must hold
// plan.buffer_rows() * width floats. Collective over `dp_group` (rank dp_rank of plan.dp_size();
// nullptr when dp_size is 1): every rank of it calls with the same plan. `scratch` is reused for
// MAX_LEN's padded send buffer. local and global must not alias.
void dp_gather(const float* local, int64_t width, float* global, const DpGatherPlan& plan,
               int dp_rank, ProcessGroup* dp_group, std::vector<float>& scratch);

// local[num_tokens[dp_rank]][width] = this group's rows of `global` (no communication: every rank
// holds the whole global buffer).
void dp_scatter(const float* global, int64_t width, float* local, const DpGatherPlan& plan,
                int dp_rank);

}  // namespace dpserve
