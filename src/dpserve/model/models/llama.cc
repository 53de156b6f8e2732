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

kernels::WeightMatrix LlamaForCausalLM::matrix(const std::string& name, int64_t rows,
                                               int64_t cols) {
  const TensorView& t = weights_->get(name, {rows, cols});
  kernels::WeightMatrix w{t.dtype, rows, cols, t.data};
  if (t.dtype == DType::F16) {
    converted_.push_back(to_f32(t));
    w.dtype = DType::F32;
    w.data = converted_.back().data();
  }
  return w;
}

std::vector<float> LlamaForCausalLM::vector1d(const std::string& name, int64_t n) {
  return to_f32(weights_->get(name, {n}));
}

LlamaForCausalLM::LlamaForCausalLM(const ModelConfig& config,
                                   std::shared_ptr<const WeightStore> weights,
                                   const ModelOptions& options)
    : config_(config), weights_(std::move(weights)) {
  DPSERVE_CHECK(weights_ != nullptr, "LlamaForCausalLM needs a weight store");
  const ModelConfig& c = config_;
  const int64_t h = c.hidden_size;
  const int64_t hd = c.head_dim;
  const int64_t inter = c.intermediate_size;
  q_dim_ = c.num_attention_heads * hd;
  kv_dim_ = c.num_key_value_heads * hd;
  if (c.num_key_value_heads <= 0 || c.num_attention_heads % c.num_key_value_heads != 0) {
    throw_error("num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                c.num_attention_heads, c.num_key_value_heads);
  }

  const int64_t per_layer = 9 + (c.attention_bias ? 3 : 0) + (c.qk_norm ? 2 : 0);
  std::optional<ProgressBar> progress;
  if (options.show_progress) {
    progress.emplace("preparing weights",
                     2 + c.num_hidden_layers * per_layer + (c.tie_word_embeddings ? 0 : 1));
  }
  auto tick = [&](int64_t n) {
    if (progress) progress->advance(n);
  };
  embed_ = std::make_unique<Embedding>(matrix("model.embed_tokens.weight", c.vocab_size, h));
  tick(1);
  layers_.resize(c.num_hidden_layers);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& L = layers_[i];
    L.input_norm = vector1d(p + "input_layernorm.weight", h);
    L.q = matrix(p + "self_attn.q_proj.weight", q_dim_, h);
    L.k = matrix(p + "self_attn.k_proj.weight", kv_dim_, h);
    L.v = matrix(p + "self_attn.v_proj.weight", kv_dim_, h);
    L.o = matrix(p + "self_attn.o_proj.weight", h, q_dim_);
    if (c.attention_bias) {
      L.q_bias = vector1d(p + "self_attn.q_proj.bias", q_dim_);
      L.k_bias = vector1d(p + "self_attn.k_proj.bias", kv_dim_);
      L.v_bias = vector1d(p + "self_attn.v_proj.bias", kv_dim_);
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
    L.gate = matrix(p + "mlp.gate_proj.weight", inter, h);
    L.up = matrix(p + "mlp.up_proj.weight", inter, h);
    L.down = matrix(p + "mlp.down_proj.weight", h, inter);
    tick(per_layer);
  }
  final_norm_ = vector1d("model.norm.weight", h);
  tick(1);
  if (c.tie_word_embeddings) {
    lm_head_ = embed_->table();
  } else {
    lm_head_ = matrix("lm_head.weight", c.vocab_size, h);
    tick(1);
  }
  if (progress) progress->finish();

  const int64_t max_pos =
      options.max_positions > 0 ? options.max_positions : c.max_position_embeddings;
  rope_ = std::make_unique<RotaryEmbedding>(hd, max_pos, c.rope_theta, c.rope_scaling);
  AttentionShape shape{c.num_attention_heads, c.num_key_value_heads, hd,
                       static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)))};
  attention_ = make_attention_backend(options.attention_backend, shape);
}

KVPool LlamaForCausalLM::make_kv_pool(int64_t num_slots) const {
  return KVPool(num_slots, config_.num_hidden_layers, config_.num_key_value_heads,
                config_.head_dim);
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
  grow(gate_, tokens * c.intermediate_size);
  grow(up_, tokens * c.intermediate_size);
  grow(final_, rows * c.hidden_size);
}

void LlamaForCausalLM::forward(const ForwardBatch& batch, KVPool& kv, ThreadPool& pool,
                               std::vector<float>& logits) {
  const ModelConfig& c = config_;
  const int64_t T = batch.num_tokens();
  const int64_t H = c.hidden_size;
  const int64_t hd = c.head_dim;
  const int64_t nq = c.num_attention_heads;
  const int64_t nkv = c.num_key_value_heads;
  const int64_t inter = c.intermediate_size;
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
    kernels::linear(attn_.data(), T, L.o, bias(L.o_bias), delta, pool);
    add_rms_norm(hidden, delta, L.post_norm.data(), T, H, eps, normed, &pool);
    kernels::linear(normed, T, L.gate, nullptr, gate_.data(), pool);
    kernels::linear(normed, T, L.up, nullptr, up_.data(), pool);
    silu_and_mul(gate_.data(), up_.data(), T * inter, gate_.data(), &pool);
    kernels::linear(gate_.data(), T, L.down, nullptr, delta, pool);
  }
  // Final residual add and norm, only for the rows that get logits.
  float* fin = final_.data();
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = logit_tokens_[r];
    for (int64_t i = 0; i < H; ++i) fin[r * H + i] = hidden[t * H + i] + delta[t * H + i];
  }
  rms_norm(fin, final_norm_.data(), R, H, eps, fin, &pool);
  kernels::linear(fin, R, lm_head_, nullptr, logits.data(), pool);
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
  auto weights = std::make_shared<const WeightStore>(model_dir);
  return std::make_unique<LlamaForCausalLM>(config, std::move(weights), options);
}

}  // namespace dpserve
