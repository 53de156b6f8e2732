#pragma once
// HttpServer: dpserve's HTTP front end on cpp-httplib, shared by every API family.
//
// It owns the httplib::Server and the policies that apply to all routes: `--api-key` (401
// without "Authorization: Bearer <key>" on every route but /health), a body size limit (413),
// OpenAI-style error bodies (ApiError::to_json) for every 4xx and 5xx including unknown routes
// (404) and requests that did not arrive in time (408), JSON body parsing (400 for malformed JSON
// or invalid UTF-8; a POST without a body reads as an empty one), request logging
// (--log-requests) and Server-Sent Events with disconnect detection. Connections run under the
// deadlines of http/connection.h (--http-timeout), each on a thread of its own.
//
// API families register their routes through the helpers here: http/native_api.h (SGLang's
// /generate, /health, ...) and http/openai_api.h (/v1/models, /v1/completions,
// /v1/chat/completions and /metrics).

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "dpserve/http/connection.h"
#include "dpserve/openai/api_error.h"

namespace dpserve {

// Settings of the HTTP front end.
struct HttpServerOptions {
  std::string host = "127.0.0.1";            // address to bind
  int port = 30000;                          // port to bind
  std::string api_key;                       // empty = no authentication
  bool log_requests = false;                 // log every request line and status
  size_t max_body_bytes = size_t{16} << 20;  // larger bodies get 413
  double timeout_s = 60.0;    // --http-timeout: to receive a request / per blocked response write
  double keep_alive_s = 5.0;  // idle seconds before a kept-alive connection is closed
  size_t max_threads = 2048;  // most connections served at once (one thread each)
};

// One step of an event stream: SSE payloads to send now, and whether the stream ended.
struct SseStep {
  std::vector<std::string> events;  // JSON texts; each goes out as "data: <text>\n\n"
  bool done = false;                // true: "data: [DONE]\n\n" follows and the stream closes
};

// Produces the next step of a stream; may block briefly (it is polled, ~100 ms at most per call,
// so a disconnected client is noticed). Destroyed when the response ends, which is how the
// producer learns of a disconnect (e.g. a GenerateHandle that aborts its request when dropped).
using SseSource = std::function<SseStep()>;

// A route handler that answers with JSON: gets the parsed body (null for GET) and returns the
// 200 answer, or throws ApiError / dpserve::Error (400).
using JsonHandler =
    std::function<nlohmann::json(const httplib::Request& req, const nlohmann::json& body)>;

// A route handler that writes the response itself (streaming, plain text): gets the parsed body
// (null for GET). Exceptions are answered as in JsonHandler.
using RawHandler = std::function<void(const httplib::Request& req, httplib::Response& res,
                                      const nlohmann::json& body)>;

class HttpServer {
 public:
  // Configures the server; nothing is bound yet.
  explicit HttpServer(HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // GET route answering with JSON.
  void get_json(const std::string& path, JsonHandler handler);
  // POST route whose body is parsed as JSON (an empty body reads as null), answering with JSON.
  void post_json(const std::string& path, JsonHandler handler);
  // GET route with a raw handler.
  void get(const std::string& path, RawHandler handler);
  // POST route with a raw handler and a JSON-parsed body.
  void post(const std::string& path, RawHandler handler);
  // PUT route with a raw handler and a JSON-parsed body.
  void put(const std::string& path, RawHandler handler);
  // POST route with a raw handler that parses req.body itself (the body argument is null).
  void post_unparsed(const std::string& path, RawHandler handler);
  // The underlying server, for anything the helpers above do not cover.
  httplib::Server& raw() { return server_; }

  // Binds host:port; throws dpserve::Error naming the address when it cannot. Warns when a
  // non-loopback address serves more than /health without an API key.
  void bind();
  // Serves on a background thread (after bind()).
  void start();
  // Stops accepting, closes open streams and joins the serving thread (idempotent).
  void stop();
  // The options in use.
  const HttpServerOptions& options() const { return options_; }

 private:
  httplib::Server::Handler wrap(RawHandler handler, bool parse_body);
  void note_route(const std::string& path);

  HttpServerOptions options_;
  ConnectionServer server_;
  std::thread thread_;
  int listen_fd_ = -1;               // the bound listening socket (to raise its backlog)
  bool has_guarded_routes_ = false;  // a route other than /health is registered
};

// Parses a request body as JSON; an empty body gives null. ApiError 400 on malformed JSON
// (naming invalid UTF-8 as such), numbers out of range, or nesting deeper than 256 levels.
nlohmann::json parse_json_body(const std::string& body);

// Sets the response to the error's status and OpenAI-style JSON body.
void set_error_response(httplib::Response& res, const ApiError& error);

// Serializes JSON for a response (invalid UTF-8 replaced, never throws).
std::string dump_json(const nlohmann::json& j);

// Makes the response a Server-Sent Events stream fed by `source`, ending in "data: [DONE]". A
// client that disconnects, or does not read for --http-timeout, ends the stream (the source is
// destroyed).
void set_sse_response(httplib::Response& res, SseSource source);

// The bearer token of an "Authorization" header ("" when absent or not a bearer token).
std::string bearer_token(const httplib::Request& req);

// The routes that answer without the API key: /health only (load balancers probe it).
bool is_open_route(const std::string& path);

}  // namespace dpserve
