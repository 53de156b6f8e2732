#include "dpserve/managers/scheduler_process.h"

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <unordered_map>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/common/logging.h"
#include "dpserve/distributed/coordinator_client.h"
#include "dpserve/distributed/coordinator_store.h"
#include "dpserve/distributed/parallel_state.h"
#include "dpserve/distributed/process_group.h"
#include "dpserve/ipc/zmq_auth.h"
#include "dpserve/ipc/zmq_socket.h"
#include "dpserve/managers/data_parallel_controller.h"
#include "dpserve/managers/load_reporter.h"
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

// Inputs of one step as one byte string: each encoded message behind its 4-byte length.
std::string pack_inputs(const std::vector<Message>& msgs) {
  std::string out;
  for (const Message& m : msgs) {
    const std::string e = encode(m);
    const auto n = static_cast<uint32_t>(e.size());
    out.append(reinterpret_cast<const char*>(&n), sizeof(n));
    out.append(e);
  }
  return out;
}

// The inverse of pack_inputs. The bytes come from our own leader, so a malformed frame is a bug.
std::vector<Message> unpack_inputs(std::string_view bytes) {
  std::vector<Message> msgs;
  while (!bytes.empty()) {
    uint32_t n = 0;
    DPSERVE_CHECK(bytes.size() >= sizeof(n), "step inputs: truncated frame length");
    std::memcpy(&n, bytes.data(), sizeof(n));
    bytes.remove_prefix(sizeof(n));
    DPSERVE_CHECK(bytes.size() >= n, "step inputs: truncated frame");
    msgs.push_back(decode(bytes.substr(0, n)));
    bytes.remove_prefix(n);
  }
  return msgs;
}

// The loop of one scheduler rank. The leader (rank 0 of its input group: the TP group, or under
// DP attention its DP group's attn_tp group) owns the sockets: it reads the step's inputs and,
// with more ranks, broadcasts them over that group (SGLang's broadcast_pyobj), so every rank of
// the group applies the same inputs in the same order and runs the same batch; only the leader
// sends outputs and answers. A follower gets its inputs from that broadcast alone.
class SchedulerProcess {
 public:
  // `in`/`out` are null on followers; `tp_group` (the input group) is null (or of size 1) with
  // one rank. `control` (a DP group leader's socket to the DataParallelController, else null)
  // carries load reports and the answers to control requests, tagged with `dp_rank`.
  // `step_always` (DP attention): step every iteration, since each step's sync is a collective
  // of all ranks.
  SchedulerProcess(Scheduler& scheduler, MessageSocket* in, MessageSocket* out,
                   ProcessGroup* tp_group, MessageSocket* control = nullptr, int dp_rank = -1,
                   bool step_always = false)
      : scheduler_(scheduler),
        in_(in),
        out_(out),
        tp_group_(tp_group),
        control_(control),
        dp_rank_(dp_rank),
        step_always_(step_always) {
    DPSERVE_CHECK(is_leader() == (in_ != nullptr && out_ != nullptr),
                  "only the leader rank owns the scheduler sockets");
    DPSERVE_CHECK(control_ == nullptr || (is_leader() && dp_rank_ >= 0),
                  "only a DP group leader talks to the controller");
    if (control_ != nullptr) reporter_.emplace(*control_, dp_rank_);
  }

  [[noreturn]] void run() {
    bool was_busy = false;
    for (;;) {
      // DP attention: while any group computed last step, no rank waits for inputs (the others
      // would wait for it in the next sync); when all are idle, every leader waits a while.
      const bool busy =
          scheduler_.has_work() || (step_always_ && scheduler_.last_global_num_tokens() > 0);
      for (Message& msg : next_inputs(busy)) handle(std::move(msg));
      report_load();
      if (!out_batch_.outputs.empty()) flush_outputs();
      const bool local_work = scheduler_.has_work();
      if (local_work || step_always_) {
        for (RequestOutput& o : scheduler_.step()) add_output(std::move(o));
        flush_outputs();
      }
      if (local_work) {
        was_busy = true;
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
  bool is_leader() const { return tp_group_ == nullptr || tp_group_->rank() == 0; }
  bool has_followers() const { return tp_group_ != nullptr && tp_group_->size() > 1; }

  // This step's inputs: read by the leader (blocking a while when idle, so an idle server
  // sleeps; with followers the wait is short because they wait in the broadcast), then shared.
  std::vector<Message> next_inputs(bool busy) {
    std::vector<Message> msgs;
    if (is_leader()) {
      // With followers (they wait in the broadcast) or a controller (it expects load reports a
      // few times a second) the leader wakes up often while idle.
      const Millis idle_wait = has_followers() || control_ != nullptr ? Millis(100) : Millis(1000);
      std::optional<Message> msg = recv(busy ? Millis(0) : idle_wait);
      while (msg) {
        msgs.push_back(std::move(*msg));
        msg = recv(Millis(0));
      }
    }
    if (!has_followers()) return msgs;
    std::string packed = is_leader() ? pack_inputs(msgs) : std::string();
    tp_group_->broadcast_string(packed, 0);
    if (!is_leader()) msgs = unpack_inputs(packed);
    return msgs;
  }

  std::optional<Message> recv(Millis timeout) {
    try {
      return in_->recv(timeout);
    } catch (const Error& e) {
      spdlog::error("scheduler: dropping a malformed message: {}", e.what());
      return std::nullopt;
    }
  }

  // Sends a reply to a control request (leader only): to the controller under DP, tagged with
  // this group's rank, else to the main process.
  void reply(Message msg) {
    if (control_ != nullptr) {
      if (auto* f = std::get_if<FlushCacheResp>(&msg)) f->dp_rank = dp_rank_;
      if (auto* g = std::get_if<GetServerInfoResp>(&msg)) g->dp_rank = dp_rank_;
      control_->send(msg);
    } else if (out_ != nullptr) {
      out_->send(msg);
    }
  }

  // Tells the controller this group's load, a few times a second (DP group leaders only).
  void report_load() {
    if (!reporter_ || !reporter_->due()) return;
    const PagedAllocator& a = scheduler_.allocator();
    SchedulerLoad load;
    load.num_running_reqs = scheduler_.num_running();
    load.num_waiting_reqs = scheduler_.num_waiting();
    load.num_used_tokens = a.num_used_pages() * a.page_size();
    load.num_queued_tokens = scheduler_.num_waiting_tokens();
    load.max_total_tokens = scheduler_.kv_pool_size().usable_tokens;
    reporter_->report(load);
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
      reply(resp);
    } else if (std::holds_alternative<GetServerInfoReq>(msg)) {
      if (is_leader()) {
        GetServerInfoResp resp;
        resp.info_json = server_info().dump();
        reply(std::move(resp));
      }
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
    if (out_ != nullptr) out_->send(out_batch_);
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
                  {"num_idle_batches", s.num_idle_batches},
                  {"num_decode_batches_beside_prefill", s.num_decode_batches_beside_prefill},
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
  MessageSocket* in_;       // leader only
  MessageSocket* out_;      // leader only
  ProcessGroup* tp_group_;  // null with one rank
  MessageSocket* control_;  // DP group leader: to the controller; else null
  int dp_rank_;             // the DP group this leader serves; -1 without a controller
  bool step_always_;        // DP attention: step (and sync) every iteration
  std::optional<LoadReporter> reporter_;  // load reports to the controller
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

int default_rank_threads(int local_ranks) {
  const int cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cpus / std::max(1, local_ranks));
}

std::vector<std::string> scheduler_child_args(const std::string& runtime_dir,
                                              const std::vector<std::string>& serve_args) {
  std::vector<std::string> a = {kRuntimeDirFlag, runtime_dir};
  a.insert(a.end(), serve_args.begin(), serve_args.end());
  return a;
}

namespace {

// Flags every rank must share: scheduling decisions have to be identical on every rank, so a
// rank started with a different model or different budgets is refused at registration.
Fingerprint rank_fingerprint(const ServerArgs& a) {
  auto opt = [](const auto& v) { return v ? std::to_string(*v) : std::string("none"); };
  return {{"model_path", a.model_path},
          {"tokenizer_path", a.effective_tokenizer_path()},
          {"tp_size", std::to_string(a.tp_size)},
          {"dp_size", std::to_string(a.dp_size)},
          {"ep_size", std::to_string(a.ep_size)},
          {"enable_dp_attention", a.enable_dp_attention ? "true" : "false"},
          {"nnodes", std::to_string(a.nnodes)},
          {"dtype", a.dtype},
          {"context_length", std::to_string(a.context_length)},
          {"page_size", std::to_string(a.page_size)},
          {"chunked_prefill_size", std::to_string(a.chunked_prefill_size)},
          {"max_prefill_tokens", std::to_string(a.max_prefill_tokens)},
          {"max_running_requests", std::to_string(a.max_running_requests)},
          {"max_total_tokens", std::to_string(a.max_total_tokens)},
          {"schedule_policy", a.schedule_policy},
          {"disable_radix_cache", a.disable_radix_cache ? "true" : "false"},
          {"attention_backend", a.attention_backend},
          {"random_seed", opt(a.random_seed)}};
}

// Plain data parallelism: --dp-size replicas of --tp-size ranks behind the DataParallelController.
bool plain_dp(const ServerArgs& a) { return a.dp_size > 1 && !a.enable_dp_attention; }

// A multi-rank scheduler's link to the others: the coordinator connection and the groups.
struct RankRuntime {
  std::unique_ptr<CoordinatorClient> client;  // registration, heartbeats, rendezvous
  ParallelState state;                        // world / tp / attn_tp / dp groups
};

// Registers with the coordinator and builds the process groups (every rank in the same order).
RankRuntime join_ranks(const ServerArgs& args, const RankFlags& flags) {
  RankRuntime rt;
  const Millis timeout(static_cast<int64_t>(args.dist_timeout * 1000));
  CoordinatorClientOptions copt;
  copt.address = flags.coordinator;
  copt.dist_timeout = timeout;
  copt.secret = ClusterSecret(args.cluster_secret);  // flag, or the launcher's environment
  const int rank = flags.rank;
  copt.on_shutdown = [rank](const std::string& reason) {
    spdlog::info("[rank {}] the coordinator asked to shut down ({}); exiting", rank, reason);
    std::_Exit(0);
  };
  copt.on_lost = [rank](const std::string& reason) {
    spdlog::critical("[rank {}] lost the coordinator: {}; exiting", rank, reason);
    std::_Exit(1);
  };
  rt.client = std::make_unique<CoordinatorClient>(std::move(copt));
  RankInfo info;
  info.node_rank = args.node_rank;
  info.global_rank = rank;
  info.host = flags.gloo_host;
  info.pid = static_cast<int64_t>(getpid());
  info.fingerprint = rank_fingerprint(args);
  rt.client->register_rank(info);
  if (args.tp_size == 1) return rt;  // a replica of one rank has no collective to build

  ParallelConfig pc;
  pc.world_rank = rank % args.tp_size;  // plain DP: ranks of replica k are [k * tp, (k+1) * tp)
  pc.dp_replica = plain_dp(args) ? rank / args.tp_size : 0;
  pc.world_size = args.tp_size;
  pc.tp_size = args.tp_size;
  pc.dp_size = args.dp_size;
  pc.enable_dp_attention = args.enable_dp_attention;
  GlooTransportOptions topt;
  topt.hostname = flags.gloo_host;
  topt.timeout = timeout;
  // A restarted generation rendezvouses under its own prefix, apart from the dead one's keys.
  const std::string store_prefix =
      flags.generation > 0 ? fmt::format("gloo/g{}", flags.generation) : std::string("gloo");
  auto store = std::make_shared<CoordinatorStore>(*rt.client, store_prefix, timeout);
  rt.state = initialize_parallel_state(pc, store, "dpserve", topt);
  spdlog::info("[rank {}] process groups ready: {}", rank, rt.state.describe());
  return rt;
}

// The same value on every rank: the minimum (KV pool sizes differ with each host's free memory).
int64_t agree_min(ProcessGroup& group, int64_t value) {
  const std::vector<int64_t> all = group.all_gather_i64(value);
  return *std::min_element(all.begin(), all.end());
}

// DP attention's per-step sync (SGLang's prepare_mlp_sync_batch): all-gathers (tokens, extend)
// over the world, one value per rank, and keeps each DP group's attn_tp rank 0 value.
Scheduler::DpSync make_dp_sync(const ParallelState& ps) {
  ProcessGroup* world = ps.world.get();
  const int groups = ps.dp_size;
  const int per_group = ps.attn_tp_size;
  return [world, groups, per_group](int64_t num_tokens, bool is_extend) {
    const std::vector<int64_t> all = world->all_gather_i64(num_tokens * 2 + (is_extend ? 1 : 0));
    DPSERVE_CHECK(static_cast<int>(all.size()) == groups * per_group,
                  "DP sync: {} values for {} groups of {}", all.size(), groups, per_group);
    DpStepCounts counts;
    for (int g = 0; g < groups; ++g) {
      const int64_t v = all[static_cast<size_t>(g * per_group)];
      for (int i = 1; i < per_group; ++i) {
        DPSERVE_CHECK(all[static_cast<size_t>(g * per_group + i)] == v,
                      "DP sync: the ranks of DP group {} chose different batches", g);
      }
      counts.global_num_tokens.push_back(v >> 1);
      counts.is_extend_in_batch = counts.is_extend_in_batch || (v & 1) != 0;
    }
    return counts;
  };
}

// Where a group leader's sockets are: node 0's runtime dir, or (DP groups spanning nodes) the
// tcp endpoints node 0 published through the coordinator.
struct LeaderEndpoints {
  std::string input;    // requests: from the main process, or the controller under DP
  std::string output;   // outputs to the main process
  std::string control;  // DP: load reports and control answers to the controller
  bool secure = false;  // tcp to node 0: CURVE with the cluster secret
};

LeaderEndpoints leader_endpoints(const ServerArgs& args, const std::string& runtime_dir,
                                 int dp_rank, CoordinatorClient* client) {
  if (dp_rank < 0) {
    return {ipc_endpoint(runtime_dir, kSchedulerInputSocket),
            ipc_endpoint(runtime_dir, kSchedulerOutputSocket), ""};
  }
  if (args.nnodes == 1) {
    return {ipc_endpoint(runtime_dir, dp_leader_input_socket(dp_rank)),
            ipc_endpoint(runtime_dir, kSchedulerOutputSocket),
            ipc_endpoint(runtime_dir, kDpControllerLoadSocket)};
  }
  DPSERVE_CHECK(client != nullptr, "a DP group leader over several nodes has a coordinator");
  const Millis timeout(static_cast<int64_t>(args.dist_timeout * 1000));
  LeaderEndpoints ep{client->get(dp_leader_input_key(dp_rank), timeout),
                     client->get(kDpOutputEndpointKey, timeout),
                     client->get(kDpLoadEndpointKey, timeout), true};
  spdlog::info("[dp {}] leader sockets: input {}, output {}, control {}", dp_rank, ep.input,
               ep.output, ep.control);
  return ep;
}

}  // namespace

int run_scheduler_process(ChildContext& ctx) {
  // The parent handles Ctrl-C for the whole tree and stops this process with SIGTERM.
  std::signal(SIGINT, SIG_IGN);
  accept_sigterm_only_from_parent();  // a group-wide SIGTERM lets the parent drain first
  try {
    ServerArgs args;
    std::string runtime_dir;
    RankFlags flags;
    CLI::App app{"dpserve scheduler process"};
    args.add_to(app);
    app.add_option(kRuntimeDirFlag, runtime_dir)->required();
    app.add_option(kRankFlag, flags.rank);
    app.add_option(kCoordinatorFlag, flags.coordinator);
    app.add_option(kLocalRanksFlag, flags.local_ranks);
    app.add_option(kGlooHostFlag, flags.gloo_host);
    app.add_option(kGenerationFlag, flags.generation);
    std::vector<std::string> argv(ctx.args().rbegin(), ctx.args().rend());  // CLI11: reversed
    app.parse(argv);
    init_logging(args.log_level);

    SchedulerConfig config = scheduler_config_from_server_args(args);
    if (config.num_threads == 0) config.num_threads = default_rank_threads(flags.local_ranks);
    config.validate();
    const bool multi_rank = args.tp_size > 1;  // this rank computes with others
    const bool dp_attention = args.enable_dp_attention && multi_rank;
    const int replica = plain_dp(args) ? flags.rank / args.tp_size : 0;
    const std::string replica_tag = fmt::format("replica{}", replica);
    RankRuntime rt;
    if (!flags.coordinator.empty()) rt = join_ranks(args, flags);

    ModelOptions mopt;
    if (multi_rank) {
      mopt.tp_rank = rt.state.tp_rank;
      mopt.tp_size = rt.state.tp_size;
      mopt.tp_group = rt.state.tp.get();
      mopt.ep_size = args.ep_size;
      mopt.show_progress = flags.rank == 0;
      if (dp_attention) {
        mopt.enable_dp_attention = true;
        mopt.dp_size = args.dp_size;
        mopt.attn_tp_group = rt.state.attn_tp.get();
        mopt.dp_group = rt.state.dp.get();
      }
    }
    std::shared_ptr<LlamaForCausalLM> model = make_model(args.model_path, config, mopt);
    std::shared_ptr<const Tokenizer> tokenizer(load_tokenizer(args.effective_tokenizer_path()));
    const int64_t model_ctx = model->config().max_position_embeddings;
    if (args.context_length > model_ctx) {
      throw_error("--context-length {} exceeds the model's max_position_embeddings {}",
                  args.context_length, model_ctx);
    }
    if (multi_rank) {
      // Loading takes as long as it takes; the collectives below have the --dist-timeout.
      rt.client->barrier(fmt::format("weights_loaded/{}/g{}", replica_tag, flags.generation),
                         args.tp_size, Millis(std::chrono::hours(2)));
      // Every rank must make the same scheduling decisions: one KV pool size and one seed.
      ProcessGroup& world = *rt.state.world;
      const KVPoolSize planned = Scheduler::plan_kv_pool(config, *model);
      config.max_total_tokens = agree_min(world, planned.usable_tokens);
      config.kv_cache_memory = 0;
      uint64_t seed = config.random_seed.value_or(std::random_device{}());
      world.broadcast_bytes(&seed, sizeof(seed), 0);
      config.random_seed = seed;
    }
    Scheduler scheduler(config, model, tokenizer);
    scheduler.set_watchdog_callback([](int64_t step, double seconds) {
      // SGLang kills the process tree on a hung step; here the rank exits with status 3 and
      // node 0's supervisor restarts its failure unit (server_supervisor.h).
      spdlog::critical("watchdog: step {} hung for {:.1f} s; the scheduler process exits", step,
                       seconds);
      std::_Exit(3);
    });

    if (dp_attention) scheduler.set_dp_sync(make_dp_sync(rt.state));
    // Under DP attention each DP group has a leader (its attn_tp rank 0, should_run_publisher).
    const bool leader = dp_attention ? rt.state.attn_tp_rank == 0 : flags.rank % args.tp_size == 0;
    const int dp_rank = plain_dp(args)                     ? replica
                        : dp_attention && args.dp_size > 1 ? rt.state.attn_dp_rank
                                                           : -1;
    std::optional<MessageSocket> in, out, control;
    if (leader) {
      // Under DP the controller hands this group its requests and takes its load reports and
      // control answers; outputs always go straight to the main process.
      const LeaderEndpoints ep = leader_endpoints(args, runtime_dir, dp_rank, rt.client.get());
      const ClusterSecret secret = ep.secure ? ClusterSecret(args.cluster_secret) : ClusterSecret();
      auto open = [&](std::optional<MessageSocket>& s, zmq::socket_type type,
                      const std::string& endpoint) {
        s.emplace(type);
        if (ep.secure) secure_client_socket(s->raw(), secret);
        s->connect(endpoint);
      };
      open(in, zmq::socket_type::pull, ep.input);
      open(out, zmq::socket_type::push, ep.output);
      if (dp_rank >= 0) open(control, zmq::socket_type::push, ep.control);
    }

    const KVPoolSize& pool = scheduler.kv_pool_size();
    const int64_t ctx_len = args.context_length > 0 ? args.context_length : model_ctx;
    spdlog::info(
        "[rank {}] scheduler ready: KV pool {} tokens ({} pages of {}, {}), context length {}, "
        "max running requests {}, {} threads",
        flags.rank, pool.usable_tokens, pool.num_pages, pool.page_size, pool.source, ctx_len,
        scheduler.config().max_running_requests, scheduler.config().num_threads);
    ctx.signal_ready({{"max_total_tokens", pool.usable_tokens},
                      {"context_length", ctx_len},
                      {"page_size", pool.page_size},
                      {"vocab_size", model->config().vocab_size},
                      {"max_running_requests", scheduler.config().max_running_requests},
                      {"rank", flags.rank},
                      {"pid", static_cast<int64_t>(getpid())}});
    try {
      ProcessGroup* input_group = !multi_rank    ? nullptr
                                  : dp_attention ? rt.state.attn_tp.get()
                                                 : rt.state.world.get();
      SchedulerProcess(scheduler, leader ? &*in : nullptr, leader ? &*out : nullptr, input_group,
                       control ? &*control : nullptr, dp_rank, dp_attention)
          .run();
    } catch (const DistributedError& e) {
      // A peer rank died or stopped answering: this rank cannot go on alone.
      spdlog::critical("[rank {}] {}; exiting", flags.rank, e.what());
      return 1;
    }
  } catch (const CLI::ParseError& e) {
    ctx.signal_error(fmt::format("scheduler arguments: {}", e.what()));
    return 1;
  } catch (const std::exception& e) {
    ctx.signal_error(e.what());
    return 1;
  }
}

}  // namespace dpserve
