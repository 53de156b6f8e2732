#pragma once
// The OpenAI-compatible HTTP routes and Prometheus /metrics:
//   GET  /v1/models             the served model (models_list)
//   POST /v1/completions        prompt text or token ids -> text_completion (or SSE chunks)
//   POST /v1/chat/completions   messages rendered by the model's chat template -> chat.completion
//   GET  /metrics               (--enable-metrics) SGLang's metric names, Prometheus text 0.0.4
//
// Requests are parsed and validated by openai/protocol.h and answered by openai/response.h's
// ResponseBuilder. One OpenAIGeneration drives every request: each step() reads the engine's
// outputs from the GenerateHandle, feeds them to the builder and returns the chunks it made.
// Streaming sends those chunks as Server-Sent Events ending in "data: [DONE]"; non-streaming
// runs the same steps, drops the chunks and answers with the builder's final object. A client
// that hangs up mid-stream drops the generation, whose handle aborts the request.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dpserve/chat_template/chat_template.h"
#include "dpserve/http/http_server.h"
#include "dpserve/http/serving_context.h"
#include "dpserve/managers/tokenizer_manager.h"
#include "dpserve/openai/protocol.h"
#include "dpserve/openai/response.h"

namespace dpserve {

// One OpenAI request in flight: the engine handle and the response being built.
class OpenAIGeneration {
 public:
  // req: the parsed request; handle: its generate call (one prompt, req.n sequences);
  // meta: id, model, echo text; tokenizer: for logprob token texts.
  OpenAIGeneration(const OpenAIRequest& req, std::shared_ptr<GenerateHandle> handle,
                   ResponseMeta meta, const Tokenizer& tokenizer);

  // Waits up to `timeout` for outputs; returns the chunks they produced (the role chunks on the
  // first call, the usage chunk at the end). Throws ApiError 503 when the scheduler died.
  std::vector<nlohmann::ordered_json> step(std::chrono::milliseconds timeout);
  // True once every choice finished and the end chunks were returned.
  bool done() const { return done_; }
  // The final completion / chat.completion object (after done()).
  nlohmann::ordered_json response() const { return builder_.response(); }
  // The request id of the prompt (for logs).
  const std::string& rid() const { return handle_->rids().front(); }

 private:
  std::shared_ptr<GenerateHandle> handle_;
  ResponseBuilder builder_;
  const Tokenizer& tokenizer_;
  bool logprobs_;
  bool started_ = false;
  bool done_ = false;
};

// The OpenAI routes' shared state: the chat template and the served model's facts.
struct OpenAIServing {
  ServingContext& ctx;                        // flags and the TokenizerManager
  std::optional<ChatTemplate> chat_template;  // the model's, if it has one
  std::string chat_template_error;            // why there is none (for chat requests' 400)
  std::string served_model_name;              // --served-model-name or --model-path
  int64_t created = 0;                        // server start (Unix seconds), for /v1/models
};

// Registers /v1/models, /v1/completions and /v1/chat/completions; `ctx` must outlive `server`.
void register_openai_routes(HttpServer& server, ServingContext& ctx);

// Registers GET /metrics rendering ctx.metrics_registry (scheduler gauges refreshed at each
// scrape); ctx.metrics_registry and ctx.metrics must be set and outlive `server`.
void register_metrics_route(HttpServer& server, ServingContext& ctx);

}  // namespace dpserve
