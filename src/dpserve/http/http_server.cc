#include "dpserve/http/http_server.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"
#include "dpserve/server/server_args.h"

namespace dpserve {

namespace {

constexpr const char* kJsonType = "application/json";

ConnectionLimits connection_limits(const HttpServerOptions& o) {
  const auto ms = [](double s) {
    return std::chrono::milliseconds(static_cast<int64_t>(std::max(s, 0.001) * 1000.0));
  };
  ConnectionLimits l;
  l.request_timeout = ms(o.timeout_s);
  l.write_timeout = ms(o.timeout_s);
  l.keep_alive_timeout = ms(o.keep_alive_s);
  l.max_threads = o.max_threads;
  return l;
}

// Methods whose requests httplib reads a body for.
bool expects_body(const std::string& method) {
  return method == "POST" || method == "PUT" || method == "PATCH" || method == "DELETE";
}

ApiError default_error(const httplib::Request& req, int status, size_t max_body, double timeout_s) {
  if (request_timed_out()) {
    return ApiError(
        408, fmt::format("the request did not arrive within {} s (--http-timeout)", timeout_s),
        "invalid_request_error");
  }
  switch (status) {
    case 404:
      return ApiError(404, fmt::format("Not Found: {} {}", req.method, req.path),
                      "not_found_error");
    case 413:
      return ApiError(
          413, fmt::format("the request body is larger than the limit of {} bytes", max_body),
          "invalid_request_error");
    case 400:
      return ApiError(400, "malformed HTTP request", "invalid_request_error");
    default:
      return ApiError(status, fmt::format("HTTP error {}", status),
                      status >= 500 ? "internal_error" : "invalid_request_error");
  }
}

}  // namespace

bool is_open_route(const std::string& path) { return path == "/health"; }

std::string dump_json(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json parse_json_body(const std::string& body) {
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) return nullptr;
  // Copying and dumping JSON values recurse per nesting level, so a deeply nested body (a few
  // hundred KB of '[') would overflow the handler thread's stack: refuse it while parsing.
  static constexpr int kMaxDepth = 256;
  auto depth_limit = [](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    if (depth > kMaxDepth) {
      throw ApiError(400,
                     fmt::format("the request body nests JSON deeper than {} levels", kMaxDepth),
                     "invalid_request_error");
    }
    return true;
  };
  try {
    return nlohmann::json::parse(body, depth_limit);
  } catch (const nlohmann::json::exception& e) {  // parse_error, out_of_range (1e999), ...
    const std::string what = e.what();
    if (what.find("UTF-8") != std::string::npos) {
      throw ApiError(400, "the request body is not valid UTF-8: " + what, "invalid_request_error");
    }
    throw ApiError(400, "the request body is not valid JSON: " + what, "invalid_request_error");
  }
}

void set_error_response(httplib::Response& res, const ApiError& error) {
  res.status = error.status();
  if (error.retry_after() > 0) res.set_header("Retry-After", std::to_string(error.retry_after()));
  res.set_content(dump_json(error.to_json()), kJsonType);
}

std::string bearer_token(const httplib::Request& req) {
  const std::string h = req.get_header_value("Authorization");
  constexpr std::string_view kBearer = "Bearer ";
  if (h.size() < kBearer.size() || h.compare(0, kBearer.size(), kBearer) != 0) return "";
  return h.substr(kBearer.size());
}

void set_sse_response(httplib::Response& res, SseSource source) {
  auto src = std::make_shared<SseSource>(std::move(source));
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [src](size_t /*offset*/, httplib::DataSink& sink) {
        if (!*src) return false;
        SseStep step;
        try {
          step = (*src)();
        } catch (const ApiError& e) {
          step.events = {dump_json(e.to_json())};
          step.done = true;
        } catch (const std::exception& e) {
          step.events = {dump_json(ApiError(500, e.what(), "internal_error").to_json())};
          step.done = true;
        }
        std::string out;
        for (const std::string& ev : step.events) out += "data: " + ev + "\n\n";
        if (step.done) out += "data: [DONE]\n\n";
        if (!out.empty() && !sink.write(out.data(), out.size())) {
          *src = nullptr;  // the client is gone: drop the producer now
          return false;
        }
        if (step.done) {
          sink.done();
          *src = nullptr;
        }
        return true;
      },
      [src](bool /*success*/) { *src = nullptr; });
}

HttpServer::HttpServer(HttpServerOptions options)
    : options_(std::move(options)), server_(connection_limits(options_)) {
  server_.set_payload_max_length(options_.max_body_bytes);
  server_.set_tcp_nodelay(true);
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second server
  // share a busy port silently instead of failing to start.
  server_.set_socket_options([this](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const void*>(&yes), sizeof yes);
    listen_fd_ = sock;  // the last socket configured is the one that gets bound
  });

  server_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    // A request without Content-Length or Transfer-Encoding has no body (RFC 9112 6.3), but
    // httplib would read one until the client closes (`curl -X POST` then gets 400 after the
    // read timeout). The Request is httplib's own mutable local, handed to us as const.
    if (expects_body(req.method) && !req.has_header("Content-Length") &&
        !req.has_header("Transfer-Encoding")) {
      const_cast<httplib::Request&>(req).set_header("Content-Length", "0");
    }
    if (options_.api_key.empty() || is_open_route(req.path)) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    if (bearer_token(req) == options_.api_key) return httplib::Server::HandlerResponse::Unhandled;
    set_error_response(res, ApiError(401,
                                     "Invalid or missing API key: send 'Authorization: Bearer "
                                     "<key>' with the server's --api-key",
                                     "authentication_error"));
    return httplib::Server::HandlerResponse::Handled;
  });

  server_.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // ours
        set_error_response(
            res, default_error(req, res.status, options_.max_body_bytes, options_.timeout_s));
        return httplib::Server::HandlerResponse::Handled;
      }));

  server_.set_exception_handler(
      [](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        spdlog::error("{} {}: unhandled exception: {}", req.method, req.path, what);
        set_error_response(res, ApiError(500, what, "internal_error"));
      });

  if (options_.log_requests) {
    server_.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      spdlog::info("http: {}:{} \"{} {}\" {}", req.remote_addr, req.remote_port, req.method,
                   req.path, res.status);
    });
  }
}

HttpServer::~HttpServer() { stop(); }

httplib::Server::Handler HttpServer::wrap(RawHandler handler, bool parse_body) {
  return [handler = std::move(handler), parse_body](const httplib::Request& req,
                                                    httplib::Response& res) {
    try {
      const nlohmann::json body = parse_body ? parse_json_body(req.body) : nlohmann::json();
      handler(req, res, body);
    } catch (const ApiError& e) {
      set_error_response(res, e);
    } catch (const Error& e) {
      set_error_response(res, ApiError(400, e.what()));
    } catch (const nlohmann::json::exception& e) {
      set_error_response(res, ApiError(400, e.what()));
    }
  };
}

void HttpServer::get_json(const std::string& path, JsonHandler handler) {
  get(path, [handler = std::move(handler)](const httplib::Request& req, httplib::Response& res,
                                           const nlohmann::json& body) {
    res.set_content(dump_json(handler(req, body)), kJsonType);
  });
}

void HttpServer::post_json(const std::string& path, JsonHandler handler) {
  post(path, [handler = std::move(handler)](const httplib::Request& req, httplib::Response& res,
                                            const nlohmann::json& body) {
    res.set_content(dump_json(handler(req, body)), kJsonType);
  });
}

void HttpServer::note_route(const std::string& path) {
  if (!is_open_route(path)) has_guarded_routes_ = true;
}

void HttpServer::get(const std::string& path, RawHandler handler) {
  note_route(path);
  server_.Get(path, wrap(std::move(handler), /*parse_body=*/false));
}

void HttpServer::post(const std::string& path, RawHandler handler) {
  note_route(path);
  server_.Post(path, wrap(std::move(handler), /*parse_body=*/true));
}

void HttpServer::put(const std::string& path, RawHandler handler) {
  note_route(path);
  server_.Put(path, wrap(std::move(handler), /*parse_body=*/true));
}

void HttpServer::post_unparsed(const std::string& path, RawHandler handler) {
  note_route(path);
  server_.Post(path, wrap(std::move(handler), /*parse_body=*/false));
}

void HttpServer::bind() {
  if (has_guarded_routes_ && options_.api_key.empty() && !is_loopback_host(options_.host)) {
    spdlog::warn(
        "--host {} accepts connections from other machines and no --api-key is set: anyone who "
        "can reach port {} can run generations, flush the cache and read the server's settings. "
        "Set --api-key, or bind 127.0.0.1.",
        options_.host, options_.port);
  }
  if (!server_.bind_to_port(options_.host, options_.port)) {
    throw_error("cannot listen on {}:{} (--host / --port): the address is in use or invalid",
                options_.host, options_.port);
  }
  // Debian's cpp-httplib listens with a backlog of 5: a burst of new connections then overflows
  // the queue and clients stall for a SYN retransmit (about 1 s). Listening again on the bound
  // socket raises the backlog (Linux allows it on a listening socket).
  if (listen_fd_ >= 0 && ::listen(listen_fd_, SOMAXCONN) != 0) {
    spdlog::warn("http: cannot raise the listen backlog: {}", std::strerror(errno));
  }
}

void HttpServer::start() {
  thread_ = std::thread([this] {
    if (!server_.listen_after_bind()) spdlog::debug("http: the listen loop ended");
  });
}

void HttpServer::stop() {
  server_.stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace dpserve
