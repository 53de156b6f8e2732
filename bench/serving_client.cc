#include "serving_client.h"

#include <chrono>

#include <fmt/format.h>
#include <httplib.h>

#include "dpserve/common/errors.h"

namespace dpserve::bench {

using nlohmann::json;

Backend parse_backend(const std::string& name) {
  if (name == "sglang") return Backend::kSglang;
  if (name == "openai") return Backend::kOpenai;
  throw_error("--backend must be sglang or openai, got \"{}\"", name);
}

std::string backend_name(Backend b) { return b == Backend::kSglang ? "sglang" : "openai"; }

double RequestOutput::tpot() const {
  return output_len > 1 ? (latency - ttft) / static_cast<double>(output_len - 1) : 0.0;
}

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<std::string> SseParser::feed(const char* data, size_t size) {
  buf_.append(data, size);
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    // Events end with a blank line; accept both \n\n and \r\n\r\n.
    size_t end = buf_.find("\n\n", start);
    size_t sep = 2;
    const size_t crlf = buf_.find("\r\n\r\n", start);
    if (crlf != std::string::npos && (end == std::string::npos || crlf < end)) {
      end = crlf;
      sep = 4;
    }
    if (end == std::string::npos) break;
    std::string payload;
    size_t line_start = start;
    while (line_start < end) {
      size_t line_end = buf_.find('\n', line_start);
      if (line_end == std::string::npos || line_end > end) line_end = end;
      std::string_view line(buf_.data() + line_start, line_end - line_start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.starts_with("data:")) {
        line.remove_prefix(5);
        if (line.starts_with(" ")) line.remove_prefix(1);
        if (!payload.empty()) payload += '\n';
        payload.append(line);
      }
      line_start = line_end + 1;
    }
    out.push_back(std::move(payload));
    start = end + sep;
  }
  buf_.erase(0, start);
  return out;
}

namespace {

// Running totals of one stream, updated from each event.
struct StreamTotals {
  int64_t completion_tokens = 0;
  int64_t prompt_tokens = -1;
  int64_t cached_tokens = 0;
  std::string finish_reason;
  bool done = false;
  std::string error;
};

std::string finish_reason_string(const json& f) {
  if (f.is_string()) return f.get<std::string>();
  if (f.is_object() && f.contains("type") && f["type"].is_string()) return f["type"];
  return "";
}

std::string error_message(const json& j) {
  const json& e = j["error"];
  if (e.is_object() && e.contains("message")) return e["message"].dump();
  return e.dump();
}

// SGLang /generate event: cumulative text, output_ids and meta_info.
void apply_sglang_event(const json& j, StreamTotals& t) {
  if (j.contains("error")) {
    t.error = error_message(j);
    return;
  }
  const json meta = j.value("meta_info", json::object());
  if (meta.contains("completion_tokens")) {
    t.completion_tokens = meta["completion_tokens"].get<int64_t>();
  } else if (j.contains("output_ids")) {
    t.completion_tokens = static_cast<int64_t>(j["output_ids"].size());
  }
  if (meta.contains("prompt_tokens")) t.prompt_tokens = meta["prompt_tokens"].get<int64_t>();
  if (meta.contains("cached_tokens")) t.cached_tokens = meta["cached_tokens"].get<int64_t>();
  if (meta.contains("finish_reason")) t.finish_reason = finish_reason_string(meta["finish_reason"]);
}

// OpenAI text_completion chunk. With continuous usage every chunk carries the token counts;
// without usage a chunk with text counts as one token (what SGLang's bench_serving assumes).
void apply_openai_event(const json& j, StreamTotals& t) {
  if (j.contains("error")) {
    t.error = error_message(j);
    return;
  }
  const json usage = j.value("usage", json());
  if (usage.is_object()) {
    t.completion_tokens = usage.value("completion_tokens", t.completion_tokens);
    t.prompt_tokens = usage.value("prompt_tokens", t.prompt_tokens);
    const json details = usage.value("prompt_tokens_details", json());
    if (details.is_object()) t.cached_tokens = details.value("cached_tokens", t.cached_tokens);
  }
  if (j.contains("choices") && j["choices"].is_array()) {
    for (const json& c : j["choices"]) {
      if (!usage.is_object() && c.value("text", std::string()).size() > 0) ++t.completion_tokens;
      if (c.contains("finish_reason") && !c["finish_reason"].is_null()) {
        t.finish_reason = finish_reason_string(c["finish_reason"]);
      }
    }
  }
}

httplib::Client make_client(const std::string& base_url, double timeout_s) {
  httplib::Client c(base_url);
  const auto secs = static_cast<time_t>(timeout_s);
  c.set_connection_timeout(10, 0);
  c.set_read_timeout(secs, 0);
  c.set_write_timeout(secs, 0);
  c.set_tcp_nodelay(true);
  return c;
}

}  // namespace

json ServingClient::request_body(const BenchRequest& r) const {
  json body;
  if (o_.backend == Backend::kSglang) {
    if (r.input_ids.empty()) {
      body["text"] = r.text;
    } else {
      body["input_ids"] = r.input_ids;
    }
    body["sampling_params"] = {
        {"temperature", 0.0}, {"max_new_tokens", r.output_len}, {"ignore_eos", true}};
    body["stream"] = true;
  } else {
    body["model"] = o_.model;
    if (r.input_ids.empty()) {
      body["prompt"] = r.text;
    } else {
      body["prompt"] = r.input_ids;
    }
    body["max_tokens"] = r.output_len;
    body["temperature"] = 0.0;
    body["ignore_eos"] = true;
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}, {"continuous_usage_stats", true}};
  }
  if (o_.extra_body.is_object()) {
    for (const auto& [k, v] : o_.extra_body.items()) {
      if (o_.backend == Backend::kSglang && k == "sampling_params" && v.is_object()) {
        body["sampling_params"].update(v);
      } else if (o_.backend == Backend::kSglang && body["sampling_params"].contains(k)) {
        body["sampling_params"][k] = v;
      } else {
        body[k] = v;
      }
    }
  }
  return body;
}

RequestOutput ServingClient::send(const BenchRequest& r, double t0) const {
  RequestOutput out;
  out.expected_output_len = r.output_len;
  out.prompt_len = r.prompt_len;
  const std::string body = request_body(r).dump();

  httplib::Client client = make_client(o_.base_url, o_.timeout_s);
  httplib::Request req;
  req.method = "POST";
  req.path = o_.backend == Backend::kSglang ? "/generate" : "/v1/completions";
  req.headers = {{"Accept", "text/event-stream"}};
  req.body = body;
  req.set_header("Content-Type", "application/json");

  SseParser parser;
  StreamTotals totals;
  std::string error_body;  // the body of a non-200 answer
  int status = 0;
  double last = 0;
  const double st = steady_seconds();
  out.start = st - t0;
  req.response_handler = [&](const httplib::Response& res) {
    status = res.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    const double now = steady_seconds();
    if (status != 200) {
      error_body.append(data, size);
      return true;
    }
    const int64_t before = totals.completion_tokens;
    for (const std::string& ev : parser.feed(data, size)) {
      if (ev == "[DONE]") {
        totals.done = true;
        continue;
      }
      if (ev.empty()) continue;
      json j = json::parse(ev, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded()) {
        totals.error = "an event is not JSON: " + ev.substr(0, 200);
        return false;
      }
      if (o_.backend == Backend::kSglang) {
        apply_sglang_event(j, totals);
      } else {
        apply_openai_event(j, totals);
      }
      if (!totals.error.empty()) return false;
    }
    // All events that arrived together count as one chunk: they share one arrival time.
    const int64_t added = totals.completion_tokens - before;
    if (added > 0) {
      if (out.chunks.empty()) {
        out.ttft = now - st;
      } else {
        const double gap = (now - last) / static_cast<double>(added);
        out.itl.insert(out.itl.end(), static_cast<size_t>(added), gap);
      }
      out.chunks.emplace_back(now - t0, added);
      last = now;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool ok = client.send(req, res, err);
  out.latency = steady_seconds() - st;
  out.output_len = totals.completion_tokens;
  if (totals.prompt_tokens >= 0) out.prompt_len = totals.prompt_tokens;
  out.cached_tokens = totals.cached_tokens;
  out.finish_reason = totals.finish_reason;
  if (!totals.error.empty()) {
    out.error = totals.error;
  } else if (status != 0 && status != 200) {
    out.error = fmt::format("HTTP {}: {}", status, error_body.substr(0, 500));
  } else if (!ok) {
    out.error = "HTTP request failed: " + httplib::to_string(err);
  } else if (!totals.done) {
    out.error = "the stream ended without [DONE]";
  } else {
    out.success = true;
  }
  return out;
}

json ServingClient::get_json(const std::string& path) const {
  httplib::Client client = make_client(o_.base_url, 30);
  auto res = client.Get(path);
  if (!res) {
    throw_error("GET {}{} failed: {}", o_.base_url, path, httplib::to_string(res.error()));
  }
  if (res->status != 200) {
    throw_error("GET {}{} answered HTTP {}: {}", o_.base_url, path, res->status,
                res->body.substr(0, 300));
  }
  json j = json::parse(res->body, nullptr, false);
  if (j.is_discarded()) throw_error("GET {}{} did not answer JSON", o_.base_url, path);
  return j;
}

bool ServingClient::post_empty(const std::string& path) const {
  httplib::Client client = make_client(o_.base_url, 60);
  auto res = client.Post(path);
  return res && res->status == 200;
}

}  // namespace dpserve::bench
