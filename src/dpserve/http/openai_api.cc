#include "dpserve/http/openai_api.h"

#include <algorithm>
#include <mutex>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"

namespace dpserve {

namespace {

using ojson = nlohmann::ordered_json;

constexpr std::chrono::milliseconds kPollInterval(100);

// The (id, logprob) alternatives of one output row, as make_logprob_entries takes them.
std::vector<std::vector<std::pair<int32_t, float>>> top_pairs(
    const std::vector<std::vector<TopLogprob>>& rows, size_t n) {
  std::vector<std::vector<std::pair<int32_t, float>>> out(std::min(rows.size(), n));
  for (size_t i = 0; i < out.size(); ++i) {
    for (const TopLogprob& t : rows[i]) out[i].emplace_back(t.token, t.logprob);
  }
  return out;
}

// Tokenizes the request's prompt: the chat template's rendering (which writes its own special
// tokens) or the completion prompt (text with special tokens added, or ids as given). Sets
// `echo` to the prompt text for completions.
std::vector<int32_t> prompt_ids(const OpenAIServing& s, const OpenAIRequest& req,
                                std::string& echo) {
  const Tokenizer& tok = s.ctx.tokenizer_manager.tokenizer();
  if (req.is_chat()) {
    if (!s.chat_template) {
      throw ApiError(400,
                     "This model has no chat template, so /v1/chat/completions cannot be served "
                     "(use /v1/completions): " +
                         s.chat_template_error,
                     "invalid_request_error", "messages");
    }
    std::string prompt;
    try {
      prompt = s.chat_template->render(req.messages, req.chat_template_options());
    } catch (const Error& e) {
      throw ApiError(400,
                     std::string("The chat template cannot render these messages: ") + e.what(),
                     "invalid_request_error", "messages");
    }
    return tok.encode(prompt, /*add_special_tokens=*/false);
  }
  if (req.prompt_text) {
    echo = *req.prompt_text;
    return tok.encode(*req.prompt_text, /*add_special_tokens=*/true);
  }
  echo = tok.decode(*req.prompt_ids, /*skip_special_tokens=*/true);
  return *req.prompt_ids;
}

// Parses, validates and starts one request; returns its generation.
std::shared_ptr<OpenAIGeneration> start_request(OpenAIServing& s, const httplib::Request& http,
                                                OpenAIEndpoint endpoint, bool& stream) {
  TokenizerManager& tm = s.ctx.tokenizer_manager;
  const ojson body = parse_json_body(std::string_view(http.body));
  ParseOptions opts;
  opts.vocab_size = tm.info().vocab_size;
  const OpenAIRequest req = endpoint == OpenAIEndpoint::kChatCompletions
                                ? parse_chat_request(body, opts)
                                : parse_completion_request(body, opts);
  check_model(req.model, s.served_model_name);

  std::string echo;
  std::vector<int32_t> ids = prompt_ids(s, req, echo);
  check_prompt_length(req, ids, tm.info().context_length, tm.info().vocab_size);

  GenerateReqInput in;
  in.input_ids = std::move(ids);
  in.sampling_params = req.params;
  in.stream = req.stream;
  std::vector<GenerateReqInput> inputs;
  inputs.push_back(std::move(in));
  std::shared_ptr<GenerateHandle> handle = tm.generate(std::move(inputs));

  ResponseMeta meta;
  meta.id = make_response_id(req.is_chat());
  meta.created = unix_time_now();
  meta.model = s.served_model_name;
  if (req.echo) meta.echo_text = echo;
  meta.split_reasoning = req.is_chat() && req.separate_reasoning && s.chat_template &&
                         s.chat_template->source().find("</think>") != std::string::npos;
  auto gen = std::make_shared<OpenAIGeneration>(req, handle, std::move(meta), tm.tokenizer());
  spdlog::log(s.ctx.args.log_requests ? spdlog::level::info : spdlog::level::debug,
              "[{}] {}: {} prompt tokens, n {}, stream {}{}{}", gen->rid(), http.path,
              handle->input_ids().front().size(), req.n, req.stream,
              req.user.empty() ? "" : ", user ", req.user);
  if (!req.ignored_fields.empty()) {
    spdlog::debug("[{}] ignored fields: {}", gen->rid(), fmt::join(req.ignored_fields, ", "));
  }
  stream = req.stream;
  return gen;
}

// POST /v1/completions and /v1/chat/completions: one path, streaming or not.
void handle_generation(OpenAIServing& s, const httplib::Request& http, httplib::Response& res,
                       OpenAIEndpoint endpoint) {
  bool stream = false;
  std::shared_ptr<OpenAIGeneration> gen = start_request(s, http, endpoint, stream);
  if (stream) {
    // Dropping `gen` (end of stream, or the client hung up) drops the handle, which aborts an
    // unfinished request.
    set_sse_response(res, [gen]() {
      SseStep step;
      for (const ojson& chunk : gen->step(kPollInterval)) step.events.push_back(dump_json(chunk));
      step.done = gen->done();
      return step;
    });
    return;
  }
  while (!gen->done()) {
    if (client_disconnected()) {
      // Nobody will read the answer: dropping `gen` aborts the request.
      spdlog::info("[{}] the client closed its connection before the response was ready",
                   gen->rid());
      throw ApiError(499, "the client closed the connection", "client_closed_request");
    }
    gen->step(kPollInterval);
  }
  res.set_content(dump_json(gen->response()), "application/json");
}

// Sets the scheduler gauges from its server info (at most one query per scrape).
class SchedulerGaugeRefresher {
 public:
  void refresh(ServingContext& ctx) {
    nlohmann::json info;
    try {
      info = ctx.tokenizer_manager.scheduler_server_info(std::chrono::seconds(2));
    } catch (const std::exception& e) {
      spdlog::warn("/metrics: no scheduler stats: {}", e.what());
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    SchedulerGauges s;
    s.num_running_reqs = info.value("num_running_reqs", int64_t{0});
    s.num_queue_reqs = info.value("num_waiting_reqs", int64_t{0});
    const int64_t page = std::max<int64_t>(info.value("page_size", int64_t{1}), 1);
    const int64_t total = info.value("max_total_num_tokens", int64_t{0});
    s.num_used_tokens = info.value("num_used_pages", int64_t{0}) * page;
    s.token_usage = total > 0 ? static_cast<double>(s.num_used_tokens) / total : 0.0;
    const nlohmann::json stats = info.value("stats", nlohmann::json::object());
    const auto computed = stats.value("num_prefill_tokens", int64_t{0});
    const auto cached = stats.value("num_cached_tokens", int64_t{0});
    s.cache_hit_rate = computed + cached > 0
                           ? static_cast<double>(cached) / static_cast<double>(computed + cached)
                           : 0.0;
    // Decode tokens per second since the previous scrape.
    const auto decoded = stats.value("num_decode_tokens", int64_t{0});
    const auto now = std::chrono::steady_clock::now();
    if (last_decoded_ >= 0) {
      const double dt = std::chrono::duration<double>(now - last_time_).count();
      if (dt > 0) throughput_ = static_cast<double>(decoded - last_decoded_) / dt;
    }
    last_decoded_ = decoded;
    last_time_ = now;
    s.gen_throughput = std::max(throughput_, 0.0);
    ctx.metrics->set_scheduler_stats(s);
  }

 private:
  std::mutex mu_;
  int64_t last_decoded_ = -1;
  std::chrono::steady_clock::time_point last_time_;
  double throughput_ = 0.0;
};

}  // namespace

OpenAIGeneration::OpenAIGeneration(const OpenAIRequest& req, std::shared_ptr<GenerateHandle> handle,
                                   ResponseMeta meta, const Tokenizer& tokenizer)
    : handle_(std::move(handle)),
      builder_(req, std::move(meta)),
      tokenizer_(tokenizer),
      logprobs_(req.logprobs) {
  DPSERVE_CHECK(handle_->num_prompts() == 1 && handle_->num_sequences() == req.n,
                "an OpenAI request is one prompt with n = {} sequences", req.n);
  builder_.set_prompt_tokens(static_cast<int64_t>(handle_->input_ids().front().size()));
}

std::vector<nlohmann::ordered_json> OpenAIGeneration::step(std::chrono::milliseconds timeout) {
  std::vector<ojson> out;
  if (!started_) {
    started_ = true;
    out = builder_.start();
  }
  if (done_) return out;
  for (const GenerateChunk& c : handle_->next(timeout)) {
    const TokenIdOut& o = c.out;
    ChoiceDelta d;
    d.index = c.seq;  // one prompt: its sequences are the choices
    d.text = o.new_text;
    d.num_tokens = static_cast<int64_t>(o.new_token_ids.size());
    if (logprobs_) {
      const size_t n = std::min(o.new_token_ids.size(), o.output_logprobs.size());
      d.logprobs = make_logprob_entries(
          tokenizer_, std::span<const int32_t>(o.new_token_ids.data(), n),
          std::span<const float>(o.output_logprobs.data(), n), top_pairs(o.output_top_logprobs, n));
    }
    if (o.finished) {
      d.finish_reason = o.finish_reason_json.empty()
                            ? nlohmann::json{{"type", "stop"}}
                            : nlohmann::json::parse(o.finish_reason_json, nullptr, false);
      if (!d.finish_reason.is_object()) d.finish_reason = {{"type", "stop"}};
    }
    d.prompt_tokens = o.prompt_tokens;
    d.cached_tokens = o.cached_tokens;
    for (ojson& chunk : builder_.add(d)) out.push_back(std::move(chunk));
  }
  if (handle_->done()) {
    for (ojson& chunk : builder_.end()) out.push_back(std::move(chunk));
    done_ = true;
  }
  return out;
}

void register_openai_routes(HttpServer& server, ServingContext& ctx) {
  auto s = std::make_shared<OpenAIServing>(
      OpenAIServing{.ctx = ctx,
                    .chat_template = std::nullopt,
                    .chat_template_error = "",
                    .served_model_name = ctx.args.effective_served_model_name(),
                    .created = unix_time_now()});
  const std::string config = ctx.args.effective_tokenizer_path() + "/tokenizer_config.json";
  try {
    s->chat_template.emplace(ChatTemplate::from_tokenizer_config(config));
  } catch (const Error& e) {
    s->chat_template_error = e.what();
    spdlog::warn("no chat template ({}): /v1/chat/completions will answer 400", e.what());
  }

  server.get("/v1/models", [s](const httplib::Request&, httplib::Response& res,
                               const nlohmann::json&) {
    res.set_content(dump_json(models_list(s->served_model_name, s->created, s->ctx.args.model_path,
                                          s->ctx.tokenizer_manager.info().context_length)),
                    "application/json");
  });
  server.post_unparsed("/v1/completions", [s](const httplib::Request& req, httplib::Response& res,
                                              const nlohmann::json&) {
    handle_generation(*s, req, res, OpenAIEndpoint::kCompletions);
  });
  server.post_unparsed("/v1/chat/completions", [s](const httplib::Request& req,
                                                   httplib::Response& res, const nlohmann::json&) {
    handle_generation(*s, req, res, OpenAIEndpoint::kChatCompletions);
  });
}

void register_metrics_route(HttpServer& server, ServingContext& ctx) {
  DPSERVE_CHECK(ctx.metrics_registry != nullptr && ctx.metrics != nullptr,
                "register_metrics_route needs the metrics registry");
  auto gauges = std::make_shared<SchedulerGaugeRefresher>();
  server.get("/metrics", [&ctx, gauges](const httplib::Request&, httplib::Response& res,
                                        const nlohmann::json&) {
    gauges->refresh(ctx);
    res.set_content(ctx.metrics_registry->render(), MetricsRegistry::kContentType);
  });
}

}  // namespace dpserve
