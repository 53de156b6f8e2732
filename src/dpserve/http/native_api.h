#pragma once
// SGLang's native HTTP endpoints (python/sglang/srt/entrypoints/http_server.py):
//   POST|PUT /generate       text or input_ids (single or batch), sampling_params, stream, rid,
//                            return_logprob, top_logprobs_num -> {"text", "output_ids",
//                            "meta_info"} (a list for batches or n > 1); stream = SSE chunks
//                            with cumulative text, ending in "data: [DONE]"
//   GET /health              200 while the scheduler lives and the server accepts requests
//   GET /health_generate     200 once a one-token probe came back from every DP group (one
//                            scheduler: or any output arrived meanwhile); else 503 naming the
//                            groups that produced nothing within DPSERVE_HEALTH_CHECK_TIMEOUT
//   GET /get_model_info      model_path, tokenizer_path, is_generation, ...
//   GET /get_server_info     ServerArgs + the scheduler's KV pool, free pages and counters
//   GET|POST /flush_cache    drops the prefix cache (400 while requests run)

#include <vector>

#include <nlohmann/json.hpp>

#include "dpserve/http/http_server.h"
#include "dpserve/http/serving_context.h"
#include "dpserve/managers/tokenizer_manager.h"

namespace dpserve {

// A parsed /generate body: the prompts and the response options.
struct NativeGenerateRequest {
  std::vector<GenerateReqInput> inputs;  // one per prompt
  bool is_batch = false;                 // text / input_ids was a list: answer with a list
  bool stream = false;                   // answer with SSE
  bool return_logprob = false;           // add logprobs to meta_info
};

// Parses SGLang's GenerateReqInput JSON; ApiError 400 naming the field for wrong types, unknown
// fields, neither / both of text and input_ids, or a data_parallel_rank outside [0, dp_size).
NativeGenerateRequest parse_generate_request(const nlohmann::json& body, int dp_size = 1);

// The response object of one sequence (non-streaming, and each stream chunk).
nlohmann::json generate_response_json(const SequenceOutput& seq, bool return_logprob,
                                      double e2e_latency);

// Registers the native routes on `server`; `ctx` must outlive it.
void register_native_routes(HttpServer& server, ServingContext& ctx);

}  // namespace dpserve
