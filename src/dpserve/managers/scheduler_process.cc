#include "dpserve/managers/scheduler_process.h"

#include <csignal>
#include <cstdlib>
#include <unordered_map>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/common/logging.h"
#include "dpserve/ipc/zmq_socket.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {

namespace {

TokenIdOut to_wire(RequestOutput&& o) {
  TokenIdOut t;
  t.rid = std::move(o.rid);
  t.index = o.index;
  t.new_token_ids = std::move(o.new_token_ids);
  t.new_text = std::move(o.new_text);
  t.finished = o.finished;
  if (o.finish_reason) t.finish_reason_json = o.finish_reason->to_json().dump();
  t.prompt_tokens = o.prompt_tokens;
  t.completion_tokens = o.completion_tokens;
  t.cached_tokens = o.cached_tokens;
  t.output_logprobs = std::move(o.output_logprobs);
  t.output_top_logprobs.reserve(o.output_top_logprobs.size());
  for (const auto& row : o.output_top_logprobs) {
    std::vector<TopLogprob> r;
    r.reserve(row.size());
    for (const TokenLogprob& tl : row) r.push_back({tl.token, tl.logprob});
    t.output_top_logprobs.push_back(std::move(r));
  }
  return t;
}

// The loop of one scheduler process: one thread owns the Scheduler and both sockets.
class SchedulerProcess {
 public:
  SchedulerProcess(Scheduler& scheduler, MessageSocket& in, MessageSocket& out)
      : scheduler_(scheduler), in_(in), out_(out) {}

  [[noreturn]] void run() {
    bool was_busy = false;
    for (;;) {
      const bool busy = scheduler_.has_work();
      // Block while idle; drain without waiting while there is work.
      std::optional<Message> msg = recv(busy ? Millis(0) : Millis(1000));
      while (msg) {
        handle(std::move(*msg));
        msg = recv(Millis(0));
      }
      if (!out_batch_.outputs.empty()) flush_outputs();
      if (scheduler_.has_work()) {
        was_busy = true;
        for (RequestOutput& o : scheduler_.step()) add_output(std::move(o));
        flush_outputs();
      } else if (was_busy) {
        was_busy = false;
        // Idle: the memory accounting must balance (SGLang's self_check_during_idle).
        if (const std::string report = scheduler_.check_memory(); !report.empty()) {
          spdlog::error("scheduler: memory check failed at idle: {}", report);
        }
      }
    }
  }

 private:
  std::optional<Message> recv(Millis timeout) {
    try {
      return in_.recv(timeout);
    } catch (const Error& e) {
      spdlog::error("scheduler: dropping a malformed message: {}", e.what());
      return std::nullopt;
    }
  }

  void handle(Message&& msg) {
    if (auto* r = std::get_if<TokenizedGenerateReq>(&msg)) {
      add_request(std::move(*r));
    } else if (auto* a = std::get_if<AbortReq>(&msg)) {
      if (a->abort_all) {
        std::vector<std::string> rids;
        for (const auto& [rid, n] : live_) rids.push_back(rid);
        for (const std::string& rid : rids) scheduler_.abort_request(rid, "server shutting down");
      } else {
        scheduler_.abort_request(a->rid, "aborted by the client");
      }
    } else if (std::holds_alternative<FlushCacheReq>(msg)) {
      FlushCacheResp resp;
      resp.success = scheduler_.flush_cache();
      if (resp.success) {
        spdlog::info("scheduler: cache flushed");
      } else {
        resp.message = fmt::format("Cache not flushed: {} requests are running or waiting",
                                   scheduler_.num_waiting() + scheduler_.num_running());
      }
      out_.send(resp);
    } else if (std::holds_alternative<GetServerInfoReq>(msg)) {
      out_.send(GetServerInfoResp{server_info().dump()});
    } else {
      spdlog::error("scheduler: unexpected {} message", message_name(msg));
    }
  }

  void add_request(TokenizedGenerateReq&& r) {
    GenerateRequest req;
    req.rid = r.rid;
    req.input_ids = std::move(r.input_ids);
    int64_t n = 1;
    try {
      req.sampling_params =
          SamplingParams::from_json(nlohmann::json::parse(r.sampling_params_json));
      req.sampling_params.return_logprob = r.return_logprob;
      req.sampling_params.top_logprobs_num = r.top_logprobs_num;
      n = std::max<int64_t>(req.sampling_params.n, 1);
      const auto prompt_len = static_cast<int64_t>(req.input_ids.size());
      scheduler_.add_request(std::move(req));
      live_[r.rid] = n;
      spdlog::debug("[{}] scheduled: {} prompt tokens", r.rid, prompt_len);
    } catch (const std::exception& e) {
      spdlog::warn("[{}] rejected: {}", r.rid, e.what());
      for (int64_t i = 0; i < n; ++i) {
        RequestOutput out;
        out.rid = r.rid;
        out.index = i;
        out.finished = true;
        out.finish_reason = FinishReason::abort(e.what());
        out_batch_.outputs.push_back(to_wire(std::move(out)));
      }
    }
  }

  void add_output(RequestOutput&& o) {
    if (o.finished) {
      const auto it = live_.find(o.rid);
      if (it != live_.end() && --it->second <= 0) live_.erase(it);
    }
    out_batch_.outputs.push_back(to_wire(std::move(o)));
  }

  void flush_outputs() {
    if (out_batch_.outputs.empty()) return;
    out_.send(out_batch_);
    out_batch_.outputs.clear();
  }

  nlohmann::json server_info() const {
    const PagedAllocator& a = scheduler_.allocator();
    const RadixCache& t = scheduler_.tree_cache();
    const SchedulerStats s = scheduler_.stats();
    const KVPoolSize& p = scheduler_.kv_pool_size();
    nlohmann::json j;
    j["max_total_num_tokens"] = p.usable_tokens;
    j["kv_pool_source"] = p.source;
    j["kv_pool_bytes"] = p.bytes;
    j["page_size"] = p.page_size;
    j["num_pages"] = a.num_pages();
    j["num_free_pages"] = a.num_free_pages();
    j["num_used_pages"] = a.num_used_pages();
    j["available_tokens"] = a.available_tokens();
    j["all_pages_free"] = a.check_idle();
    j["radix_cache"] = {{"evictable_tokens", t.evictable_size()},
                        {"protected_tokens", t.protected_size()},
                        {"num_nodes", t.num_nodes()}};
    j["num_running_reqs"] = scheduler_.num_running();
    j["num_waiting_reqs"] = scheduler_.num_waiting();
    j["num_live_requests"] = static_cast<int64_t>(live_.size());
    j["memory_check"] = scheduler_.check_memory();  // "" = consistent
    j["new_token_ratio"] = scheduler_.new_token_ratio();
    j["max_running_requests"] = scheduler_.config().max_running_requests;
    j["stats"] = {{"num_steps", s.num_steps},
                  {"num_prefill_batches", s.num_prefill_batches},
                  {"num_decode_batches", s.num_decode_batches},
                  {"num_prefill_tokens", s.num_prefill_tokens},
                  {"num_decode_tokens", s.num_decode_tokens},
                  {"num_cached_tokens", s.num_cached_tokens},
                  {"num_retractions", s.num_retractions},
                  {"num_finished", s.num_finished},
                  {"num_aborted", s.num_aborted},
                  {"num_watchdog_reports", s.num_watchdog_reports}};
    j["pid"] = static_cast<int64_t>(getpid());
    return j;
  }

  Scheduler& scheduler_;
  MessageSocket& in_;
  MessageSocket& out_;
  BatchTokenIdOut out_batch_;
  std::unordered_map<std::string, int64_t> live_;  // rid -> unfinished sequences
};

}  // namespace

SchedulerConfig scheduler_config_from_server_args(const ServerArgs& args) {
  SchedulerConfig c;
  c.max_running_requests = args.max_running_requests;
  c.max_total_tokens = args.max_total_tokens;
  c.kv_cache_memory = args.kv_cache_memory;
  c.page_size = args.page_size;
  c.chunked_prefill_size = args.chunked_prefill_size;
  c.max_prefill_tokens = args.max_prefill_tokens;
  c.schedule_policy = args.schedule_policy;
  c.disable_radix_cache = args.disable_radix_cache;
  c.watchdog_timeout = args.watchdog_timeout;
  c.random_seed = args.random_seed;
  c.num_threads = args.num_threads;
  c.attention_backend = args.attention_backend;
  return c;
}

std::vector<std::string> scheduler_child_args(const std::string& runtime_dir,
                                              const std::vector<std::string>& serve_args) {
  std::vector<std::string> a = {kRuntimeDirFlag, runtime_dir};
  a.insert(a.end(), serve_args.begin(), serve_args.end());
  return a;
}

int run_scheduler_process(ChildContext& ctx) {
  // The parent handles Ctrl-C for the whole tree and stops this process with SIGTERM.
  std::signal(SIGINT, SIG_IGN);
  try {
    ServerArgs args;
    std::string runtime_dir;
    CLI::App app{"dpserve scheduler process"};
    args.add_to(app);
    app.add_option(kRuntimeDirFlag, runtime_dir)->required();
    std::vector<std::string> argv(ctx.args().rbegin(), ctx.args().rend());  // CLI11: reversed
    app.parse(argv);
    init_logging(args.log_level);

    const SchedulerConfig config = scheduler_config_from_server_args(args);
    config.validate();
    std::shared_ptr<LlamaForCausalLM> model = make_model(args.model_path, config);
    std::shared_ptr<const Tokenizer> tokenizer(load_tokenizer(args.effective_tokenizer_path()));
    const int64_t model_ctx = model->config().max_position_embeddings;
    if (args.context_length > model_ctx) {
      throw_error("--context-length {} exceeds the model's max_position_embeddings {}",
                  args.context_length, model_ctx);
    }
    Scheduler scheduler(config, model, tokenizer);
    scheduler.set_watchdog_callback([](int64_t step, double seconds) {
      // SGLang kills the process tree on a hung step; exiting here makes the server notice a
      // dead scheduler and exit non-zero.
      spdlog::critical("watchdog: step {} hung for {:.1f} s; the scheduler process exits", step,
                       seconds);
      std::_Exit(3);
    });

    MessageSocket in(zmq::socket_type::pull);
    in.connect(ipc_endpoint(runtime_dir, kSchedulerInputSocket));
    MessageSocket out(zmq::socket_type::push);
    out.connect(ipc_endpoint(runtime_dir, kSchedulerOutputSocket));

    const KVPoolSize& pool = scheduler.kv_pool_size();
    const int64_t ctx_len = args.context_length > 0 ? args.context_length : model_ctx;
    spdlog::info(
        "scheduler ready: KV pool {} tokens ({} pages of {}, {}), context length {}, max "
        "running requests {}",
        pool.usable_tokens, pool.num_pages, pool.page_size, pool.source, ctx_len,
        scheduler.config().max_running_requests);
    ctx.signal_ready({{"max_total_tokens", pool.usable_tokens},
                      {"context_length", ctx_len},
                      {"page_size", pool.page_size},
                      {"vocab_size", model->config().vocab_size},
                      {"max_running_requests", scheduler.config().max_running_requests},
                      {"pid", static_cast<int64_t>(getpid())}});
    SchedulerProcess(scheduler, in, out).run();
  } catch (const CLI::ParseError& e) {
    ctx.signal_error(fmt::format("scheduler arguments: {}", e.what()));
    return 1;
  } catch (const std::exception& e) {
    ctx.signal_error(e.what());
    return 1;
  }
}

}  // namespace dpserve
