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

// The flag-level DP attention checks (no groups needed).
void check_dp_attention_flags(const ModelOptions& o) {
  if (o.dp_size < 1) throw_error("ModelOptions: dp_size must be at least 1, got {}", o.dp_size);
  if (!o.enable_dp_attention && o.dp_size != 1) {
    throw_error(
        "ModelOptions: dp_size {} needs enable_dp_attention (plain data parallelism builds "
        "dp_size independent models, each with dp_size 1)",
        o.dp_size);
  }
  if (o.enable_dp_attention) validate_parallel_flags(o.tp_size, o.dp_size, true);
}

// Throws unless `g` is rank `rank` of `size`.
void check_group(ProcessGroup* g, const char* what, int rank, int size) {
  if (g->size() != size || g->rank() != rank) {
    throw_error("process group '{}' is rank {} of {}, but the model's {} is rank {} of {}",
                g->name(), g->rank(), g->size(), what, rank, size);
  }
}

}  // namespace

int attention_tp_size(const ModelOptions& options) {
  if (!options.enable_dp_attention || options.dp_size < 1 || options.tp_size % options.dp_size) {
    return options.tp_size;
  }
  return options.tp_size / options.dp_size;
}

int resolve_ep_size(const ModelConfig& config, int tp_size, int ep_size) {
  if (!config.is_moe()) return 1;
  return ep_size == 0 ? tp_size : ep_size;
}

void check_tensor_parallel(const ModelConfig& config, int tp_size, const std::string& model_name,
                           int ep_size, int attn_tp_size) {
  const ModelConfig& c = config;
  if (tp_size < 1) throw_error("{}: tp_size must be at least 1, got {}", model_name, tp_size);
  // Attention (heads, KV heads) is split over attn_tp_size ranks: tp_size without DP attention.
  const int a = attn_tp_size > 0 ? attn_tp_size : tp_size;
  const std::string a_name =
      a == tp_size ? "tp_size" : "attn_tp_size (tp_size / dp_size under DP attention)";
  if (c.num_attention_heads % a != 0) {
    throw_error("{}: tensor parallelism needs num_attention_heads ({}) to be divisible by {} ({})",
                model_name, c.num_attention_heads, a_name, a);
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
  if (nkv > 0 && (nkv >= a ? nkv % a != 0 : a % nkv != 0)) {
    throw_error(
        "{}: tensor parallelism needs num_key_value_heads ({}) to be divisible by {} ({}), "
        "or {} to be a multiple of it (each rank then holds one replicated KV head)",
        model_name, nkv, a_name, a, a == tp_size ? "tp_size" : "attn_tp_size");
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
  // The vocabulary is split over the attention-TP group (all TP ranks without DP attention):
  // under DP attention each DP group embeds and computes logits for its own tokens only.
  const ShardRange mine = shard_range(vocab, attn_tp_rank_, attn_tp_size_);
  const bool split_embed = attn_tp_group_ != nullptr && options.vocab_parallel_embedding;
  const bool split_head = attn_tp_group_ != nullptr && options.vocab_parallel_lm_head;
  const ShardRange embed_range = split_embed ? mine : full;
  embed_ = std::make_unique<VocabParallelEmbedding>(
      column_part("model.embed_tokens.weight", vocab, h, embed_range), embed_range, vocab,
      split_embed ? attn_tp_group_ : nullptr);
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
  lm_head_ = std::make_unique<ParallelLMHead>(head, vocab, split_head ? attn_tp_group_ : nullptr);
}

void LlamaForCausalLM::init_dp_attention(const ModelOptions& options) {
  attn_tp_rank_ = tp_rank_;
  attn_tp_size_ = tp_size_;
  attn_tp_group_ = tp_group_;
  if (!options.enable_dp_attention) return;
  const DpAttentionWorldInfo info =
      compute_dp_attention_world_info(true, tp_rank_, tp_size_, options.dp_size);
  attn_tp_rank_ = info.attn_tp_rank;
  attn_tp_size_ = info.attn_tp_size;
  attn_dp_rank_ = info.attn_dp_rank;
  dp_size_ = options.dp_size;
  attn_tp_group_ = nullptr;
  if (ProcessGroup* g = options.attn_tp_group) {
    check_group(g, "attn_tp group", attn_tp_rank_, attn_tp_size_);
    if (attn_tp_size_ > 1) attn_tp_group_ = g;
  } else if (attn_tp_size_ == tp_size_) {
    attn_tp_group_ = tp_group_;  // dp_size 1: attention over the TP group
  } else if (attn_tp_size_ > 1) {
    throw_error(
        "DP attention with attn_tp_size {} (tp_size {} / dp_size {}) needs an attn_tp group",
        attn_tp_size_, tp_size_, dp_size_);
  }
  if (ProcessGroup* g = options.dp_group) {
    check_group(g, "dp group", attn_dp_rank_, dp_size_);
    if (dp_size_ > 1) dp_group_ = g;
  } else if (dp_size_ > 1) {
    throw_error("DP attention with dp_size {} needs a dp group (one rank per DP group)", dp_size_);
  }
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
  check_dp_attention_flags(options);
  check_tensor_parallel(c, tp_size_, c.architecture, options.ep_size, attention_tp_size(options));
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
  init_dp_attention(options);
  // Heads: query heads split evenly over the attention-TP ranks (all TP ranks without DP
  // attention); KV heads split too, or, with fewer KV heads than ranks, each rank holds the one
  // KV head its query heads use (replicated over attn_tp_size / kv_heads ranks).
  const int a = attn_tp_size_, ar = attn_tp_rank_;
  nq_ = c.num_attention_heads / a;
  const int64_t nkv_all = c.num_key_value_heads;
  nkv_ = nkv_all >= a ? nkv_all / a : 1;
  const int64_t kv_head0 = nkv_all >= a ? ar * nkv_ : ar * nkv_all / a;
  inter_ = c.has_dense_layers() ? c.intermediate_size / tp_size_ : 0;
  q_dim_ = nq_ * hd;
  kv_dim_ = nkv_ * hd;
  const ShardRange q_part{ar * q_dim_, (ar + 1) * q_dim_};
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

void LlamaForCausalLM::reserve(int64_t tokens, int64_t rows, int64_t mlp_rows) {
  const ModelConfig& c = config_;
  grow(hidden_, tokens * c.hidden_size);
  grow(normed_, tokens * c.hidden_size);
  grow(delta_, tokens * c.hidden_size);
  grow(q_, tokens * q_dim_);
  grow(k_, tokens * kv_dim_);
  grow(v_, tokens * kv_dim_);
  grow(attn_, tokens * q_dim_);
  grow(gate_, mlp_rows * inter_);
  grow(up_, mlp_rows * inter_);
  grow(final_, rows * c.hidden_size);
  if (dp_size_ > 1) {
    grow(gnormed_, dp_plan_.buffer_rows() * c.hidden_size);
    grow(gdelta_, mlp_rows * c.hidden_size);
  }
}

DpGatherPlan LlamaForCausalLM::plan_dp_step(const ForwardBatch& batch) {
  const int64_t T = batch.num_tokens();
  std::vector<int64_t> counts = batch.global_num_tokens;
  bool extend = batch.is_extend_in_batch;
  if (counts.empty()) {  // no step sync from the caller: all-gather (tokens, extend) ourselves
    const int64_t mine[2] = {T, batch.mode == ForwardMode::kExtend && T > 0 ? 1 : 0};
    std::vector<int64_t> all(2 * static_cast<size_t>(dp_size_));
    dp_group_->all_gather_bytes(mine, sizeof(mine), all.data());
    extend = false;
    for (int g = 0; g < dp_size_; ++g) {
      counts.push_back(all[2 * g]);
      extend = extend || all[2 * g + 1] != 0;
    }
  }
  DPSERVE_CHECK(counts.size() == static_cast<size_t>(dp_size_),
                "ForwardBatch: global_num_tokens has {} entries, dp_size is {}", counts.size(),
                dp_size_);
  DPSERVE_CHECK(counts[attn_dp_rank_] == T,
                "ForwardBatch: global_num_tokens[{}] = {} but the batch has {} tokens",
                attn_dp_rank_, counts[attn_dp_rank_], T);
  const DpPaddingMode mode =
      dp_mode_override_ ? *dp_mode_override_ : get_dp_padding_mode(extend, counts);
  return make_dp_gather_plan(counts, mode);
}

void LlamaForCausalLM::mlp_forward(const LayerWeights& L, const float* x, int64_t m, float* y,
                                   ThreadPool& pool) {
  if (L.moe) {  // hidden rows in, hidden rows out (summed over the TP group)
    L.moe->forward(x, m, y, pool);
    return;
  }
  kernels::linear(x, m, L.gate, nullptr, gate_.data(), pool);
  kernels::linear(x, m, L.up, nullptr, up_.data(), pool);
  silu_and_mul(gate_.data(), up_.data(), m * inter_, gate_.data(), &pool);
  row_parallel_linear(gate_.data(), m, L.down, nullptr, y, pool, tp_group_);
}

void LlamaForCausalLM::forward(const ForwardBatch& batch, KVPool& kv, ThreadPool& pool,
                               std::vector<float>& logits) {
  const ModelConfig& c = config_;
  const int64_t T = batch.num_tokens();
  const int64_t H = c.hidden_size;
  const int64_t hd = c.head_dim;
  const int64_t nq = nq_;    // local heads
  const int64_t nkv = nkv_;  // local KV heads
  const float eps = static_cast<float>(c.rms_norm_eps);
  DPSERVE_CHECK(batch.positions.size() == static_cast<size_t>(T) &&
                    batch.out_cache_loc.size() == static_cast<size_t>(T),
                "ForwardBatch: positions/out_cache_loc must have one entry per token");
  DPSERVE_CHECK(batch.mode != ForwardMode::kIdle || (T == 0 && batch.batch_size == 0),
                "ForwardBatch: an idle batch has no sequences and no tokens");
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
  // DP attention: the MLP runs over the tokens of every DP group (M rows); an idle group (T == 0)
  // skips attention but joins each layer's gather and MLP collectives. When no group has tokens
  // no rank runs a collective.
  const bool dp = dp_size_ > 1;
  int64_t M = T;
  if (dp) {
    dp_plan_ = plan_dp_step(batch);
    M = dp_plan_.total_tokens();
  }
  if (M == 0) return;
  reserve(T, R, M);

  float* hidden = hidden_.data();
  float* normed = normed_.data();
  float* delta = delta_.data();
  float* q = q_.data();
  float* k = k_.data();
  float* v = v_.data();
  auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };

  if (T > 0) embed_->forward(batch.input_ids.data(), T, hidden);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = layers_[l];
    if (T > 0) {  // attention over this group's tokens, heads split over attn_tp
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
      row_parallel_linear(attn_.data(), T, L.o, bias(L.o_bias), delta, pool, attn_tp_group_);
      add_rms_norm(hidden, delta, L.post_norm.data(), T, H, eps, normed, &pool);
    }
    if (!dp) {
      mlp_forward(L, normed, T, delta, pool);
      continue;
    }
    // DP attention: every group's rows in, the MLP over the TP group, this group's rows out.
    dp_gather(normed, H, gnormed_.data(), dp_plan_, attn_dp_rank_, dp_group_, gather_scratch_);
    mlp_forward(L, gnormed_.data(), M, gdelta_.data(), pool);
    dp_scatter(gdelta_.data(), H, delta, dp_plan_, attn_dp_rank_);
  }
  if (R == 0) return;
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
  check_dp_attention_flags(options);
  check_tensor_parallel(config, options.tp_size, model_dir, options.ep_size,
                        attention_tp_size(options));
  auto weights = std::make_shared<const WeightStore>(model_dir);
  return std::make_unique<LlamaForCausalLM>(config, std::move(weights), options);
}

}  // namespace dpserve
