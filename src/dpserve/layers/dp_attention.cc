#include "dpserve/layers/dp_attention.h"

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

}  // namespace dpserve
