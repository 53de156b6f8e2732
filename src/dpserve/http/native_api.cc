#include "dpserve/http/native_api.h"

#include <cstdlib>
#include <limits>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"

namespace dpserve {

namespace {

using nlohmann::json;

constexpr const char* kVersion = "0.1.0";

ApiError bad_field(const std::string& field, const std::string& what) {
  return ApiError(400, fmt::format("\"{}\" {}", field, what), "invalid_request_error", field);
}

std::vector<int32_t> parse_ids(const json& j, const std::string& field) {
  std::vector<int32_t> ids;
  ids.reserve(j.size());
  for (const json& v : j) {
    if (!v.is_number_integer()) throw bad_field(field, "must be a list of integer token ids");
    const auto x = v.get<int64_t>();
    if (x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max()) {
      throw bad_field(field, fmt::format("holds the token id {}, outside the vocabulary", x));
    }
    ids.push_back(static_cast<int32_t>(x));
  }
  return ids;
}

SamplingParams parse_sampling_params(const json& j) {
  if (!j.is_null() && !j.is_object()) {
    throw bad_field("sampling_params", "must be an object (or a list of objects for a batch)");
  }
  try {
    return SamplingParams::from_json(j.is_null() ? json::object() : j);
  } catch (const Error& e) {
    throw ApiError(400, e.what(), "invalid_request_error", "sampling_params");
  }
}

json logprob_entries(const SequenceOutput& seq) {
  json out = json::array();
  for (size_t i = 0; i < seq.output_logprobs.size() && i < seq.output_ids.size(); ++i) {
    out.push_back(json::array({seq.output_logprobs[i], seq.output_ids[i], nullptr}));
  }
  return out;
}

json top_logprob_entries(const SequenceOutput& seq) {
  json out = json::array();
  for (const auto& row : seq.output_top_logprobs) {
    json r = json::array();
    for (const TopLogprob& t : row) r.push_back(json::array({t.logprob, t.token, nullptr}));
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

NativeGenerateRequest parse_generate_request(const json& body, int dp_size) {
  if (!body.is_object()) {
    throw ApiError(400, "the request body must be a JSON object", "invalid_request_error");
  }
  // SGLang fields dpserve does not serve: accepted only when null or false.
  static const std::set<std::string> kUnsupported = {"input_embeds",
                                                     "image_data",
                                                     "video_data",
                                                     "audio_data",
                                                     "lora_path",
                                                     "session_params",
                                                     "custom_logit_processor",
                                                     "return_hidden_states",
                                                     "bootstrap_host",
                                                     "bootstrap_port",
                                                     "bootstrap_room",
                                                     "token_ids_logprob",
                                                     "modalities"};
  static const std::set<std::string> kAccepted = {"logprob_start_len", "return_text_in_logprobs",
                                                  "log_metrics", "priority"};
  const json* text = nullptr;
  const json* input_ids = nullptr;
  json sampling_params;
  json rid;
  NativeGenerateRequest r;
  int64_t top_logprobs_num = 0;
  int32_t dp_rank = -1;
  for (const auto& [key, value] : body.items()) {
    if (key == "text") {
      if (!value.is_null()) text = &value;
    } else if (key == "input_ids") {
      if (!value.is_null()) input_ids = &value;
    } else if (key == "sampling_params") {
      sampling_params = value;
    } else if (key == "rid") {
      rid = value;
    } else if (key == "stream") {
      if (!value.is_boolean()) throw bad_field(key, "must be a boolean");
      r.stream = value.get<bool>();
    } else if (key == "return_logprob") {
      if (!value.is_boolean()) throw bad_field(key, "must be a boolean");
      r.return_logprob = value.get<bool>();
    } else if (key == "top_logprobs_num") {
      if (!value.is_number_integer()) throw bad_field(key, "must be an integer");
      top_logprobs_num = value.get<int64_t>();
      if (top_logprobs_num < 0 || top_logprobs_num > 1000) {
        throw bad_field(key, fmt::format("must be in [0, 1000], got {}", top_logprobs_num));
      }
    } else if (key == "data_parallel_rank") {
      if (value.is_null()) continue;
      if (!value.is_number_integer()) throw bad_field(key, "must be an integer");
      const int64_t k = value.get<int64_t>();
      if (k < 0 || k >= dp_size) {
        throw bad_field(
            key, fmt::format("must be in [0, {}) (the server's --dp-size), got {}", dp_size, k));
      }
      dp_rank = static_cast<int32_t>(k);
    } else if (kAccepted.count(key) != 0) {
      continue;
    } else if (kUnsupported.count(key) != 0) {
      if (!value.is_null() && value != false) {
        throw bad_field(key, "is not supported by this server");
      }
    } else {
      throw bad_field(key, "is not a known /generate field");
    }
  }
  if (text == nullptr && input_ids == nullptr) {
    throw ApiError(400, "one of \"text\" or \"input_ids\" is required", "invalid_request_error",
                   "text");
  }
  if (text != nullptr && input_ids != nullptr) {
    throw ApiError(400, "give either \"text\" or \"input_ids\", not both", "invalid_request_error",
                   "text");
  }

  // The prompts.
  std::vector<GenerateReqInput> inputs;
  if (text != nullptr) {
    if (text->is_string()) {
      inputs.push_back({.text = text->get<std::string>()});
    } else if (text->is_array() && !text->empty()) {
      r.is_batch = true;
      for (const json& t : *text) {
        if (!t.is_string()) throw bad_field("text", "must be a string or a list of strings");
        inputs.push_back({.text = t.get<std::string>()});
      }
    } else {
      throw bad_field("text", "must be a string or a non-empty list of strings");
    }
  } else {
    if (!input_ids->is_array()) throw bad_field("input_ids", "must be a list of token ids");
    if (!input_ids->empty() && input_ids->front().is_array()) {
      r.is_batch = true;
      for (const json& ids : *input_ids) {
        if (!ids.is_array()) throw bad_field("input_ids", "must be a list of lists of token ids");
        inputs.push_back({.input_ids = parse_ids(ids, "input_ids")});
      }
    } else {
      inputs.push_back({.input_ids = parse_ids(*input_ids, "input_ids")});
    }
  }

  // Per-prompt sampling parameters and request ids.
  if (sampling_params.is_array()) {
    if (sampling_params.size() != inputs.size()) {
      throw bad_field("sampling_params", fmt::format("has {} entries for {} prompts",
                                                     sampling_params.size(), inputs.size()));
    }
  }
  if (rid.is_array()) {
    if (rid.size() != inputs.size()) {
      throw bad_field("rid",
                      fmt::format("has {} entries for {} prompts", rid.size(), inputs.size()));
    }
  } else if (!rid.is_null() && !rid.is_string()) {
    throw bad_field("rid", "must be a string (or a list of strings for a batch)");
  } else if (rid.is_string() && inputs.size() > 1) {
    throw bad_field("rid", "must be a list of strings for a batch");
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    GenerateReqInput& in = inputs[i];
    in.sampling_params =
        parse_sampling_params(sampling_params.is_array() ? sampling_params[i] : sampling_params);
    if (r.return_logprob) in.sampling_params.return_logprob = true;
    if (top_logprobs_num > 0) in.sampling_params.top_logprobs_num = top_logprobs_num;
    if (in.sampling_params.return_logprob || in.sampling_params.top_logprobs_num > 0) {
      r.return_logprob = true;
    }
    in.stream = r.stream;
    in.data_parallel_rank = dp_rank;
    const json& id = rid.is_array() ? rid[i] : rid;
    if (!id.is_null()) {
      if (!id.is_string() || id.get<std::string>().empty()) {
        throw bad_field("rid", "must hold non-empty strings");
      }
      in.rid = id.get<std::string>();
    }
  }
  r.inputs = std::move(inputs);
  return r;
}

json generate_response_json(const SequenceOutput& seq, bool return_logprob, double e2e_latency) {
  json meta = {{"id", seq.rid},
               {"finish_reason", seq.finish_reason},
               {"prompt_tokens", seq.prompt_tokens},
               {"completion_tokens", seq.completion_tokens},
               {"cached_tokens", seq.cached_tokens},
               {"e2e_latency", e2e_latency}};
  if (return_logprob) {
    meta["input_token_logprobs"] = json::array();  // prompt logprobs are not computed
    meta["output_token_logprobs"] = logprob_entries(seq);
    meta["output_top_logprobs"] = top_logprob_entries(seq);
  }
  return {{"text", seq.text}, {"output_ids", seq.output_ids}, {"meta_info", std::move(meta)}};
}

namespace {

// State of one streamed /generate shared by the SSE source's copies.
struct StreamState {
  std::shared_ptr<GenerateHandle> handle;
  std::vector<SequenceOutput> seqs;
  bool return_logprob = false;
  bool log_outputs = false;
};

// A positive number of seconds from the environment, or `fallback`.
double env_seconds(const char* name, double fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr) return fallback;
  char* end = nullptr;
  const double x = std::strtod(v, &end);
  if (end == v || *end != '\0' || !(x > 0)) {
    spdlog::warn("{}={} is not a positive number of seconds; using {}", name, v, fallback);
    return fallback;
  }
  return x;
}

void log_output(const SequenceOutput& s) {
  spdlog::info("[{}] output (index {}): {}", s.rid, s.index, dump_json(json(s.text)));
}

void handle_generate(ServingContext& ctx, const json& body, httplib::Response& res) {
  NativeGenerateRequest req = parse_generate_request(body, ctx.args.dp_size);
  std::shared_ptr<GenerateHandle> h = ctx.tokenizer_manager.generate(std::move(req.inputs));
  const bool single = !req.is_batch && h->num_sequences() == 1;
  const bool log_outputs = ctx.args.log_requests;

  if (req.stream) {
    auto st = std::make_shared<StreamState>();
    st->handle = h;
    st->seqs.resize(static_cast<size_t>(h->num_sequences()));
    st->return_logprob = req.return_logprob;
    st->log_outputs = log_outputs;
    set_sse_response(res, [st, single]() {
      SseStep step;
      for (GenerateChunk& c : st->handle->next(std::chrono::milliseconds(100))) {
        SequenceOutput& s = st->seqs[static_cast<size_t>(c.seq)];
        s.add(c.out);
        json j = generate_response_json(s, st->return_logprob, st->handle->elapsed_seconds());
        if (!single) j["index"] = c.seq;
        step.events.push_back(dump_json(j));
        if (s.finished && st->log_outputs) log_output(s);
      }
      step.done = st->handle->done();
      return step;
    });
    return;
  }

  std::vector<SequenceOutput> seqs(static_cast<size_t>(h->num_sequences()));
  while (!h->done()) {
    if (client_disconnected()) {
      // Nobody will read the answer: dropping the handle aborts the requests.
      spdlog::info("[{}] the client closed its connection before the response was ready",
                   h->rids().front());
      throw ApiError(499, "the client closed the connection", "client_closed_request");
    }
    for (GenerateChunk& c : h->next(std::chrono::milliseconds(100))) {
      seqs[static_cast<size_t>(c.seq)].add(c.out);
    }
  }
  const double latency = h->elapsed_seconds();
  json out = json::array();
  for (const SequenceOutput& s : seqs) {
    if (log_outputs) log_output(s);
    out.push_back(generate_response_json(s, req.return_logprob, latency));
  }
  res.set_content(dump_json(single ? out[0] : out), "application/json");
}

}  // namespace

void register_native_routes(HttpServer& server, ServingContext& ctx) {
  TokenizerManager& tm = ctx.tokenizer_manager;

  auto generate = [&ctx](const httplib::Request&, httplib::Response& res, const json& body) {
    handle_generate(ctx, body, res);
  };
  server.post("/generate", generate);
  server.put("/generate", generate);

  server.get("/health", [&tm](const httplib::Request&, httplib::Response& res, const json&) {
    // From the front end alone: 503 while recovering, draining or dead, saying which.
    const HealthStatus h = tm.health();
    if (!h.ok) {
      throw ApiError(503, h.message, "service_unavailable").with_retry_after(h.retry_after_s);
    }
    res.status = 200;
  });

  // One probe per DP group (SGLang's SGLANG_HEALTH_CHECK_TIMEOUT is our
  // DPSERVE_HEALTH_CHECK_TIMEOUT, in seconds, default 20).
  const auto probe_timeout = std::chrono::milliseconds(
      static_cast<int64_t>(1000.0 * env_seconds("DPSERVE_HEALTH_CHECK_TIMEOUT", 20.0)));
  const int dp_size = ctx.args.dp_size;
  server.get("/health_generate", [&tm, probe_timeout, dp_size](
                                     const httplib::Request&, httplib::Response& res, const json&) {
    if (!tm.healthy()) {
      throw ApiError(503, "health check failed: the server is shutting down or its scheduler died",
                     "service_unavailable");
    }
    const std::vector<int32_t> failed = tm.health_generate(dp_size, probe_timeout);
    if (!failed.empty()) {
      const double secs = static_cast<double>(probe_timeout.count()) / 1000.0;
      throw ApiError(503,
                     dp_size > 1
                         ? fmt::format("health check failed: DP group {} of {} produced no token "
                                       "within {} s",
                                       fmt::join(failed, ", "), dp_size, secs)
                         : fmt::format("health check failed: the scheduler produced no token "
                                       "within {} s",
                                       secs),
                     "service_unavailable");
    }
    res.status = 200;
  });

  server.get_json("/get_model_info", [&ctx](const httplib::Request&, const json&) {
    const SchedulerInfo& info = ctx.tokenizer_manager.info();
    return json{{"model_path", ctx.args.model_path},
                {"tokenizer_path", ctx.args.effective_tokenizer_path()},
                {"served_model_name", ctx.args.effective_served_model_name()},
                {"is_generation", true},
                {"preferred_sampling_params", nullptr},
                {"weight_version", "default"},
                {"context_length", info.context_length},
                {"vocab_size", info.vocab_size}};
  });

  server.get_json("/get_server_info", [&ctx](const httplib::Request&, const json&) {
    TokenizerManager& t = ctx.tokenizer_manager;
    json j = ctx.args.to_json();
    json sched;
    try {
      sched = t.scheduler_server_info();
    } catch (const ApiError& e) {
      if (!ctx.add_lifecycle_info) throw;
      sched = {{"error", e.what()}};  // recovering: the ranks' states below still answer
    }
    j["max_total_num_tokens"] = sched.value("max_total_num_tokens", int64_t{0});
    j["max_req_input_len"] = t.info().context_length - 1;
    j["internal_states"] = json::array({sched});
    j["num_live_requests"] = t.num_live_requests();
    j["runtime_dir"] = ctx.runtime_dir;
    j["scheduler_pid"] = ctx.scheduler_pid;
    j["version"] = kVersion;
    if (ctx.add_lifecycle_info) ctx.add_lifecycle_info(j);
    return j;
  });

  auto flush = [&tm](const httplib::Request&, httplib::Response& res, const json&) {
    const FlushCacheResp r = tm.flush_cache();
    if (!r.success) throw ApiError(400, r.message, "invalid_request_error");
    res.set_content("Cache flushed.\n", "text/plain");
  };
  server.get("/flush_cache", flush);
  server.post("/flush_cache", flush);
}

}  // namespace dpserve
