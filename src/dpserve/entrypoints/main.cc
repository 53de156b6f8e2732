// The dpserve command: `serve` (the HTTP server) and `generate` (offline generation). The same
// binary also runs the server's child processes (an internal role flag picks them).

#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/common/logging.h"
#include "dpserve/entrypoints/generate.h"
#include "dpserve/entrypoints/launch_server.h"
#include "dpserve/ipc/process.h"
#include "dpserve/managers/data_parallel_controller.h"
#include "dpserve/managers/scheduler_process.h"
#include "dpserve/server/server_args.h"

namespace {

// Runs this process as a child of `dpserve serve` when argv says so; nullopt otherwise.
std::optional<int> run_child_role(int argc, char** argv) {
  std::optional<dpserve::ChildContext> child;
  try {
    child = dpserve::ChildContext::from_argv(argc, argv);
  } catch (const dpserve::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  if (!child) return std::nullopt;
  if (child->role() == dpserve::kSchedulerRole) return dpserve::run_scheduler_process(*child);
  if (child->role() == dpserve::kDpControllerRole) {
    return dpserve::run_data_parallel_controller_process(*child);
  }
  child->signal_error("unknown internal role '" + child->role() + "'");
  return 1;
}

// The arguments after the "serve" subcommand, for the scheduler child.
std::vector<std::string> args_after(int argc, char** argv, const char* subcommand) {
  std::vector<std::string> out;
  int i = 1;
  while (i < argc && std::strcmp(argv[i], subcommand) != 0) ++i;
  for (++i; i < argc; ++i) out.emplace_back(argv[i]);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // Child processes first: they must not parse the user-facing command line.
  if (std::optional<int> code = run_child_role(argc, argv)) return *code;

  CLI::App app{"dpserve: an LLM serving engine"};
  app.require_subcommand(1);
  app.fallthrough();  // --log-level may follow the subcommand
  std::string log_level = "warning";
  app.add_option("--log-level", log_level, "debug, info, warning, error")->capture_default_str();

  dpserve::GenerateArgs gen;
  CLI::App* g = app.add_subcommand(
      "generate", "Generate text for one prompt, or for every prompt of a file, on this machine");
  g->add_option("--model-path", gen.model_path, "Hugging Face model directory")->required();
  g->add_option("--tokenizer-path", gen.tokenizer_path, "Tokenizer directory (default: model)");
  CLI::Option* prompt = g->add_option("--prompt", gen.prompt, "Prompt text");
  CLI::Option* prompts_file =
      g->add_option("--prompts-file", gen.prompts_file,
                    "File of prompts run concurrently through the scheduler: one per line, or "
                    "JSON objects {\"text\": ..., \"sampling_params\": {...}}; prints JSON lines");
  prompt->excludes(prompts_file);
  g->add_flag("--chat", gen.chat, "Render the prompt as a user message with the chat template");
  g->add_option("--max-new-tokens", gen.max_new_tokens, "Tokens to generate")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  g->add_option("--temperature", gen.temperature, "Sampling temperature; 0 is greedy")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 100.0));
  CLI::Option* seed = g->add_option("--seed", gen.seed, "Sampling seed")->capture_default_str();
  g->add_option("--num-threads", gen.num_threads, "Threads (0 = all CPUs)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  g->add_option("--attention-backend", gen.attention_backend, "flash or native")
      ->capture_default_str()
      ->check(CLI::IsMember({"flash", "native"}));
  g->add_flag("--ignore-eos", gen.ignore_eos, "Do not stop at end-of-sequence tokens");
  // Scheduler flags (used with --prompts-file).
  g->add_option("--page-size", gen.page_size, "KV cache page size in tokens")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  g->add_option("--chunked-prefill-size", gen.chunked_prefill_size,
                "Most prompt tokens per prefill step (<= 0 disables chunking)")
      ->capture_default_str();
  g->add_option("--max-total-tokens", gen.max_total_tokens, "KV cache size in tokens")
      ->check(CLI::NonNegativeNumber);
  g->add_option("--kv-cache-memory", gen.kv_cache_memory, "KV cache size in bytes")
      ->check(CLI::NonNegativeNumber);
  g->add_option("--max-running-requests", gen.max_running_requests,
                "Most requests decoding at once (0 = derived from the KV cache)")
      ->check(CLI::NonNegativeNumber);
  g->add_option("--max-prefill-tokens", gen.max_prefill_tokens, "Prompt tokens per prefill step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  g->add_option("--schedule-policy", gen.schedule_policy, "fcfs or lpm (longest prefix match)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fcfs", "lpm"}));
  g->add_flag("--disable-radix-cache", gen.disable_radix_cache, "Do not reuse cached prefixes");
  g->add_option("--watchdog-timeout", gen.watchdog_timeout,
                "Report a scheduler step running longer than this many seconds (0 = off)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);

  dpserve::ServerArgs server_args;
  CLI::App* serve = app.add_subcommand(
      "serve", "Serve a model over HTTP (SGLang's /generate; OpenAI-compatible API)");
  server_args.add_to(*serve);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (serve->parsed()) {
      server_args.validate();
      server_args.check_implemented();
      dpserve::init_logging(server_args.log_level);
      return dpserve::launch_server(server_args, args_after(argc, argv, "serve"));
    }
    dpserve::init_logging(log_level);
    if (g->parsed()) {
      if (prompt->count() == 0 && prompts_file->count() == 0) {
        throw dpserve::Error("generate: --prompt or --prompts-file is required");
      }
      gen.seed_given = seed->count() > 0;
      return dpserve::run_generate(gen);
    }
  } catch (const dpserve::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
