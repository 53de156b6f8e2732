#pragma once
// `dpserve generate --prompts-file FILE`: the offline batch command. Every prompt of the file runs
// through one Scheduler concurrently (continuous batching, radix cache, chunked prefill, the
// runtime flags as the server takes them), and one JSON object per prompt is printed to stdout in
// input order: prompt, text, prompt_tokens, completion_tokens, cached_tokens, finish_reason
// (SGLang's meta_info form), plus index when a prompt asks for n > 1 completions.
//
// File format: one prompt per line; a line starting with '{' is a JSON object with "text" and an
// optional "sampling_params" object (SGLang's names) that overrides the command's sampling flags
// for that prompt. Blank lines are skipped. Errors name the file, the line and the parameter.

#include <cstdint>
#include <string>
#include <vector>

#include "dpserve/entrypoints/generate.h"
#include "dpserve/managers/scheduler.h"
#include "dpserve/sampling/sampling_params.h"

namespace dpserve {

// One prompt read from the file.
struct BatchPrompt {
  int64_t line = 0;                // 1-based line number in the file
  std::string text;                // prompt text
  SamplingParams sampling_params;  // command defaults merged with the line's sampling_params
};

// Parses the prompts file; `defaults` are the command's sampling flags. Throws dpserve::Error
// naming the file, the line and the problem (bad JSON, missing text, bad parameter).
std::vector<BatchPrompt> read_prompts_file(const std::string& path, const SamplingParams& defaults,
                                           int64_t vocab_size);

// The Scheduler settings the command's runtime flags give.
SchedulerConfig scheduler_config_from_args(const GenerateArgs& args);

// Runs the batch command; returns the process exit code. Throws dpserve::Error for user errors.
int run_batch_generate(const GenerateArgs& args);

}  // namespace dpserve
