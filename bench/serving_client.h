#pragma once
// The HTTP side of bench_serving: one streamed request to a serving backend (SGLang's native
// /generate, or OpenAI's /v1/completions), timed chunk by chunk as the server-sent events arrive.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "serving_dataset.h"

namespace dpserve::bench {

// Which API the requests go to.
enum class Backend {
  kSglang,  // POST /generate, stream: true, cumulative text / output_ids / meta_info per event
  kOpenai,  // POST /v1/completions, stream: true, OpenAI text_completion chunks
};

// Parses "sglang" / "openai"; throws dpserve::Error otherwise.
Backend parse_backend(const std::string& name);
// The name parse_backend reads.
std::string backend_name(Backend b);

// What one request measured. Times are seconds.
struct RequestOutput {
  bool success = false;             // HTTP 200, no error event, the stream ended with [DONE]
  std::string error;                // why it failed (empty on success)
  int64_t prompt_len = 0;           // prompt tokens (the server's count when it reports one)
  int64_t output_len = 0;           // generated tokens (the server's count)
  int64_t expected_output_len = 0;  // tokens asked for
  int64_t cached_tokens = 0;        // prompt tokens the server found in its prefix cache
  std::string finish_reason;        // the server's finish reason ("length", "stop", ...)
  double start = 0;                 // when it was sent, from the benchmark start
  double ttft = 0;                  // time to the first chunk carrying a token
  double latency = 0;               // end-to-end: send to the end of the stream
  std::vector<double> itl;          // gaps between chunks, each divided over the chunk's tokens
  std::vector<std::pair<double, int64_t>> chunks;  // (time from benchmark start, new tokens)

  // (latency - ttft) / (output_len - 1); 0 when fewer than 2 tokens.
  double tpot() const;
};

// Splits a server-sent-event byte stream into the payloads of its `data:` lines; the bytes may
// arrive cut anywhere.
class SseParser {
 public:
  // Appends bytes and returns the payloads of the events they completed, in order.
  std::vector<std::string> feed(const char* data, size_t size);

 private:
  std::string buf_;
};

// Where and how to send requests.
struct ClientOptions {
  std::string base_url;  // "http://host:port"
  Backend backend = Backend::kSglang;
  std::string model;                                     // OpenAI "model" field
  double timeout_s = 3600;                               // read timeout of one request
  nlohmann::json extra_body = nlohmann::json::object();  // merged into every request body
};

// Sends benchmark requests; safe to use from many threads at once (one connection per request).
class ServingClient {
 public:
  explicit ServingClient(ClientOptions o) : o_(std::move(o)) {}

  // Sends `r` (greedy, ignore_eos, max tokens = r.output_len) and times it; `t0` is the benchmark
  // start on the steady clock in seconds. Never throws: failures come back in the output.
  RequestOutput send(const BenchRequest& r, double t0) const;

  // The request body `send` posts for `r`.
  nlohmann::json request_body(const BenchRequest& r) const;

  // GET `path` as JSON; throws dpserve::Error naming the URL when it fails.
  nlohmann::json get_json(const std::string& path) const;

  // POST `path` with no body; true on HTTP 200.
  bool post_empty(const std::string& path) const;

  // The options the client was made with.
  const ClientOptions& options() const { return o_; }

 private:
  ClientOptions o_;
};

// Seconds on the steady clock (the time base of RequestOutput).
double steady_seconds();

}  // namespace dpserve::bench
