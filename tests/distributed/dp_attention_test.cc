// DP attention rank arithmetic (layers/dp_attention.h) over (tp, dp) in {1,2,4,8}^2, with the
// worked examples of DESIGN.md §3 / SGLang's explainer, and seed 2's publisher rule.

#include <gtest/gtest.h>

#include "dpserve/common/errors.h"
#include "dpserve/layers/dp_attention.h"

namespace dpserve {
namespace {

// Seed 2's should_run_publisher, transcribed literally: one scheduler per node, node_rank is
// passed as tp_rank and dp_size as tp_size.
bool seed_should_run_publisher(bool enable_dp_attention, int node_rank, int dp_size) {
  if (!enable_dp_attention || dp_size == 1) return node_rank == 0;
  return compute_dp_attention_world_info(enable_dp_attention, node_rank, dp_size, dp_size)
             .attn_tp_rank == 0;
}

TEST(DpAttention, TableOverTpAndDp) {
  for (int tp : {1, 2, 4, 8}) {
    for (int dp : {1, 2, 4, 8}) {
      SCOPED_TRACE(testing::Message() << "tp " << tp << " dp " << dp);
      // Without DP attention every combination is valid: (tp_rank, tp_size, 0), rank 0 publishes.
      EXPECT_NO_THROW(validate_parallel_flags(tp, dp, false));
      for (int r = 0; r < tp; ++r) {
        EXPECT_EQ(compute_dp_attention_world_info(false, r, tp, dp),
                  (DpAttentionWorldInfo{r, tp, 0}));
        EXPECT_EQ(should_run_publisher(false, r, tp, dp), r == 0);
      }
      if (tp % dp != 0) {
        EXPECT_THROW(validate_parallel_flags(tp, dp, true), Error);
        continue;
      }
      EXPECT_NO_THROW(validate_parallel_flags(tp, dp, true));
      // Constructively: DP group g holds ranks g * a + j, j in [0, a), a = tp / dp.
      const int a = tp / dp;
      int publishers = 0;
      for (int g = 0; g < dp; ++g) {
        for (int j = 0; j < a; ++j) {
          const int rank = g * a + j;
          EXPECT_EQ(compute_dp_attention_world_info(true, rank, tp, dp),
                    (DpAttentionWorldInfo{j, a, g}))
              << "rank " << rank;
          const bool publishes = should_run_publisher(true, rank, tp, dp);
          EXPECT_EQ(publishes, dp == 1 ? rank == 0 : j == 0) << "rank " << rank;
          publishers += publishes;
        }
      }
      EXPECT_EQ(publishers, dp);  // one reader per DP group
    }
  }
}

TEST(DpAttention, WorkedExamples) {
  // --tp 8 --dp 8 --enable-dp-attention: attention alone on every rank, attn_dp_rank = tp_rank.
  for (int r = 0; r < 8; ++r) {
    EXPECT_EQ(compute_dp_attention_world_info(true, r, 8, 8), (DpAttentionWorldInfo{0, 1, r}));
    EXPECT_TRUE(should_run_publisher(true, r, 8, 8));
  }
  // --tp 8 --dp 4: pairs {0,1} {2,3} {4,5} {6,7}.
  EXPECT_EQ(compute_dp_attention_world_info(true, 5, 8, 4), (DpAttentionWorldInfo{1, 2, 2}));
  EXPECT_EQ(compute_dp_attention_world_info(true, 6, 8, 4), (DpAttentionWorldInfo{0, 2, 3}));
  EXPECT_TRUE(should_run_publisher(true, 6, 8, 4));
  EXPECT_FALSE(should_run_publisher(true, 5, 8, 4));
  // TP=4, DP=2 (SGLang's communicator example, sequences ab | cd): {0,1} and {2,3}.
  EXPECT_EQ(compute_dp_attention_world_info(true, 0, 4, 2), (DpAttentionWorldInfo{0, 2, 0}));
  EXPECT_EQ(compute_dp_attention_world_info(true, 1, 4, 2), (DpAttentionWorldInfo{1, 2, 0}));
  EXPECT_EQ(compute_dp_attention_world_info(true, 2, 4, 2), (DpAttentionWorldInfo{0, 2, 1}));
  EXPECT_EQ(compute_dp_attention_world_info(true, 3, 4, 2), (DpAttentionWorldInfo{1, 2, 1}));
  // DP attention with dp 1 is plain TP.
  EXPECT_EQ(compute_dp_attention_world_info(true, 3, 4, 1), (DpAttentionWorldInfo{3, 4, 0}));
}

TEST(DpAttention, SeedPublisherRuleIsTheCaseTpEqualsDp) {
  for (bool enable : {false, true}) {
    for (int dp : {1, 2, 4, 8}) {
      for (int node_rank = 0; node_rank < dp; ++node_rank) {
        EXPECT_EQ(should_run_publisher(enable, node_rank, dp, dp),
                  seed_should_run_publisher(enable, node_rank, dp))
            << enable << " " << dp << " " << node_rank;
      }
    }
  }
}

// Returns the message of the Error validate_parallel_flags throws ("" when none).
std::string flag_error(int tp, int dp, bool enable) {
  try {
    validate_parallel_flags(tp, dp, enable);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(DpAttention, InvalidFlagsNameTheProblem) {
  EXPECT_EQ(flag_error(0, 1, false), "--tp-size must be >= 1, got 0");
  EXPECT_EQ(flag_error(-2, 1, true), "--tp-size must be >= 1, got -2");
  EXPECT_EQ(flag_error(4, 0, false), "--dp-size must be >= 1, got 0");
  EXPECT_EQ(flag_error(4, -1, true), "--dp-size must be >= 1, got -1");
  const std::string e43 = flag_error(4, 3, true);
  EXPECT_NE(e43.find("--enable-dp-attention needs --tp-size divisible by --dp-size"),
            std::string::npos);
  EXPECT_NE(e43.find("got --tp-size 4 --dp-size 3"), std::string::npos) << e43;
  EXPECT_NE(flag_error(2, 4, true).find("got --tp-size 2 --dp-size 4"), std::string::npos);
  // Plain DP replicas: any sizes >= 1.
  EXPECT_EQ(flag_error(4, 3, false), "");
  EXPECT_EQ(flag_error(1, 8, false), "");
}

// DESIGN.md §3 / SGLang's classic get_dp_padding_mode: SUM_LEN whenever a group extends;
// otherwise MAX_LEN iff 2 * sum > max * dp_size.
TEST(DpAttention, PaddingModeRule) {
  using M = DpPaddingMode;
  EXPECT_EQ(get_dp_padding_mode(true, {4, 4}), M::kSumLen);  // extend: always SUM_LEN
  EXPECT_EQ(get_dp_padding_mode(true, {1, 1, 1, 1}), M::kSumLen);
  EXPECT_EQ(get_dp_padding_mode(false, {4, 4}), M::kMaxLen);        // 16 > 8
  EXPECT_EQ(get_dp_padding_mode(false, {2, 1}), M::kMaxLen);        // 6 > 4
  EXPECT_EQ(get_dp_padding_mode(false, {2, 0}), M::kSumLen);        // 4 > 4 is false
  EXPECT_EQ(get_dp_padding_mode(false, {1, 0}), M::kSumLen);        // 2 > 2 is false
  EXPECT_EQ(get_dp_padding_mode(false, {8, 1, 1, 1}), M::kSumLen);  // 22 > 32 is false
  EXPECT_EQ(get_dp_padding_mode(false, {8, 8, 8, 1}), M::kMaxLen);  // 50 > 32
  EXPECT_EQ(get_dp_padding_mode(false, {0, 0}), M::kSumLen);
  EXPECT_EQ(get_dp_padding_mode(false, {5}), M::kMaxLen);  // one group: 10 > 5
  EXPECT_STREQ(to_string(M::kMaxLen), "max_len");
  EXPECT_STREQ(to_string(M::kSumLen), "sum_len");
}

TEST(DpAttention, GatherPlanOffsets) {
  const DpGatherPlan sum = make_dp_gather_plan({3, 0, 5, 1}, DpPaddingMode::kSumLen);
  EXPECT_EQ(sum.offsets, (std::vector<int64_t>{0, 3, 3, 8, 9}));
  EXPECT_EQ(sum.dp_size(), 4);
  EXPECT_EQ(sum.max_tokens, 5);
  EXPECT_EQ(sum.total_tokens(), 9);
  EXPECT_EQ(sum.buffer_rows(), 9);
  const DpGatherPlan max = make_dp_gather_plan({3, 0, 5, 1}, DpPaddingMode::kMaxLen);
  EXPECT_EQ(max.offsets, sum.offsets);  // the same layout after the gather
  EXPECT_EQ(max.buffer_rows(), 20);     // 4 groups padded to 5 rows while gathering
}

}  // namespace
}  // namespace dpserve
