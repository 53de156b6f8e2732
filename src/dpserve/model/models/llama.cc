#include "dpserve/model/models/llama.h"

#include <cmath>
#include <cstring>
#include <optional>

#include "dpserve/common/errors.h"
#include "dpserve/common/progress.h"
#include "dpserve/layers/activation.h"
#include "dpserve/layers/rms_norm.h"

namespace dpserve {
namespace {

template <typename T>
T* grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

}  // namespace

int resolve_ep_size(const ModelConfig& config, int tp_size, int ep_size) {
  if (!config.is_moe()) return 1;
  return ep_size == 0 ? tp_size : ep_size;
}

void check_tensor_parallel(const ModelConfig& config, int tp_size, const std::string& model_name,
                           int ep_size) {
  const ModelConfig& c = config;
  if (tp_size < 1) throw_error("{}: tp_size must be at least 1, got {}", model_name, tp_size);
  if (c.num_attention_heads % tp_size != 0) {
    throw_error(
        "{}: tensor parallelism needs num_attention_heads ({}) to be divisible by tp_size ({})",
        model_name, c.num_attention_heads, tp_size);
  }
  if (c.is_moe()) {
    const int ep = resolve_ep_size(c, tp_size, ep_size);
    if (ep < 1 || tp_size % ep != 0) {
      throw_error("{}: ep_size ({}) must divide tp_size ({})", model_name, ep, tp_size);
    }
    if (c.num_experts < ep) {
      throw_error("{}: expert parallelism needs at least ep_size ({}) experts, the model has {}",
                  model_name, ep, c.num_experts);
    }
    const int moe_tp = tp_size / ep;
    if (c.moe_intermediate_size % moe_tp != 0) {
      throw_error(
          "{}: with tp_size {} and ep_size {} each expert is split over {} ranks, but its "
          "intermediate size ({}) is not divisible by {}",
          model_name, tp_size, ep, moe_tp, c.moe_intermediate_size, moe_tp);
    }
    if (c.shared_expert_intermediate_size % tp_size != 0) {
      throw_error(
          "{}: tensor parallelism needs shared_expert_intermediate_size ({}) to be divisible by "
          "tp_size ({})",
          model_name, c.shared_expert_intermediate_size, tp_size);
    }
  }
  if (c.has_dense_layers() && c.intermediate_size % tp_size != 0) {
    throw_error(
        "{}: tensor parallelism needs intermediate_size ({}) to be divisible by tp_size ({})",
        model_name, c.intermediate_size, tp_size);
  }
  const int64_t nkv = c.num_key_value_heads;
  if (nkv > 0 && (nkv >= tp_size ? nkv % tp_size != 0 : tp_size % nkv != 0)) {
    throw_error(
        "{}: tensor parallelism needs num_key_value_heads ({}) to be divisible by tp_size ({}), "
        "or tp_size to be a multiple of it (each rank then holds one replicated KV head)",
        model_name, nkv, tp_size);
  }
}

kernels::WeightMatrix LlamaForCausalLM::column_part(const std::string& name, int64_t rows,
                                                    int64_t cols, ShardRange part) {
  return column_parallel_weight(weights_->get(name, {rows, cols}), part, arena_);
}

kernels::WeightMatrix LlamaForCausalLM::row_part(const std::string& name, int64_t rows,
                                                 int64_t cols, ShardRange part) {
  return row_parallel_weight(weights_->get(name, {rows, cols}), part, arena_);
}

std::vector<float> LlamaForCausalLM::vector1d(const std::string& name, int64_t n, ShardRange part) {
  if (part.end < 0) part = {0, n};
  return slice_f32(weights_->get(name, {n}), part);
}

void LlamaForCausalLM::load_vocab(const ModelOptions& options) {
  const ModelConfig& c = config_;
  const int64_t vocab = c.vocab_size, h = c.hidden_size;
  const ShardRange full{0, vocab};
  const ShardRange mine = shard_range(vocab, tp_rank_, tp_size_);
  const bool split_embed = tp_group_ != nullptr && options.vocab_parallel_embedding;
  const bool split_head = tp_group_ != nullptr && options.vocab_parallel_lm_head;
  const ShardRange embed_range = split_embed ? mine : full;
  embed_ = std::make_unique<VocabParallelEmbedding>(
      column_part("model.embed_tokens.weight", vocab, h, embed_range), embed_range, vocab,
      split_embed ? tp_group_ : nullptr);
  const ShardRange head_range = split_head ? mine : full;
  kernels::WeightMatrix head;
  if (c.tie_word_embeddings && embed_range.begin <= head_range.begin &&
      head_range.end <= embed_range.end) {
    // Rows of the embedding shard (no second F16 conversion).
    head = embed_->shard();
    head.rows = head_range.size();
    head.data = static_cast<const uint8_t*>(head.data) +
                (head_range.begin - embed_range.begin) * h * dtype_size(head.dtype);
  } else {
    head = column_part(c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight",
                       vocab, h, head_range);
  }
  lm_head_ = std::make_unique<ParallelLMHead>(head, vocab, split_head ? tp_group_ : nullptr);
}

LlamaForCausalLM::LlamaForCausalLM(const ModelConfig& config,
                                   std::shared_ptr<const WeightStore> weights,
                                   const ModelOptions& options)
    : config_(config),
      weights_(std::move(weights)),
      tp_rank_(options.tp_rank),
      tp_size_(options.tp_size) {
  DPSERVE_CHECK(weights_ != nullptr, "LlamaForCausalLM needs a weight store");
  const ModelConfig& c = config_;
  const int64_t h = c.hidden_size;
  const int64_t hd = c.head_dim;
  if (c.num_key_value_heads <= 0 || c.num_attention_heads % c.num_key_value_heads != 0) {
    throw_error("num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                c.num_attention_heads, c.num_key_value_heads);
  }
  check_tensor_parallel(c, tp_size_, c.architecture, options.ep_size);
  ep_size_ = resolve_ep_size(c, tp_size_, options.ep_size);
  if (tp_rank_ < 0 || tp_rank_ >= tp_size_) {
    throw_error("tp_rank {} is outside [0, tp_size {})", tp_rank_, tp_size_);
  }
  if (tp_size_ > 1) {
    ProcessGroup* g = options.tp_group;
    if (g == nullptr) throw_error("tp_size {} needs a tensor-parallel process group", tp_size_);
    if (g->size() != tp_size_ || g->rank() != tp_rank_) {
      throw_error("process group '{}' is rank {} of {}, but the model is rank {} of tp_size {}",
                  g->name(), g->rank(), g->size(), tp_rank_, tp_size_);
    }
    tp_group_ = g;
  }
  // Heads: query heads split evenly; KV heads split too, or, with fewer KV heads than ranks, each
  // rank holds the one KV head its query heads use (replicated over tp_size / kv_heads ranks).
  nq_ = c.num_attention_heads / tp_size_;
  const int64_t nkv_all = c.num_key_value_heads;
  nkv_ = nkv_all >= tp_size_ ? nkv_all / tp_size_ : 1;
  const int64_t kv_head0 = nkv_all >= tp_size_ ? tp_rank_ * nkv_ : tp_rank_ * nkv_all / tp_size_;
  inter_ = c.has_dense_layers() ? c.intermediate_size / tp_size_ : 0;
  q_dim_ = nq_ * hd;
  kv_dim_ = nkv_ * hd;
  const ShardRange q_part{tp_rank_ * q_dim_, (tp_rank_ + 1) * q_dim_};
  const ShardRange kv_part{kv_head0 * hd, (kv_head0 + nkv_) * hd};
  const ShardRange mlp_part{tp_rank_ * inter_, (tp_rank_ + 1) * inter_};
  const int64_t q_all = c.num_attention_heads * hd, kv_all = nkv_all * hd;
  const int64_t inter_all = c.intermediate_size;

  std::optional<ProgressBar> progress;
  if (options.show_progress) progress.emplace("preparing weights", c.num_hidden_layers + 1);
  auto tick = [&](int64_t n) {
    if (progress) progress->advance(n);
  };
  layers_.resize(c.num_hidden_layers);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& L = layers_[i];
    L.input_norm = vector1d(p + "input_layernorm.weight", h);
    L.q = column_part(p + "self_attn.q_proj.weight", q_all, h, q_part);
    L.k = column_part(p + "self_attn.k_proj.weight", kv_all, h, kv_part);
    L.v = column_part(p + "self_attn.v_proj.weight", kv_all, h, kv_part);
    L.o = row_part(p + "self_attn.o_proj.weight", h, q_all, q_part);
    if (c.attention_bias) {
      L.q_bias = vector1d(p + "self_attn.q_proj.bias", q_all, q_part);
      L.k_bias = vector1d(p + "self_attn.k_proj.bias", kv_all, kv_part);
      L.v_bias = vector1d(p + "self_attn.v_proj.bias", kv_all, kv_part);
      // Llama with attention_bias also biases o_proj; Qwen2 does not.
      if (weights_->has(p + "self_attn.o_proj.bias")) {
        L.o_bias = vector1d(p + "self_attn.o_proj.bias", h);
      }
    }
    if (c.qk_norm) {
      L.q_norm = vector1d(p + "self_attn.q_norm.weight", hd);
      L.k_norm = vector1d(p + "self_attn.k_norm.weight", hd);
    }
    L.post_norm = vector1d(p + "post_attention_layernorm.weight", h);
    if (c.is_moe_layer(i)) {
      L.moe = load_moe_block(i, options);
    } else {
      L.gate = column_part(p + "mlp.gate_proj.weight", inter_all, h, mlp_part);
      L.up = column_part(p + "mlp.up_proj.weight", inter_all, h, mlp_part);
      L.down = row_part(p + "mlp.down_proj.weight", h, inter_all, mlp_part);
    }
    tick(1);
  }
  final_norm_ = vector1d("model.norm.weight", h);
  load_vocab(options);
  tick(1);
  if (progress) progress->finish();

  const int64_t max_pos =
      options.max_positions > 0 ? options.max_positions : c.max_position_embeddings;
  rope_ = std::make_unique<RotaryEmbedding>(hd, max_pos, c.rope_theta, c.rope_scaling);
  AttentionShape shape{nq_, nkv_, hd, static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)))};
  attention_ = make_attention_backend(options.attention_backend, shape);
}

KVPool LlamaForCausalLM::make_kv_pool(int64_t num_slots) const {
  return KVPool(num_slots, config_.num_hidden_layers, nkv_, config_.head_dim);
}

int64_t LlamaForCausalLM::num_logit_rows(const ForwardBatch& batch) {
  if (batch.return_all_logits) return batch.num_tokens();
  int64_t rows = 0;
  for (int32_t n : batch.extend_seq_lens) rows += n > 0 ? 1 : 0;
  return rows;
}

void LlamaForCausalLM::reserve(int64_t tokens, int64_t rows) {
  const ModelConfig& c = config_;
  grow(hidden_, tokens * c.hidden_size);
  grow(normed_, tokens * c.hidden_size);
  grow(delta_, tokens * c.hidden_size);
  grow(q_, tokens * q_dim_);
  grow(k_, tokens * kv_dim_);
  grow(v_, tokens * kv_dim_);
  grow(attn_, tokens * q_dim_);
  grow(gate_, tokens * inter_);
  grow(up_, tokens * inter_);
  grow(final_, rows * c.hidden_size);
}

void LlamaForCausalLM::forward(const ForwardBatch& batch, KVPool& kv, ThreadPool& pool,
                               std::vector<float>& logits) {
  const ModelConfig& c = config_;
  const int64_t T = batch.num_tokens();
  const int64_t H = c.hidden_size;
  const int64_t hd = c.head_dim;
  const int64_t nq = nq_;    // local heads
  const int64_t nkv = nkv_;  // local KV heads
  const int64_t inter = inter_;
  const float eps = static_cast<float>(c.rms_norm_eps);
  DPSERVE_CHECK(batch.positions.size() == static_cast<size_t>(T) &&
                    batch.out_cache_loc.size() == static_cast<size_t>(T),
                "ForwardBatch: positions/out_cache_loc must have one entry per token");
  DPSERVE_CHECK(
      kv.num_layers() == c.num_hidden_layers && kv.num_kv_heads() == nkv && kv.head_dim() == hd,
      "KV pool shape does not match the model");

  // Which tokens get logits.
  logit_tokens_.clear();
  if (batch.return_all_logits) {
    for (int64_t t = 0; t < T; ++t) logit_tokens_.push_back(t);
  } else {
    int64_t start = 0;
    DPSERVE_CHECK(batch.extend_seq_lens.size() == static_cast<size_t>(batch.batch_size),
                  "ForwardBatch: extend_seq_lens must have batch_size entries");
    for (int32_t n : batch.extend_seq_lens) {
      start += n;
      if (n > 0) logit_tokens_.push_back(start - 1);
    }
    DPSERVE_CHECK(start == T, "extend_seq_lens sum {} != num_tokens {}", start, T);
  }
  const int64_t R = static_cast<int64_t>(logit_tokens_.size());
  logits.resize(R * c.vocab_size);
  if (T == 0) return;
  reserve(T, R);

  float* hidden = hidden_.data();
  float* normed = normed_.data();
  float* delta = delta_.data();
  float* q = q_.data();
  float* k = k_.data();
  float* v = v_.data();
  auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };

  embed_->forward(batch.input_ids.data(), T, hidden);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = layers_[l];
    if (l == 0) {
      rms_norm(hidden, L.input_norm.data(), T, H, eps, normed, &pool);
    } else {  // the previous layer's MLP output joins the residual here
      add_rms_norm(hidden, delta, L.input_norm.data(), T, H, eps, normed, &pool);
    }
    kernels::linear(normed, T, L.q, bias(L.q_bias), q, pool);
    kernels::linear(normed, T, L.k, bias(L.k_bias), k, pool);
    kernels::linear(normed, T, L.v, bias(L.v_bias), v, pool);
    if (c.qk_norm) {
      rms_norm(q, L.q_norm.data(), T * nq, hd, eps, q, &pool);
      rms_norm(k, L.k_norm.data(), T * nkv, hd, eps, k, &pool);
    }
    rope_->apply(q, T, nq, q_dim_, batch.positions.data(), &pool);
    rope_->apply(k, T, nkv, kv_dim_, batch.positions.data(), &pool);
    kv.store(l, batch.out_cache_loc.data(), T, k, v, kv_dim_);
    attention_->forward(q, batch, kv, l, attn_.data(), pool);
    row_parallel_linear(attn_.data(), T, L.o, bias(L.o_bias), delta, pool, tp_group_);
    add_rms_norm(hidden, delta, L.post_norm.data(), T, H, eps, normed, &pool);
    if (L.moe) {  // hidden rows in, hidden rows out (summed over the TP group)
      L.moe->forward(normed, T, delta, pool);
      continue;
    }
    kernels::linear(normed, T, L.gate, nullptr, gate_.data(), pool);
    kernels::linear(normed, T, L.up, nullptr, up_.data(), pool);
    silu_and_mul(gate_.data(), up_.data(), T * inter, gate_.data(), &pool);
    row_parallel_linear(gate_.data(), T, L.down, nullptr, delta, pool, tp_group_);
  }
  // Final residual add and norm, only for the rows that get logits.
  float* fin = final_.data();
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = logit_tokens_[r];
    for (int64_t i = 0; i < H; ++i) fin[r * H + i] = hidden[t * H + i] + delta[t * H + i];
  }
  rms_norm(fin, final_norm_.data(), R, H, eps, fin, &pool);
  lm_head_->forward(fin, R, logits.data(), pool);
}

std::vector<float> LlamaForCausalLM::forward(const ForwardBatch& batch, KVPool& kv,
                                             ThreadPool& pool) {
  std::vector<float> logits;
  forward(batch, kv, pool, logits);
  return logits;
}

std::unique_ptr<LlamaForCausalLM> load_model(const std::string& model_dir,
                                             const ModelOptions& options) {
  ModelConfig config = ModelConfig::from_dir(model_dir);
  check_tensor_parallel(config, options.tp_size, model_dir, options.ep_size);
  auto weights = std::make_shared<const WeightStore>(model_dir);
  return std::make_unique<LlamaForCausalLM>(config, std::move(weights), options);
}

}  // namespace dpserve
