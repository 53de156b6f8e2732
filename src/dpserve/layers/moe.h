#pragma once
// Sparse mixture-of-experts block on the CPU (Mixtral's block_sparse_moe, Qwen2-MoE's and
// Qwen3-MoE's mlp): router softmax over all experts, top-k, optional renormalisation of the k
// weights, each chosen expert's SwiGLU MLP, and the weighted sum; Qwen2-MoE adds a shared expert
// scaled by sigmoid(x · shared_expert_gate).
//
// Hidden rows in, hidden rows out: forward() takes the normalized hidden states of m tokens and
// writes the block's output for the same m rows, summed over the ranks of the reduction group.
// Expert parallelism: a rank holds a contiguous range of experts (and, when experts are also
// split by tensor parallelism, a slice of each one's intermediate features); every rank sees all
// m tokens, routes them identically (the router is replicated), computes the contributions of
// its own experts and the sum over ranks is one all_reduce_sum. Under DP attention the caller
// passes the gathered rows of every DP group and scatters the output back.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dpserve/common/thread_pool.h"
#include "dpserve/distributed/process_group.h"
#include "dpserve/kernels/cpu/linear.h"

namespace dpserve {

// How the routed experts run.
enum class MoeImpl {
  kFused,       // tokens grouped by expert, each expert's rows as one GEMM through linear()
  kFusedSplit,  // the same, but every expert's linear() always split over all threads
  kNaive,       // per token and chosen expert, three GEMVs (the reference path)
};

// "fused", "fused-split" or "naive"; throws dpserve::Error naming the value otherwise.
MoeImpl parse_moe_impl(const std::string& name);
// The name parse_moe_impl accepts for `impl`.
const char* moe_impl_name(MoeImpl impl);

// One expert's SwiGLU MLP, down(silu(gate · x) * (up · x)); a TP slice of the intermediate
// features when experts are split by tensor parallelism.
struct ExpertWeights {
  kernels::WeightMatrix gate;  // [inter, hidden]
  kernels::WeightMatrix up;    // [inter, hidden]
  kernels::WeightMatrix down;  // [hidden, inter]
};

// Router: for each of m rows of `logits` ([m][num_experts]) the softmax over all experts, the
// top_k largest probabilities in descending order (ties: lower expert id first), renormalised to
// sum to 1 when `renormalize`. Writes ids[m][top_k] and weights[m][top_k].
void route_topk(const float* logits, int64_t m, int64_t num_experts, int64_t top_k,
                bool renormalize, int32_t* ids, float* weights);

// Counters of the routed work since the last reset (what the benchmark turns into bytes).
struct MoeStats {
  int64_t forwards = 0;        // forward() calls
  int64_t tokens = 0;          // rows routed
  int64_t expert_rows = 0;     // (token, local expert) pairs computed
  int64_t active_experts = 0;  // local experts with at least one row, summed over forwards
  double seconds = 0;          // wall time inside forward(), the all-reduce included
  double reduce_seconds = 0;   // wall time inside the all-reduce (waiting for other ranks too)
};

class SparseMoeBlock {
 public:
  // kFused hands whole experts to the pool's threads (each running linear() alone) when at least
  // this many experts per thread have rows; with fewer, every expert's linear() is split over all
  // threads (as kFusedSplit always does).
  static constexpr int64_t kExpertsPerThread = 4;

  // Everything the block needs; weights are not owned (they live in the mapping or an arena).
  struct Params {
    kernels::WeightMatrix router;        // [num_experts, hidden], the same on every rank
    int64_t num_experts = 0;             // routed experts in all
    int64_t top_k = 0;                   // experts per token
    bool renormalize = false;            // norm_topk_prob
    int64_t first_expert = 0;            // global id of experts[0]
    std::vector<ExpertWeights> experts;  // this rank's experts, ids first_expert, first_expert+1 ..
    std::optional<ExpertWeights> shared;  // Qwen2-MoE's shared expert (this rank's slice)
    std::vector<float> shared_gate;       // [hidden], used with `shared`
    ProcessGroup* group = nullptr;        // ranks whose outputs are summed; null = one rank
    MoeImpl impl = MoeImpl::kFused;       // how the routed experts run
  };

  // Checks the shapes (DPSERVE_CHECK: the model loader has checked the checkpoint already).
  explicit SparseMoeBlock(Params params);

  // y[m][hidden] = the block's output for the m rows of x[m][hidden], summed over the group.
  // x and y must not alias. Every rank of the group must call it with the same m.
  void forward(const float* x, int64_t m, float* y, ThreadPool& pool);

  // The router's choice in the last forward: global expert ids [m][top_k], highest weight first.
  const std::vector<int32_t>& last_topk_ids() const { return ids_; }
  // The weights that go with last_topk_ids() (after renormalisation).
  const std::vector<float>& last_topk_weights() const { return weights_; }
  // Selects the fused or the naive path for the next forwards.
  void set_impl(MoeImpl impl) { p_.impl = impl; }
  // The path in use.
  MoeImpl impl() const { return p_.impl; }
  // Experts this rank computes.
  int64_t num_local_experts() const { return static_cast<int64_t>(p_.experts.size()); }
  // Global id of this rank's first expert.
  int64_t first_expert() const { return p_.first_expert; }
  // Hidden size (rows in and out).
  int64_t hidden() const { return p_.router.cols; }
  // Routed work since the last reset_stats().
  const MoeStats& stats() const { return stats_; }
  // Zeroes stats().
  void reset_stats() { stats_ = {}; }

 private:
  // Routed experts, tokens grouped by expert: one linear() per expert and projection.
  void experts_fused(const float* x, int64_t m, float* y, ThreadPool& pool);
  // Routed experts, one token and expert at a time.
  void experts_naive(const float* x, int64_t m, float* y, ThreadPool& pool);
  // y += sigmoid(x · shared_gate) * shared(x), row by row.
  void add_shared(const float* x, int64_t m, float* y, ThreadPool& pool);

  Params p_;
  int64_t inter_ = 0;  // intermediate features of a local expert (all equal)
  MoeStats stats_;

  // Scratch, grown on demand.
  std::vector<float> logits_;       // [m][num_experts]
  std::vector<int32_t> ids_;        // [m][top_k]
  std::vector<float> weights_;      // [m][top_k]
  std::vector<int64_t> offsets_;    // [local experts + 1]: first grouped row of each expert
  std::vector<int32_t> row_token_;  // grouped row -> token
  std::vector<float> row_weight_;   // grouped row -> router weight
  std::vector<float> xg_;           // [rows][hidden], tokens gathered by expert
  std::vector<float> g_, u_;        // [rows][inter]
  std::vector<float> d_;            // [rows][hidden]
  std::vector<int32_t> active_;     // local experts with rows in this forward
  std::vector<std::unique_ptr<ThreadPool>> solo_;  // a one-thread pool per thread of the caller's
};

}  // namespace dpserve
