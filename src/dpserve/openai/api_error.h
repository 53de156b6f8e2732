#pragma once
// Errors returned to HTTP clients, in OpenAI's shape:
// {"error": {"message": ..., "type": ..., "param": ..., "code": <status>}}.

#include <optional>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace dpserve {

// A request the server refuses: carries the HTTP status and OpenAI's error fields. Thrown by
// request parsing and caught by the HTTP layer, which answers with to_json() and the status.
class ApiError : public std::runtime_error {
 public:
  // status: HTTP status (400, 401, 404, 413, ...); type: OpenAI's error type
  // ("invalid_request_error", "authentication_error", ...); param: the offending field, if any.
  ApiError(int status, std::string message, std::string type = "invalid_request_error",
           std::optional<std::string> param = std::nullopt)
      : std::runtime_error(message),
        status_(status),
        type_(std::move(type)),
        param_(std::move(param)) {}

  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::optional<std::string>& param() const { return param_; }
  // Sets the Retry-After seconds sent with this error (a 503 while the server recovers).
  ApiError& with_retry_after(int seconds) {
    retry_after_s_ = seconds;
    return *this;
  }
  // The Retry-After seconds; 0 = no header.
  int retry_after() const { return retry_after_s_; }

  // The response body.
  nlohmann::json to_json() const {
    nlohmann::json err = {{"message", what()},
                          {"type", type_},
                          {"param", param_ ? nlohmann::json(*param_) : nlohmann::json(nullptr)},
                          {"code", status_}};
    return {{"error", err}};
  }

 private:
  int status_;
  std::string type_;
  std::optional<std::string> param_;
  int retry_after_s_ = 0;
};

}  // namespace dpserve
