#pragma once
// `dpserve generate`: load a model, run one prompt greedily (or sampled) and stream the text, or
// run every prompt of --prompts-file through the Scheduler (batch_generate.h).

#include <cstdint>
#include <string>
#include <vector>

#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {

struct GenerateArgs {
  std::string model_path;                   // Hugging Face model directory
  std::string tokenizer_path;               // defaults to model_path
  std::string prompt;                       // text to continue
  std::string prompts_file;                 // one prompt (or JSON object) per line, batch mode
  bool chat = false;                        // wrap the prompt in the model's chat template
  int64_t max_new_tokens = 128;             // generation stops after this many tokens
  double temperature = 0.0;                 // 0 = greedy
  uint64_t seed = 0;                        // sampling seed (temperature > 0)
  int num_threads = 0;                      // 0 = all CPUs
  std::string attention_backend = "flash";  // "flash" or "native"
  bool ignore_eos = false;                  // keep generating past end-of-sequence tokens
  bool seed_given = false;                  // --seed was on the command line

  // Runtime flags of the Scheduler (batch mode), as the server takes them.
  int64_t page_size = 1;                 // --page-size
  int64_t chunked_prefill_size = 4096;   // --chunked-prefill-size (<= 0 disables)
  int64_t max_total_tokens = 0;          // --max-total-tokens (0 = from memory)
  int64_t kv_cache_memory = 0;           // --kv-cache-memory in bytes (0 = from memory)
  int64_t max_running_requests = 0;      // --max-running-requests (0 = derived)
  int64_t max_prefill_tokens = 16384;    // --max-prefill-tokens
  std::string schedule_policy = "fcfs";  // --schedule-policy
  bool disable_radix_cache = false;      // --disable-radix-cache
  double watchdog_timeout = 300.0;       // --watchdog-timeout in seconds
};

// Runs generation, writing text to stdout as it is produced; returns the process exit code.
// Throws dpserve::Error for user errors (bad model directory, prompt too long, ...).
int run_generate(const GenerateArgs& args);

// Prompt ids of `text`: with `chat`, one user message rendered by the chat template of tok_dir.
std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, const std::string& tok_dir,
                                   const std::string& text, bool chat);

}  // namespace dpserve
