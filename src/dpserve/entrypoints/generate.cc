#include "dpserve/entrypoints/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <set>

#include <spdlog/spdlog.h>

#include "dpserve/chat_template/chat_template.h"
#include "dpserve/common/errors.h"
#include "dpserve/common/thread_pool.h"
#include "dpserve/entrypoints/batch_generate.h"
#include "dpserve/model/models/llama.h"
#include "dpserve/tokenizer/detokenizer.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {

namespace {

// Picks the next token from one row of logits: argmax when temperature is 0, otherwise a draw
// from softmax(logits / temperature).
int32_t pick_token(const float* logits, int64_t vocab, double temperature, std::mt19937_64& rng) {
  if (temperature <= 0.0) {
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  const float max_logit = *std::max_element(logits, logits + vocab);
  std::vector<double> probs(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) {
    probs[static_cast<size_t>(i)] = std::exp((logits[i] - max_logit) / temperature);
  }
  std::discrete_distribution<int32_t> dist(probs.begin(), probs.end());
  return dist(rng);
}

// A one-sequence batch: `ids` are the new tokens, appended after `prefix_len` cached ones;
// `slots` holds the KV slot of every token of the sequence so far (prefix and new).
ForwardBatch single_sequence_batch(const std::vector<int32_t>& ids, int32_t prefix_len,
                                   const std::vector<int32_t>& slots) {
  ForwardBatch b;
  const auto n = static_cast<int32_t>(ids.size());
  b.mode = prefix_len == 0 || n > 1 ? ForwardMode::kExtend : ForwardMode::kDecode;
  b.batch_size = 1;
  b.input_ids = ids;
  b.positions.resize(ids.size());
  std::iota(b.positions.begin(), b.positions.end(), prefix_len);
  b.out_cache_loc.assign(slots.begin() + prefix_len, slots.begin() + prefix_len + n);
  b.seq_lens = {prefix_len + n};
  b.extend_prefix_lens = {prefix_len};
  b.extend_seq_lens = {n};
  b.kv_indptr = {0, prefix_len + n};
  b.kv_indices.assign(slots.begin(), slots.begin() + prefix_len + n);
  return b;
}

}  // namespace

std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, const std::string& tok_dir,
                                   const std::string& text, bool chat) {
  // With --chat the prompt becomes one user message rendered by the model's chat template, which
  // writes its own special tokens (as transformers' apply_chat_template does).
  if (!chat) return tokenizer.encode(text, /*add_special_tokens=*/true);
  const ChatTemplate tmpl = ChatTemplate::from_tokenizer_config(tok_dir + "/tokenizer_config.json");
  ChatTemplateOptions opts;
  opts.add_generation_prompt = true;
  const nlohmann::ordered_json messages = {{{"role", "user"}, {"content", text}}};
  return tokenizer.encode(tmpl.render(messages, opts), /*add_special_tokens=*/false);
}

int run_generate(const GenerateArgs& args) {
  if (!args.prompts_file.empty()) return run_batch_generate(args);
  const int threads = args.num_threads > 0 ? args.num_threads : default_num_threads();
  ThreadPool pool(threads);
  const std::string tok_dir = args.tokenizer_path.empty() ? args.model_path : args.tokenizer_path;
  ModelConfig::from_dir(args.model_path);  // a bad --model-path is reported before anything else
  std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(tok_dir);
  ModelOptions options;
  options.attention_backend = args.attention_backend;
  std::unique_ptr<LlamaForCausalLM> model = load_model(args.model_path, options);
  const ModelConfig& cfg = model->config();

  std::vector<int32_t> prompt_ids = encode_prompt(*tokenizer, tok_dir, args.prompt, args.chat);
  if (prompt_ids.empty()) throw_error("--prompt: the prompt encodes to no tokens");
  const int64_t context = cfg.max_position_embeddings;
  if (static_cast<int64_t>(prompt_ids.size()) >= context) {
    throw_error("--prompt: {} tokens do not fit the model's context length of {}",
                prompt_ids.size(), context);
  }
  for (int32_t id : prompt_ids) {
    if (id < 0 || id >= cfg.vocab_size) {
      throw_error("tokenizer in {} produced id {} outside the model's vocab_size {}", tok_dir, id,
                  cfg.vocab_size);
    }
  }
  const int64_t max_new =
      std::min<int64_t>(args.max_new_tokens, context - static_cast<int64_t>(prompt_ids.size()));
  std::set<int32_t> stop_ids(tokenizer->eos_token_ids().begin(), tokenizer->eos_token_ids().end());
  for (int64_t id : cfg.eos_token_ids) stop_ids.insert(static_cast<int32_t>(id));

  KVPool kv = model->make_kv_pool(static_cast<int64_t>(prompt_ids.size()) + max_new);
  std::optional<std::vector<int32_t>> slots = kv.alloc(kv.size());
  DPSERVE_CHECK(slots.has_value(), "a fresh KV pool must hand out all its slots");

  std::mt19937_64 rng(args.seed);
  IncrementalDetokenizer detok(*tokenizer, /*skip_special_tokens=*/true, prompt_ids);
  if (!args.chat) std::fputs(args.prompt.c_str(), stdout);  // a completion continues the prompt
  std::fflush(stdout);

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits;
  model->forward(single_sequence_batch(prompt_ids, 0, *slots), kv, pool, logits);
  const auto t1 = std::chrono::steady_clock::now();
  auto seq_len = static_cast<int32_t>(prompt_ids.size());
  int64_t generated = 0;
  std::string finish = "length";
  while (generated < max_new) {
    const int32_t next = pick_token(logits.data(), cfg.vocab_size, args.temperature, rng);
    ++generated;
    if (!args.ignore_eos && stop_ids.count(next) != 0) {
      finish = "stop";
      break;
    }
    const std::string piece = detok.add(next);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    if (generated == max_new) break;
    model->forward(single_sequence_batch({next}, seq_len, *slots), kv, pool, logits);
    ++seq_len;
  }
  const std::string tail = detok.flush();
  std::fwrite(tail.data(), 1, tail.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const auto t2 = std::chrono::steady_clock::now();
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  spdlog::info(
      "prompt {} tokens in {:.3f} s ({:.1f} tok/s); generated {} tokens in {:.3f} s "
      "({:.1f} tok/s); finish_reason={}",
      prompt_ids.size(), prefill_s, static_cast<double>(prompt_ids.size()) / prefill_s, generated,
      decode_s, static_cast<double>(generated) / std::max(decode_s, 1e-9), finish);
  return 0;
}

}  // namespace dpserve
