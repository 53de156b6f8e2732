#pragma once
// The Llama family decoder (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM with q/k/v
// bias, Qwen3ForCausalLM with per-head q/k RMSNorm) on the CPU: f32 activations, weights used in
// place from the safetensors mapping (F16 converted to f32 at load).

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "dpserve/common/thread_pool.h"
#include "dpserve/kernels/cpu/linear.h"
#include "dpserve/layers/attention/attention_backend.h"
#include "dpserve/layers/embedding.h"
#include "dpserve/layers/rotary_embedding.h"
#include "dpserve/mem_cache/kv_pool.h"
#include "dpserve/model/forward_batch.h"
#include "dpserve/model/model_config.h"
#include "dpserve/model/safetensors.h"

namespace dpserve {

// Choices made when building a model.
struct ModelOptions {
  std::string attention_backend = "flash";  // "flash" | "native"
  int64_t max_positions = 0;  // rotary table length; 0 = config's max_position_embeddings
  bool show_progress = true;  // progress bar while preparing weights (only drawn on a tty)
};

class LlamaForCausalLM {
 public:
  // Looks up and shape-checks every tensor the config implies (throws dpserve::Error naming a
  // missing or misshapen tensor). Keeps `weights` alive: matrices point into its mapping.
  LlamaForCausalLM(const ModelConfig& config, std::shared_ptr<const WeightStore> weights,
                   const ModelOptions& options = {});

  // Runs the decoder over `batch`: writes each new token's K/V into `kv` at out_cache_loc and
  // fills `logits` ([rows][vocab], rows = the last new token of each sequence, or every new token
  // when batch.return_all_logits). Reuses internal scratch: not reentrant.
  void forward(const ForwardBatch& batch, KVPool& kv, ThreadPool& pool, std::vector<float>& logits);
  // Same, returning a new vector (convenient in tests).
  std::vector<float> forward(const ForwardBatch& batch, KVPool& kv, ThreadPool& pool);

  // A KV pool of `num_slots` token slots shaped for this model.
  KVPool make_kv_pool(int64_t num_slots) const;
  // Logit rows `batch` produces.
  static int64_t num_logit_rows(const ForwardBatch& batch);

  // The parsed config.
  const ModelConfig& config() const { return config_; }
  // The attention backend in use.
  const AttentionBackend& attention() const { return *attention_; }

 private:
  struct LayerWeights {
    std::vector<float> input_norm;         // [hidden]
    std::vector<float> post_norm;          // [hidden]
    kernels::WeightMatrix q, k, v, o;      // attention projections
    std::vector<float> q_bias, k_bias;     // [q_dim], [kv_dim]; empty without attention_bias
    std::vector<float> v_bias, o_bias;     // [kv_dim], [hidden]; o_bias only if the file has it
    std::vector<float> q_norm, k_norm;     // [head_dim]; empty without qk_norm
    kernels::WeightMatrix gate, up, down;  // MLP projections
  };

  // The named matrix checked to be [rows, cols]; F16 is converted into owned f32 storage.
  kernels::WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols);
  // The named 1-D tensor of n elements as f32.
  std::vector<float> vector1d(const std::string& name, int64_t n);
  // Grows the scratch buffers for `tokens` new tokens and `rows` logit rows.
  void reserve(int64_t tokens, int64_t rows);

  ModelConfig config_;
  std::shared_ptr<const WeightStore> weights_;
  std::deque<std::vector<float>> converted_;  // f32 copies of F16 matrices
  std::unique_ptr<Embedding> embed_;
  std::vector<LayerWeights> layers_;
  std::vector<float> final_norm_;  // [hidden]
  kernels::WeightMatrix lm_head_;  // [vocab, hidden]; the embedding table when tied
  std::unique_ptr<RotaryEmbedding> rope_;
  std::unique_ptr<AttentionBackend> attention_;
  int64_t q_dim_;   // num_attention_heads * head_dim
  int64_t kv_dim_;  // num_key_value_heads * head_dim

  // Scratch, grown on demand and reused so that steady decode allocates nothing.
  std::vector<float> hidden_;          // [tokens][hidden], the residual stream
  std::vector<float> normed_;          // [tokens][hidden], normalized input of attention / MLP
  std::vector<float> delta_;           // [tokens][hidden], o_proj / down_proj output
  std::vector<float> q_;               // [tokens][q_dim]
  std::vector<float> k_;               // [tokens][kv_dim]
  std::vector<float> v_;               // [tokens][kv_dim]
  std::vector<float> attn_;            // [tokens][q_dim]
  std::vector<float> gate_;            // [tokens][intermediate]
  std::vector<float> up_;              // [tokens][intermediate]
  std::vector<float> final_;           // [rows][hidden], normalized rows that get logits
  std::vector<int64_t> logit_tokens_;  // token index of each logit row
};

// Reads config.json and the safetensors of `model_dir` and builds the model; throws
// dpserve::Error for an unsupported architecture or unusable weights.
std::unique_ptr<LlamaForCausalLM> load_model(const std::string& model_dir,
                                             const ModelOptions& options = {});

}  // namespace dpserve
