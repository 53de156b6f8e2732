#include "dpserve/layers/dp_attention.h"

#include <algorithm>
#include <cstring>

#include "dpserve/common/errors.h"

namespace dpserve {

DpAttentionWorldInfo compute_dp_attention_world_info(bool enable_dp_attention, int tp_rank,
                                                     int tp_size, int dp_size) {
  DPSERVE_CHECK(tp_size >= 1 && dp_size >= 1, "tp_size {} dp_size {}", tp_size, dp_size);
  DPSERVE_CHECK(tp_rank >= 0 && tp_rank < tp_size, "tp_rank {} tp_size {}", tp_rank, tp_size);
  if (!enable_dp_attention) return {tp_rank, tp_size, 0};
  DPSERVE_CHECK(tp_size % dp_size == 0, "tp_size {} dp_size {}", tp_size, dp_size);
  const int attn_tp_size = tp_size / dp_size;
  return {tp_rank % attn_tp_size, attn_tp_size, tp_rank / attn_tp_size};
}

bool should_run_publisher(bool enable_dp_attention, int tp_rank, int tp_size, int dp_size) {
  if (!enable_dp_attention || dp_size == 1) return tp_rank == 0;
  return compute_dp_attention_world_info(enable_dp_attention, tp_rank, tp_size, dp_size)
             .attn_tp_rank == 0;
}

void validate_parallel_flags(int tp_size, int dp_size, bool enable_dp_attention) {
  if (tp_size < 1) throw_error("--tp-size must be >= 1, got {}", tp_size);
  if (dp_size < 1) throw_error("--dp-size must be >= 1, got {}", dp_size);
  if (enable_dp_attention && tp_size % dp_size != 0) {
    throw_error(
        "--enable-dp-attention needs --tp-size divisible by --dp-size (each DP group gets "
        "tp_size / dp_size attention ranks), got --tp-size {} --dp-size {}",
        tp_size, dp_size);
  }
}

const char* to_string(DpPaddingMode mode) {
  return mode == DpPaddingMode::kMaxLen ? "max_len" : "sum_len";
}

DpPaddingMode get_dp_padding_mode(bool is_extend_in_batch,
                                  const std::vector<int64_t>& global_num_tokens) {
  // SGLang (classic python/sglang/srt/layers/dp_attention.py, DpPaddingMode.get_dp_padding_mode):
  //   if is_extend_in_batch: return SUM_LEN
  //   max_len = max(global_num_tokens); sum_len = sum(global_num_tokens)
  //   if sum_len * 2 > max_len * get_attention_dp_size(): return MAX_LEN else: return SUM_LEN
  if (is_extend_in_batch) return DpPaddingMode::kSumLen;
  int64_t max_len = 0, sum_len = 0;
  for (int64_t n : global_num_tokens) {
    max_len = std::max(max_len, n);
    sum_len += n;
  }
  const auto dp_size = static_cast<int64_t>(global_num_tokens.size());
  return sum_len * 2 > max_len * dp_size ? DpPaddingMode::kMaxLen : DpPaddingMode::kSumLen;
}

int64_t DpGatherPlan::buffer_rows() const {
  return mode == DpPaddingMode::kMaxLen ? max_tokens * dp_size() : total_tokens();
}

DpGatherPlan make_dp_gather_plan(const std::vector<int64_t>& global_num_tokens,
                                 DpPaddingMode mode) {
  DPSERVE_CHECK(!global_num_tokens.empty(), "dp gather plan: no DP groups");
  DpGatherPlan plan;
  plan.mode = mode;
  plan.num_tokens = global_num_tokens;
  plan.offsets.assign(global_num_tokens.size() + 1, 0);
  for (size_t g = 0; g < global_num_tokens.size(); ++g) {
    const int64_t n = global_num_tokens[g];
    DPSERVE_CHECK(n >= 0, "dp gather plan: group {} has {} tokens", g, n);
    plan.offsets[g + 1] = plan.offsets[g] + n;
    plan.max_tokens = std::max(plan.max_tokens, n);
  }
  return plan;
}

void dp_gather(const float* local, int64_t width, float* global, const DpGatherPlan& plan,
               int dp_rank, ProcessGroup* dp_group, std::vector<float>& scratch) {
  const int dp = plan.dp_size();
  DPSERVE_CHECK(dp_rank >= 0 && dp_rank < dp, "dp_gather: dp_rank {} of {}", dp_rank, dp);
  DPSERVE_CHECK(
      dp == 1 || (dp_group != nullptr && dp_group->size() == dp && dp_group->rank() == dp_rank),
      "dp_gather: the dp group must be rank {} of {}", dp_rank, dp);
  const int64_t n = plan.num_tokens[dp_rank];
  const auto row_bytes = static_cast<size_t>(width) * sizeof(float);
  if (dp == 1) {
    if (n > 0) std::memcpy(global, local, static_cast<size_t>(n) * row_bytes);
    return;
  }
  if (plan.mode == DpPaddingMode::kSumLen) {
    std::vector<int64_t> counts(static_cast<size_t>(dp));
    for (int g = 0; g < dp; ++g) counts[g] = plan.num_tokens[g] * width;
    dp_group->all_gatherv(local, global, counts);
    return;
  }
  // MAX_LEN: every group sends max_tokens rows (its own, then zero rows), so group g lands at row
  // g * max_tokens; then the rows move down to their SUM_LEN offsets (offsets[g] <= g * max, and
  // group g's destination ends before group g + 1's source starts, so one forward pass of
  // memmoves is safe).
  const int64_t max = plan.max_tokens;
  if (max == 0) return;
  if (static_cast<int64_t>(scratch.size()) < max * width) scratch.resize(max * width);
  if (n > 0) std::memcpy(scratch.data(), local, static_cast<size_t>(n) * row_bytes);
  std::fill(scratch.begin() + n * width, scratch.begin() + max * width, 0.0f);
  dp_group->all_gather_bytes(scratch.data(), static_cast<size_t>(max) * row_bytes, global);
  for (int g = 1; g < dp; ++g) {
    const int64_t rows = plan.num_tokens[g];
    if (rows > 0 && plan.offsets[g] != g * max) {
      std::memmove(global + plan.offsets[g] * width, global + g * max * width,
                   static_cast<size_t>(rows) * row_bytes);
    }
  }
}

void dp_scatter(const float* global, int64_t width, float* local, const DpGatherPlan& plan,
                int dp_rank) {
  DPSERVE_CHECK(dp_rank >= 0 && dp_rank < plan.dp_size(), "dp_scatter: dp_rank {} of {}", dp_rank,
                plan.dp_size());
  const int64_t n = plan.num_tokens[dp_rank];
  if (n == 0) return;
  std::memcpy(local, global + plan.offsets[dp_rank] * width,
              static_cast<size_t>(n * width) * sizeof(float));
}

}  // namespace dpserve
