#pragma once
// `dpserve generate`: load a model, run one prompt greedily (or sampled) and stream the text.

#include <cstdint>
#include <string>

namespace dpserve {

struct GenerateArgs {
  std::string model_path;                   // Hugging Face model directory
  std::string tokenizer_path;               // defaults to model_path
  std::string prompt;                       // text to continue
  bool chat = false;                        // wrap the prompt in the model's chat template
  int64_t max_new_tokens = 128;             // generation stops after this many tokens
  double temperature = 0.0;                 // 0 = greedy
  uint64_t seed = 0;                        // sampling seed (temperature > 0)
  int num_threads = 0;                      // 0 = all CPUs
  std::string attention_backend = "flash";  // "flash" or "native"
  bool ignore_eos = false;                  // keep generating past end-of-sequence tokens
};

// Runs generation, writing text to stdout as it is produced; returns the process exit code.
// Throws dpserve::Error for user errors (bad model directory, prompt too long, ...).
int run_generate(const GenerateArgs& args);

}  // namespace dpserve
