#pragma once
// The Llama family decoder (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM with q/k/v
// bias, Qwen3ForCausalLM with per-head q/k RMSNorm) on the CPU: f32 activations, weights used in
// place from the safetensors mapping (F16 converted to f32 at load). Tensor parallelism splits
// heads, the MLP and the vocabulary over the ranks of a ProcessGroup (layers/parallel_linear.h).
//
// The same decoder serves the mixture-of-experts models (MixtralForCausalLM, Qwen2MoeForCausalLM
// with its shared expert, Qwen3MoeForCausalLM with q/k norm): a layer's feed-forward part is
// either the dense MLP or a SparseMoeBlock (layers/moe.h), as the config says per layer. Experts
// are split over the TP ranks by expert parallelism (ModelOptions::ep_size); attention stays TP.
//
// DP attention (ModelOptions::enable_dp_attention, DESIGN.md §3): the tp_size ranks form dp_size
// DP groups of attn_tp_size = tp_size / dp_size ranks. Each DP group runs its own batch (its own
// ForwardBatch and KV pool); its attention heads, KV heads, embedding and LM head are split over
// its attn_tp group. Each layer's MLP / MoE block runs over the whole TP group on the rows of all
// DP groups: dp_gather before it, dp_scatter after it (layers/dp_attention.h). A group with no
// tokens still calls forward (an idle step) so that the other groups' collectives complete.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dpserve/common/thread_pool.h"
#include "dpserve/distributed/process_group.h"
#include "dpserve/kernels/cpu/linear.h"
#include "dpserve/layers/attention/attention_backend.h"
#include "dpserve/layers/dp_attention.h"
#include "dpserve/layers/moe.h"
#include "dpserve/layers/parallel_linear.h"
#include "dpserve/layers/rotary_embedding.h"
#include "dpserve/layers/vocab_parallel_embedding.h"
#include "dpserve/mem_cache/kv_pool.h"
#include "dpserve/model/forward_batch.h"
#include "dpserve/model/model_config.h"
#include "dpserve/model/safetensors.h"

namespace dpserve {

// Choices made when building a model.
struct ModelOptions {
  std::string attention_backend = "flash";  // "flash" | "native"
  int64_t max_positions = 0;         // rotary table length; 0 = config's max_position_embeddings
  bool show_progress = true;         // progress bar while preparing weights (only drawn on a tty)
  int tp_rank = 0;                   // this rank's index in the tensor-parallel group
  int tp_size = 1;                   // tensor-parallel ranks the model is split over
  ProcessGroup* tp_group = nullptr;  // the TP collectives (not owned); required when tp_size > 1
  // TP only: split the embedding by vocab (+ an all-reduce) instead of keeping it replicated.
  // Off by default: a replicated lookup reads only the looked-up rows of the mapping and needs no
  // collective (docs/benchmarks.md).
  bool vocab_parallel_embedding = false;
  // TP only: split the LM head by vocab (+ an all_gatherv of the logits) instead of replicating it.
  bool vocab_parallel_lm_head = true;
  // MoE models: expert-parallel ranks among the tp_size ranks (must divide tp_size); 0 = tp_size.
  // Rank r holds the experts of ep rank r / (tp_size / ep_size), each expert's intermediate
  // features split over the tp_size / ep_size ranks that share them. Ignored by dense models.
  int ep_size = 0;
  MoeImpl moe_impl = MoeImpl::kFused;  // MoE models: expert path (fused, fused-split, naive)

  // DP attention: the tp_size ranks form dp_size DP groups (dp_size must divide tp_size). This
  // rank's attn_tp_rank / attn_tp_size / attn_dp_rank follow from tp_rank, tp_size and dp_size
  // (compute_dp_attention_world_info). vocab_parallel_embedding / vocab_parallel_lm_head then
  // split the vocabulary over attn_tp (both replicated when attn_tp_size is 1).
  bool enable_dp_attention = false;
  int dp_size = 1;  // DP groups under DP attention; must be 1 without it (plain DP = replicas)
  // This rank's attention-TP group (parallel_state's attn_tp; not owned): attn_tp_size ranks,
  // rank attn_tp_rank. Required when attn_tp_size > 1 under DP attention.
  ProcessGroup* attn_tp_group = nullptr;
  // One rank per DP group with this rank's attn_tp_rank (parallel_state's dp; not owned): dp_size
  // ranks, rank attn_dp_rank. Required when dp_size > 1.
  ProcessGroup* dp_group = nullptr;
};

// The attention-TP width the options imply: tp_size / dp_size under DP attention, else tp_size.
int attention_tp_size(const ModelOptions& options);

// Throws dpserve::Error naming `model_name` and the sizes if `config` cannot be split over tp_size
// ranks: heads, KV heads (or tp_size a multiple of them) and intermediate_size (when a layer has a
// dense MLP) must divide evenly. MoE models also need ep_size (0 = tp_size) to divide tp_size, at
// least ep_size experts, moe_intermediate_size divisible by tp_size / ep_size and the shared
// expert's size by tp_size. Under DP attention the heads are split over attn_tp_size ranks
// (0 = tp_size) and the checks on heads and KV heads use it instead of tp_size.
void check_tensor_parallel(const ModelConfig& config, int tp_size, const std::string& model_name,
                           int ep_size = 0, int attn_tp_size = 0);

// The expert-parallel size a model uses: ep_size, or tp_size when ep_size is 0 (1 for dense).
int resolve_ep_size(const ModelConfig& config, int tp_size, int ep_size);

class LlamaForCausalLM {
 public:
  // Looks up and shape-checks every tensor the config implies (throws dpserve::Error naming a
  // missing or misshapen tensor). Keeps `weights` alive: matrices point into its mapping.
  LlamaForCausalLM(const ModelConfig& config, std::shared_ptr<const WeightStore> weights,
                   const ModelOptions& options = {});

  // Runs the decoder over `batch`: writes each new token's K/V into `kv` at out_cache_loc and
  // fills `logits` ([rows][vocab], rows = the last new token of each sequence, or every new token
  // when batch.return_all_logits). Reuses internal scratch: not reentrant. Under DP attention
  // every rank of the instance must call it in the same step, each with its DP group's batch
  // (the same batch on the ranks of a group); a group without work passes an empty batch (mode
  // kIdle, batch_size 0), which runs only the MLP collectives and gives no logits.
  void forward(const ForwardBatch& batch, KVPool& kv, ThreadPool& pool, std::vector<float>& logits);
  // Same, returning a new vector (convenient in tests).
  std::vector<float> forward(const ForwardBatch& batch, KVPool& kv, ThreadPool& pool);

  // A KV pool of `num_slots` token slots shaped for this rank (its local KV heads).
  KVPool make_kv_pool(int64_t num_slots) const;
  // Logit rows `batch` produces.
  static int64_t num_logit_rows(const ForwardBatch& batch);

  // The parsed config.
  const ModelConfig& config() const { return config_; }
  // The attention backend in use.
  const AttentionBackend& attention() const { return *attention_; }
  // This rank's index in the tensor-parallel group.
  int tp_rank() const { return tp_rank_; }
  // Tensor-parallel ranks.
  int tp_size() const { return tp_size_; }
  // DP attention: this rank's index in its attention-TP group (tp_rank without DP attention).
  int attn_tp_rank() const { return attn_tp_rank_; }
  // Ranks sharing one DP group's attention (tp_size without DP attention).
  int attn_tp_size() const { return attn_tp_size_; }
  // DP group this rank serves (0 without DP attention).
  int attn_dp_rank() const { return attn_dp_rank_; }
  // DP groups (1 without DP attention).
  int dp_size() const { return dp_size_; }
  // DP attention test hook: force the padding mode of every later step (nullopt = the per-step
  // rule, get_dp_padding_mode). Every rank must set the same value.
  void set_dp_padding_mode_override(std::optional<DpPaddingMode> mode) { dp_mode_override_ = mode; }
  // DP attention: the gather plan of the last forward (mode, per-group counts); empty plan before
  // the first one or without DP attention.
  const DpGatherPlan& last_dp_gather_plan() const { return dp_plan_; }
  // Query heads this rank computes.
  int64_t num_local_q_heads() const { return nq_; }
  // KV heads this rank stores (one replicated head when num_key_value_heads < attn_tp_size).
  int64_t num_local_kv_heads() const { return nkv_; }
  // Bytes of weights this rank copied or converted at load (column slices, F16).
  int64_t owned_weight_bytes() const { return arena_.bytes(); }
  // Expert-parallel ranks (1 for dense models).
  int ep_size() const { return ep_size_; }
  // Layer `layer`'s MoE block (router choices of the last forward, stats, impl), null if the
  // layer has a dense MLP.
  SparseMoeBlock* moe_block(int64_t layer) { return layers_.at(layer).moe.get(); }
  // Same, read-only.
  const SparseMoeBlock* moe_block(int64_t layer) const { return layers_.at(layer).moe.get(); }

 private:
  struct LayerWeights {
    std::vector<float> input_norm;         // [hidden]
    std::vector<float> post_norm;          // [hidden]
    kernels::WeightMatrix q, k, v, o;      // attention projections
    std::vector<float> q_bias, k_bias;     // [q_dim], [kv_dim]; empty without attention_bias
    std::vector<float> v_bias, o_bias;     // [kv_dim], [hidden]; o_bias only if the file has it
    std::vector<float> q_norm, k_norm;     // [head_dim]; empty without qk_norm
    kernels::WeightMatrix gate, up, down;  // dense MLP projections (layers without `moe`)
    std::unique_ptr<SparseMoeBlock> moe;   // the layer's MoE block; null for a dense MLP
  };

  // Rows `part` of the named matrix, checked to be [rows, cols] (column-parallel).
  kernels::WeightMatrix column_part(const std::string& name, int64_t rows, int64_t cols,
                                    ShardRange part);
  // Columns `part` of the named matrix, checked to be [rows, cols] (row-parallel).
  kernels::WeightMatrix row_part(const std::string& name, int64_t rows, int64_t cols,
                                 ShardRange part);
  // Elements `part` of the named 1-D tensor of n elements, as f32 (all of it by default).
  std::vector<float> vector1d(const std::string& name, int64_t n, ShardRange part = {0, -1});
  // Builds the embedding and the LM head for this rank.
  void load_vocab(const ModelOptions& options);
  // Builds layer `layer`'s MoE block from its router and this rank's experts (llama_moe.cc).
  std::unique_ptr<SparseMoeBlock> load_moe_block(int64_t layer, const ModelOptions& options);
  // Grows the scratch buffers for `tokens` new tokens, `rows` logit rows and `mlp_rows` MLP rows.
  void reserve(int64_t tokens, int64_t rows, int64_t mlp_rows);
  // Checks the DP attention options and takes the groups (constructor helper).
  void init_dp_attention(const ModelOptions& options);
  // DP attention: this step's gather plan from batch.global_num_tokens or, when empty, from an
  // all-gather of (num_tokens, is extend) over the dp group.
  DpGatherPlan plan_dp_step(const ForwardBatch& batch);
  // The layer's MLP or MoE block over m rows of x (the TP group's all-reduce included).
  void mlp_forward(const LayerWeights& L, const float* x, int64_t m, float* y, ThreadPool& pool);

  ModelConfig config_;
  std::shared_ptr<const WeightStore> weights_;
  WeightArena arena_;  // column slices and f32 copies of F16 weights
  std::unique_ptr<VocabParallelEmbedding> embed_;
  std::vector<LayerWeights> layers_;
  std::vector<float> final_norm_;            // [hidden]
  std::unique_ptr<ParallelLMHead> lm_head_;  // the embedding table when tied
  std::unique_ptr<RotaryEmbedding> rope_;
  std::unique_ptr<AttentionBackend> attention_;
  int tp_rank_ = 0;
  int tp_size_ = 1;
  ProcessGroup* tp_group_ = nullptr;       // null with one rank
  int attn_tp_rank_ = 0;                   // index in the attention-TP group
  int attn_tp_size_ = 1;                   // ranks splitting attention and the vocabulary
  int attn_dp_rank_ = 0;                   // DP group served (DP attention)
  int dp_size_ = 1;                        // DP groups (DP attention)
  ProcessGroup* attn_tp_group_ = nullptr;  // attention all-reduce; null with one attn_tp rank
  ProcessGroup* dp_group_ = nullptr;       // dp_gather; null without DP attention
  std::optional<DpPaddingMode> dp_mode_override_;  // test hook: forced padding mode
  DpGatherPlan dp_plan_;                           // the last step's gather plan
  int64_t nq_;                                     // query heads on this rank
  int64_t nkv_;                                    // KV heads on this rank
  int64_t inter_;                                  // dense MLP intermediate features on this rank
  int ep_size_ = 1;                                // expert-parallel ranks (MoE)
  int64_t q_dim_;                                  // nq_ * head_dim
  int64_t kv_dim_;                                 // nkv_ * head_dim

  // Scratch, grown on demand and reused so that steady decode allocates nothing.
  std::vector<float> hidden_;          // [tokens][hidden], the residual stream
  std::vector<float> normed_;          // [tokens][hidden], normalized input of attention / MLP
  std::vector<float> delta_;           // [tokens][hidden], o_proj / down_proj output
  std::vector<float> q_;               // [tokens][q_dim] (local sizes from here on)
  std::vector<float> k_;               // [tokens][kv_dim]
  std::vector<float> v_;               // [tokens][kv_dim]
  std::vector<float> attn_;            // [tokens][q_dim]
  std::vector<float> gate_;            // [tokens][intermediate]
  std::vector<float> up_;              // [tokens][intermediate]
  std::vector<float> final_;           // [rows][hidden], normalized rows that get logits
  std::vector<float> gnormed_;         // DP attention: [all groups' tokens][hidden], MLP input
  std::vector<float> gdelta_;          // DP attention: [all groups' tokens][hidden], MLP output
  std::vector<float> gather_scratch_;  // DP attention: MAX_LEN's padded send rows
  std::vector<int64_t> logit_tokens_;  // token index of each logit row
};

// Reads config.json and the safetensors of `model_dir` and builds the model; throws
// dpserve::Error for an unsupported architecture or unusable weights.
std::unique_ptr<LlamaForCausalLM> load_model(const std::string& model_dir,
                                             const ModelOptions& options = {});

}  // namespace dpserve
