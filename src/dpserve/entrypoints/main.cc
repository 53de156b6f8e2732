// The dpserve command: subcommands for offline generation (and, later, serving).

#include <cstdio>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/common/logging.h"
#include "dpserve/entrypoints/generate.h"

int main(int argc, char** argv) {
  CLI::App app{"dpserve: an LLM serving engine"};
  app.require_subcommand(1);
  app.fallthrough();  // --log-level may follow the subcommand
  std::string log_level = "warning";
  app.add_option("--log-level", log_level, "debug, info, warning, error")->capture_default_str();

  dpserve::GenerateArgs gen;
  CLI::App* g = app.add_subcommand("generate", "Generate text for one prompt on this machine");
  g->add_option("--model-path", gen.model_path, "Hugging Face model directory")->required();
  g->add_option("--tokenizer-path", gen.tokenizer_path, "Tokenizer directory (default: model)");
  g->add_option("--prompt", gen.prompt, "Prompt text")->required();
  g->add_flag("--chat", gen.chat, "Render the prompt as a user message with the chat template");
  g->add_option("--max-new-tokens", gen.max_new_tokens, "Tokens to generate")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  g->add_option("--temperature", gen.temperature, "Sampling temperature; 0 is greedy")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 100.0));
  g->add_option("--seed", gen.seed, "Sampling seed")->capture_default_str();
  g->add_option("--num-threads", gen.num_threads, "Threads (0 = all CPUs)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  g->add_option("--attention-backend", gen.attention_backend, "flash or native")
      ->capture_default_str()
      ->check(CLI::IsMember({"flash", "native"}));
  g->add_flag("--ignore-eos", gen.ignore_eos, "Do not stop at end-of-sequence tokens");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    dpserve::init_logging(log_level);
    if (g->parsed()) return dpserve::run_generate(gen);
  } catch (const dpserve::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
