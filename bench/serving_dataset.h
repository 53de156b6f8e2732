#pragma once
// Workloads for bench_serving (after SGLang's bench_serving datasets): `random` (uniform prompt
// and output lengths in [L * range_ratio, L]) and `generated-shared-prefix` (groups of requests
// that share a long system prompt). Prompts are random token ids, or random words for servers
// that are sent text.

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace dpserve::bench {

// One benchmark request: the prompt (token ids or text) and how many tokens to generate.
struct BenchRequest {
  std::vector<int32_t> input_ids;  // prompt as token ids (empty for a text prompt)
  std::string text;                // prompt as text (empty for a token-id prompt)
  int64_t prompt_len = 0;          // prompt tokens as generated (text: the target count)
  int64_t output_len = 0;          // tokens to generate (max_new_tokens with ignore_eos)
  int group = -1;                  // generated-shared-prefix: the prefix group, else -1
};

// How to build the workload; the flag names are SGLang's.
struct DatasetOptions {
  std::string name = "random";           // "random" or "generated-shared-prefix"
  bool text_prompts = false;             // random words instead of random token ids
  int64_t vocab_size = 0;                // token ids are drawn from [1, vocab_size)
  double tokens_per_word = 1.0;          // text prompts: measured tokens per random word
  int64_t num_prompts = 1000;            // random: number of requests
  int64_t random_input_len = 1024;       // random: longest prompt
  int64_t random_output_len = 1024;      // random: longest output
  double random_range_ratio = 0.0;       // random: shortest = max(1, int(L * ratio))
  int64_t gsp_num_groups = 64;           // generated-shared-prefix: distinct system prompts
  int64_t gsp_prompts_per_group = 16;    // generated-shared-prefix: questions per system prompt
  int64_t gsp_system_prompt_len = 2048;  // generated-shared-prefix: tokens of a system prompt
  int64_t gsp_question_len = 128;        // generated-shared-prefix: tokens of a question
  int64_t gsp_output_len = 256;          // generated-shared-prefix: output tokens per request
  uint64_t seed = 1;                     // prompts, lengths and order
};

// Builds the requests. generated-shared-prefix makes num_groups * prompts_per_group requests in
// a shuffled order (SGLang shuffles them too). Throws dpserve::Error for impossible options.
std::vector<BenchRequest> make_dataset(const DatasetOptions& o);

// `n` random words from a fixed list of common English words, separated by spaces.
std::string random_words(std::mt19937_64& rng, int64_t n);

// Seconds from the start at which each of `n` requests is sent: all 0 for an infinite rate,
// else a Poisson process (exponential gaps with mean 1 / rate), the first request at 0.
std::vector<double> arrival_times(int64_t n, double request_rate, uint64_t seed);

}  // namespace dpserve::bench
