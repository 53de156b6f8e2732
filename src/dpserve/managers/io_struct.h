#pragma once
// Messages into and out of the Scheduler (after SGLang's io_struct): a tokenized generate request,
// the per-request output of one step, and the summary of a finished request for offline use.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dpserve/sampling/sampler.h"
#include "dpserve/sampling/sampling_params.h"
#include "dpserve/sampling/stop_checker.h"

namespace dpserve {

// A tokenized generate request (SGLang's TokenizedGenerateReqInput).
struct GenerateRequest {
  std::string rid;                 // request id, unique among live requests
  std::vector<int32_t> input_ids;  // prompt token ids (BOS included when the tokenizer adds it)
  SamplingParams sampling_params;  // validated by Scheduler::add_request
};

// What one step produced for one sequence (SGLang's BatchTokenIdOut, one row).
struct RequestOutput {
  std::string rid;                     // request id
  int64_t index = 0;                   // completion index in [0, n) for n > 1
  std::vector<int32_t> new_token_ids;  // tokens generated this step (usually one)
  std::string new_text;                // text those tokens completed (final, never retracted)
  bool finished = false;               // true on the last output of this sequence
  std::optional<FinishReason> finish_reason;  // set when finished
  int64_t prompt_tokens = 0;                  // prompt length
  int64_t completion_tokens = 0;              // tokens generated so far
  int64_t cached_tokens = 0;                  // prompt tokens taken from the prefix cache
  std::vector<float> output_logprobs;         // logprob of each new token (return_logprob)
  std::vector<std::vector<TokenLogprob>> output_top_logprobs;  // top_logprobs_num per new token
};

// A finished sequence, accumulated from its outputs (offline batch API).
struct CompletedRequest {
  std::string rid;                     // request id
  int64_t index = 0;                   // completion index for n > 1
  std::vector<int32_t> output_ids;     // generated token ids
  std::string text;                    // generated text
  FinishReason finish_reason;          // why it ended
  int64_t prompt_tokens = 0;           // prompt length
  int64_t completion_tokens = 0;       // generated tokens
  int64_t cached_tokens = 0;           // prompt tokens taken from the prefix cache
  std::vector<float> output_logprobs;  // per token, if asked
  std::vector<std::vector<TokenLogprob>> output_top_logprobs;  // per token, if asked
};

}  // namespace dpserve
