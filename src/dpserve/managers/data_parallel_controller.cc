#include "dpserve/managers/data_parallel_controller.h"

#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <limits>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/common/logging.h"
#include "dpserve/distributed/coordinator_types.h"
#include "dpserve/server/server_args.h"

namespace dpserve {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(SteadyTime from, SteadyTime to) {
  return std::chrono::duration<double>(to - from).count();
}

// The main process's sockets (the names scheduler_process.h gives kSchedulerInputSocket and
// kSchedulerOutputSocket; not included here to keep this library free of the model).
constexpr const char* kTokenizerToSchedulerSocket = "scheduler_input";
constexpr const char* kSchedulerToTokenizerSocket = "scheduler_output";

// Why a control request skipped a group that is down (a flush counts it as flushed).
constexpr const char* kDownNotAsked = "restarting: not asked";

// Completions of a request (SamplingParams' "n"), read leniently: the scheduler validates it.
int64_t num_completions(const std::string& sampling_params_json) {
  const nlohmann::json j = nlohmann::json::parse(sampling_params_json, nullptr, false);
  if (j.is_object()) {
    const auto it = j.find("n");
    if (it != j.end() && it->is_number_integer()) return std::clamp<int64_t>(*it, 1, 1024);
  }
  return 1;
}

}  // namespace

std::string dp_leader_input_socket(int dp_rank) {
  return fmt::format("scheduler_input_dp{}", dp_rank);
}

std::string dp_leader_input_key(int dp_rank) {
  return fmt::format("endpoints/scheduler_input_dp{}", dp_rank);
}

std::string endpoint_for_peers(const std::string& bound, const std::string& host) {
  const size_t colon = bound.rfind(':');
  DPSERVE_CHECK(bound.starts_with("tcp://") && colon != std::string::npos,
                "endpoint_for_peers needs a bound tcp endpoint, got {}", bound);
  return coordinator_address(host, std::stoi(bound.substr(colon + 1)));
}

LoadBalanceMethod parse_load_balance_method(std::string_view name) {
  if (name == "round_robin") return LoadBalanceMethod::kRoundRobin;
  if (name == "shortest_queue") return LoadBalanceMethod::kShortestQueue;
  if (name == "minimum_tokens") return LoadBalanceMethod::kMinimumTokens;
  throw_error(
      "--load-balance-method must be one of round_robin, shortest_queue, minimum_tokens; got '{}'",
      name);
}

std::string_view load_balance_method_name(LoadBalanceMethod method) {
  switch (method) {
    case LoadBalanceMethod::kRoundRobin:
      return "round_robin";
    case LoadBalanceMethod::kShortestQueue:
      return "shortest_queue";
    case LoadBalanceMethod::kMinimumTokens:
      return "minimum_tokens";
  }
  return "unknown";
}

// ---- DpGroupLoad / DpDispatchPolicy ----

int64_t DpGroupLoad::requests() const {
  const int64_t reported =
      last_report ? last_report->num_running_reqs + last_report->num_waiting_reqs : 0;
  return reported + dispatched_reqs;
}

int64_t DpGroupLoad::tokens() const {
  const int64_t reported =
      last_report ? last_report->num_used_tokens + last_report->num_queued_tokens : 0;
  return reported + dispatched_tokens;
}

DpDispatchPolicy::DpDispatchPolicy(int dp_size, LoadBalanceMethod method,
                                   std::chrono::milliseconds stale_timeout, SteadyTime start)
    : method_(method), stale_timeout_(stale_timeout), groups_(static_cast<size_t>(dp_size)) {
  DPSERVE_CHECK(dp_size >= 1, "dp_size {} must be positive", dp_size);
  for (DpGroupLoad& g : groups_) g.last_heard = start;
}

const DpGroupLoad& DpDispatchPolicy::group(int32_t dp_rank) const {
  DPSERVE_CHECK(dp_rank >= 0 && dp_rank < dp_size(), "dp rank {} out of range", dp_rank);
  return groups_[static_cast<size_t>(dp_rank)];
}

bool DpDispatchPolicy::is_stale(int32_t dp_rank, SteadyTime now) const {
  return now - group(dp_rank).last_heard > stale_timeout_;
}

std::vector<int32_t> DpDispatchPolicy::update_staleness(SteadyTime now) {
  std::vector<int32_t> changed;
  for (int32_t k = 0; k < dp_size(); ++k) {
    const bool stale = !groups_[static_cast<size_t>(k)].down && is_stale(k, now);
    if (stale != groups_[static_cast<size_t>(k)].stale) {
      groups_[static_cast<size_t>(k)].stale = stale;
      changed.push_back(k);
    }
  }
  return changed;
}

void DpDispatchPolicy::set_down(int32_t dp_rank, const std::string& reason) {
  DPSERVE_CHECK(dp_rank >= 0 && dp_rank < dp_size(), "dp rank {} out of range", dp_rank);
  DpGroupLoad& g = groups_[static_cast<size_t>(dp_rank)];
  g.down = true;
  g.down_reason = reason;
  g.stale = false;
}

void DpDispatchPolicy::set_up(int32_t dp_rank, SteadyTime now) {
  DPSERVE_CHECK(dp_rank >= 0 && dp_rank < dp_size(), "dp rank {} out of range", dp_rank);
  DpGroupLoad& g = groups_[static_cast<size_t>(dp_rank)];
  g.down = false;
  g.down_reason.clear();
  g.stale = false;
  g.last_report.reset();  // the restarted group starts empty
  g.last_heard = now;
  g.dispatched_reqs = 0;
  g.dispatched_tokens = 0;
}

bool DpDispatchPolicy::on_report(const LoadReport& report, SteadyTime now) {
  if (report.dp_rank < 0 || report.dp_rank >= dp_size()) return false;
  DpGroupLoad& g = groups_[static_cast<size_t>(report.dp_rank)];
  g.last_report = report;
  g.last_heard = now;
  g.dispatched_reqs = 0;
  g.dispatched_tokens = 0;
  ++g.num_reports;
  return true;
}

int32_t DpDispatchPolicy::choose(SteadyTime now) {
  // Candidates: the fresh groups that are up, or every group that is up when none is fresh.
  std::vector<bool> candidate(groups_.size());
  bool any_fresh = false, any_up = false;
  for (int32_t k = 0; k < dp_size(); ++k) {
    const bool up = !groups_[static_cast<size_t>(k)].down;
    candidate[static_cast<size_t>(k)] = up && !is_stale(k, now);
    any_fresh = any_fresh || candidate[static_cast<size_t>(k)];
    any_up = any_up || up;
  }
  if (!any_up) return -1;
  if (!any_fresh) {
    for (int32_t k = 0; k < dp_size(); ++k) {
      candidate[static_cast<size_t>(k)] = !groups_[static_cast<size_t>(k)].down;
    }
  }

  if (method_ == LoadBalanceMethod::kRoundRobin) {
    for (int i = 0; i < dp_size(); ++i) {
      const int32_t k = (round_robin_next_ + i) % dp_size();
      if (candidate[static_cast<size_t>(k)]) {
        round_robin_next_ = (k + 1) % dp_size();
        return k;
      }
    }
    DPSERVE_CHECK(false, "round robin found no candidate");
  }
  int32_t best = -1;
  int64_t best_load = std::numeric_limits<int64_t>::max();
  for (int32_t k = 0; k < dp_size(); ++k) {
    if (!candidate[static_cast<size_t>(k)]) continue;
    const DpGroupLoad& g = groups_[static_cast<size_t>(k)];
    const int64_t load = method_ == LoadBalanceMethod::kShortestQueue ? g.requests() : g.tokens();
    if (load < best_load) {  // strict: ties stay with the lowest rank
      best = k;
      best_load = load;
    }
  }
  DPSERVE_CHECK(best >= 0, "no DP group to choose from");
  return best;
}

DispatchDecision DpDispatchPolicy::dispatch(const TokenizedGenerateReq& req, SteadyTime now) {
  DispatchDecision d;
  if (req.data_parallel_rank != -1) {
    if (req.data_parallel_rank < 0 || req.data_parallel_rank >= dp_size()) {
      d.error = fmt::format(
          "data_parallel_rank {} is out of range: this server has {} DP groups (valid: 0 to {}, "
          "or -1 to let the server choose)",
          req.data_parallel_rank, dp_size(), dp_size() - 1);
      return d;
    }
    if (groups_[static_cast<size_t>(req.data_parallel_rank)].down) {
      d.error = fmt::format("DP group {} is restarting ({}); retry later", req.data_parallel_rank,
                            groups_[static_cast<size_t>(req.data_parallel_rank)].down_reason);
      return d;
    }
    d.dp_rank = req.data_parallel_rank;
    d.explicit_rank = true;
  } else {
    d.dp_rank = choose(now);
    if (d.dp_rank < 0) {
      d.error = "no DP group is available: every group is restarting; retry later";
      return d;
    }
  }
  DpGroupLoad& g = groups_[static_cast<size_t>(d.dp_rank)];
  ++g.dispatched_reqs;
  g.dispatched_tokens += static_cast<int64_t>(req.input_ids.size());
  ++g.total_dispatched;
  return d;
}

nlohmann::json DpDispatchPolicy::group_json(int32_t dp_rank, SteadyTime now) const {
  const DpGroupLoad& g = group(dp_rank);
  nlohmann::json j;
  j["dp_rank"] = dp_rank;
  j["stale"] = !g.down && is_stale(dp_rank, now);
  j["down"] = g.down;
  if (g.down) j["down_reason"] = g.down_reason;
  j["seconds_since_report"] = seconds_between(g.last_heard, now);
  j["num_reports"] = g.num_reports;
  if (g.last_report) {
    const LoadReport& r = *g.last_report;
    j["num_running_reqs"] = r.num_running_reqs;
    j["num_waiting_reqs"] = r.num_waiting_reqs;
    j["num_used_tokens"] = r.num_used_tokens;
    j["num_queued_tokens"] = r.num_queued_tokens;
    j["max_total_tokens"] = r.max_total_tokens;
    j["report_timestamp"] = r.timestamp;
  } else {
    j["seconds_since_report"] = nullptr;  // never reported
  }
  j["dispatched_since_report"] = g.dispatched_reqs;
  j["dispatched_tokens_since_report"] = g.dispatched_tokens;
  j["total_dispatched"] = g.total_dispatched;
  j["load_requests"] = g.requests();
  j["load_tokens"] = g.tokens();
  return j;
}

// ---- DataParallelController ----

DataParallelControllerOptions DataParallelControllerOptions::in_runtime_dir(
    const std::string& runtime_dir, int dp_size, LoadBalanceMethod method) {
  DataParallelControllerOptions o;
  o.dp_size = dp_size;
  o.method = method;
  o.input_endpoint = ipc_endpoint(runtime_dir, kTokenizerToSchedulerSocket);
  o.output_endpoint = ipc_endpoint(runtime_dir, kSchedulerToTokenizerSocket);
  o.load_endpoint = ipc_endpoint(runtime_dir, kDpControllerLoadSocket);
  for (int k = 0; k < dp_size; ++k) {
    o.leader_endpoints.push_back(ipc_endpoint(runtime_dir, dp_leader_input_socket(k)));
  }
  return o;
}

DataParallelController::DataParallelController(DataParallelControllerOptions options)
    : options_(std::move(options)),
      policy_(options_.dp_size, options_.method, options_.stale_timeout, Clock::now()),
      in_(zmq::socket_type::pull),
      out_(zmq::socket_type::push),
      load_(zmq::socket_type::pull) {
  if (options_.dp_size < 1) throw_error("--dp-size must be >= 1, got {}", options_.dp_size);
  if (static_cast<int>(options_.leader_endpoints.size()) != options_.dp_size) {
    throw_error("the DP controller needs one leader endpoint per DP group: {} for --dp-size {}",
                options_.leader_endpoints.size(), options_.dp_size);
  }
  if (!options_.secret.empty()) secure_server_socket(load_.raw(), options_.secret, "dp controller");
  load_.bind(options_.load_endpoint);
  options_.load_endpoint = load_.bound_endpoint();
  for (std::string& ep : options_.leader_endpoints) {
    leaders_.emplace_back(zmq::socket_type::push);
    if (!options_.secret.empty()) {
      secure_server_socket(leaders_.back().raw(), options_.secret, "dp controller");
    }
    leaders_.back().bind(ep);
    ep = leaders_.back().bound_endpoint();
  }
  in_.connect(options_.input_endpoint);
  out_.connect(options_.output_endpoint);
  spdlog::info("dp controller: {} DP groups, load balance method {}, stale after {} ms",
               options_.dp_size, load_balance_method_name(options_.method),
               options_.stale_timeout.count());
}

void DataParallelController::run(const std::function<bool()>& keep_running) {
  while (!stop_.load() && (!keep_running || keep_running())) run_once(options_.poll_interval);
}

void DataParallelController::run_once(std::chrono::milliseconds timeout) {
  if (pending_) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(pending_->deadline - Clock::now());
    timeout = std::clamp(left, std::chrono::milliseconds(0), timeout);
  }
  MessageSocket* socks[] = {&load_, &in_};
  poll_readable(socks, timeout);
  // Reports and control answers first, so that dispatch sees the freshest load view.
  for (MessageSocket* s : socks) {
    for (int n = 0; n < 4096 && s->readable(); ++n) {
      std::optional<Message> msg;
      try {
        msg = s->recv(std::chrono::milliseconds(0));
      } catch (const Error& e) {
        ++stats_.malformed;
        spdlog::error("dp controller: dropping a malformed message from the {}: {}",
                      s == &in_ ? "tokenizer manager" : "leaders", e.what());
        continue;
      }
      if (!msg) break;
      if (s == &in_) {
        handle_request(std::move(*msg));
      } else {
        handle_leader_message(std::move(*msg));
      }
    }
  }
  send_notices();
  check_timers(Clock::now());
}

void DataParallelController::send_notices() {
  if (notices_.rids.empty()) return;
  Message msg{std::move(notices_)};
  notices_ = DpDispatchNotice{};
  if (!out_.send(msg, options_.send_timeout)) {
    spdlog::error("dp controller: could not tell the tokenizer manager where {} requests went",
                  std::get<DpDispatchNotice>(msg).rids.size());
  }
}

void DataParallelController::set_group_state(const DpGroupState& st) {
  if (st.dp_rank < 0 || st.dp_rank >= policy_.dp_size()) {
    ++stats_.malformed;
    spdlog::error("dp controller: DpGroupState for unknown DP group {}", st.dp_rank);
    return;
  }
  if (st.up) {
    policy_.set_up(st.dp_rank, Clock::now());
    spdlog::info("[dp {}] back in service", st.dp_rank);
  } else {
    policy_.set_down(st.dp_rank, st.reason);
    spdlog::warn("[dp {}] down, not routed to until it is back: {}", st.dp_rank, st.reason);
  }
}

void DataParallelController::handle_request(Message&& msg) {
  if (auto* r = std::get_if<TokenizedGenerateReq>(&msg)) {
    dispatch(std::move(*r));
  } else if (auto* a = std::get_if<AbortReq>(&msg)) {
    ++stats_.aborts;
    spdlog::debug("[{}] abort{} -> every DP group", a->rid, a->abort_all ? " all" : "");
    fan_out(msg, nullptr);
  } else if (std::holds_alternative<FlushCacheReq>(msg)) {
    start_control(/*flush=*/true, Clock::now());
  } else if (std::holds_alternative<GetServerInfoReq>(msg)) {
    start_control(/*flush=*/false, Clock::now());
  } else if (const auto* st = std::get_if<DpGroupState>(&msg)) {
    set_group_state(*st);
  } else {
    ++stats_.malformed;
    spdlog::error("dp controller: unexpected {} from the tokenizer manager", message_name(msg));
  }
}

void DataParallelController::dispatch(TokenizedGenerateReq&& req) {
  const SteadyTime now = Clock::now();
  const DispatchDecision d = policy_.dispatch(req, now);
  if (d.dp_rank < 0) {
    spdlog::warn("[{}] rejected: {}", req.rid, d.error);
    reject(req, d.error);
    return;
  }
  if (d.explicit_rank && policy_.is_stale(d.dp_rank, now)) {
    spdlog::warn("[{}] routed to stale DP group {} as the request asked", req.rid, d.dp_rank);
  }
  spdlog::debug("[{}] -> dp {} ({}, {} prompt tokens)", req.rid, d.dp_rank,
                d.explicit_rank ? "explicit" : load_balance_method_name(options_.method),
                req.input_ids.size());
  Message msg{std::move(req)};
  if (!leaders_[static_cast<size_t>(d.dp_rank)].send(msg, options_.send_timeout)) {
    const auto& r = std::get<TokenizedGenerateReq>(msg);
    const std::string error =
        fmt::format("DP group {} is not reachable (its leader took no message for {} ms)",
                    d.dp_rank, options_.send_timeout.count());
    spdlog::error("[{}] {}", r.rid, error);
    reject(r, error);
    return;
  }
  ++stats_.dispatched;
  notices_.rids.push_back(std::get<TokenizedGenerateReq>(msg).rid);
  notices_.dp_ranks.push_back(d.dp_rank);
}

void DataParallelController::reject(const TokenizedGenerateReq& req, const std::string& error) {
  ++stats_.rejected;
  BatchTokenIdOut batch;
  const int64_t n = num_completions(req.sampling_params_json);
  // FinishReason::abort(error).to_json(), written out to keep this library free of sampling/.
  const std::string reason = nlohmann::json{{"type", "abort"}, {"message", error}}.dump();
  for (int64_t i = 0; i < n; ++i) {
    TokenIdOut o;
    o.rid = req.rid;
    o.index = i;
    o.finished = true;
    o.finish_reason_json = reason;
    o.prompt_tokens = static_cast<int64_t>(req.input_ids.size());
    batch.outputs.push_back(std::move(o));
  }
  if (!out_.send(Message{std::move(batch)}, options_.send_timeout)) {
    spdlog::error("[{}] could not answer the tokenizer manager", req.rid);
  }
}

void DataParallelController::fan_out(const Message& msg, std::vector<std::string>* errors) {
  const std::string bytes = encode(msg);
  for (size_t k = 0; k < leaders_.size(); ++k) {
    if (errors != nullptr && !(*errors)[k].empty()) continue;  // not asked (stale)
    if (!leaders_[k].send_bytes(bytes, options_.send_timeout)) {
      spdlog::error("[dp {}] {} not delivered: the leader took no message for {} ms", k,
                    message_name(msg), options_.send_timeout.count());
      if (errors != nullptr) (*errors)[k] = "not reachable";
    }
  }
}

void DataParallelController::start_control(bool flush, SteadyTime now) {
  if (pending_) {
    // The tokenizer manager sends one control request at a time; a new one means it gave up on
    // the previous one.
    spdlog::warn("dp controller: a new control request replaces an unanswered one");
    finish_control();
  }
  PendingControl p;
  p.flush = flush;
  p.deadline = now + options_.control_timeout;
  p.answers.resize(leaders_.size());
  p.errors.resize(leaders_.size());
  for (int32_t k = 0; k < policy_.dp_size(); ++k) {
    if (policy_.is_down(k)) {
      p.errors[static_cast<size_t>(k)] = kDownNotAsked;
    } else if (policy_.is_stale(k, now)) {
      p.errors[static_cast<size_t>(k)] = "stale: not asked";
    }
  }
  fan_out(flush ? Message{FlushCacheReq{}} : Message{GetServerInfoReq{}}, &p.errors);
  for (const std::string& e : p.errors) p.outstanding += e.empty() ? 1 : 0;
  pending_ = std::move(p);
  if (pending_->outstanding == 0) finish_control();
}

void DataParallelController::handle_leader_message(Message&& msg) {
  if (const auto* r = std::get_if<LoadReport>(&msg)) {
    ++stats_.load_reports;
    const SteadyTime now = Clock::now();
    if (!policy_.on_report(*r, now)) {
      ++stats_.malformed;
      spdlog::error("dp controller: load report from unknown DP group {}", r->dp_rank);
      return;
    }
    spdlog::trace("[dp {}] load: {} running, {} waiting, {} + {} tokens", r->dp_rank,
                  r->num_running_reqs, r->num_waiting_reqs, r->num_used_tokens,
                  r->num_queued_tokens);
    return;
  }
  int32_t rank = -1;
  bool flush = false;
  if (const auto* f = std::get_if<FlushCacheResp>(&msg)) {
    rank = f->dp_rank;
    flush = true;
  } else if (const auto* i = std::get_if<GetServerInfoResp>(&msg)) {
    rank = i->dp_rank;
  } else {
    ++stats_.malformed;
    spdlog::error("dp controller: unexpected {} from a leader", message_name(msg));
    return;
  }
  if (rank < 0 || rank >= policy_.dp_size()) {
    ++stats_.malformed;
    spdlog::error("dp controller: {} with dp_rank {} (leaders must set their DP rank)",
                  message_name(msg), rank);
    return;
  }
  const auto k = static_cast<size_t>(rank);
  if (!pending_ || pending_->flush != flush || pending_->answers[k] ||
      !pending_->errors[k].empty()) {
    spdlog::warn("[dp {}] late or unexpected {} dropped", rank, message_name(msg));
    return;
  }
  pending_->answers[k] = std::move(msg);
  if (--pending_->outstanding == 0) finish_control();
}

void DataParallelController::finish_control() {
  DPSERVE_CHECK(pending_.has_value(), "no control request pending");
  PendingControl p = std::move(*pending_);
  pending_.reset();
  const SteadyTime now = Clock::now();
  Message answer;
  if (p.flush) {
    FlushCacheResp resp;
    resp.success = true;
    std::vector<std::string> failures;
    for (size_t k = 0; k < p.answers.size(); ++k) {
      if (p.answers[k]) {
        const auto& f = std::get<FlushCacheResp>(*p.answers[k]);
        if (!f.success) failures.push_back(fmt::format("DP group {}: {}", k, f.message));
      } else if (p.errors[k] == kDownNotAsked) {
        continue;  // restarting: its cache starts empty
      } else {
        failures.push_back(fmt::format("DP group {}: {}", k,
                                       p.errors[k].empty() ? "no answer in time" : p.errors[k]));
      }
    }
    if (!failures.empty()) {
      resp.success = false;
      resp.message =
          fmt::format("Cache not flushed in every DP group: {}", fmt::join(failures, "; "));
    }
    spdlog::info("dp controller: flush cache {}",
                 resp.success ? "done in every group" : resp.message);
    answer = std::move(resp);
  } else {
    nlohmann::json info = nlohmann::json::object();
    nlohmann::json groups = nlohmann::json::array();
    int64_t running = 0, waiting = 0, live = 0;
    bool based = false;
    for (size_t k = 0; k < p.answers.size(); ++k) {
      nlohmann::json g;
      g["dp_rank"] = k;
      g["load"] = policy_.group_json(static_cast<int32_t>(k), now);
      if (p.answers[k]) {
        nlohmann::json leader = nlohmann::json::parse(
            std::get<GetServerInfoResp>(*p.answers[k]).info_json, nullptr, false);
        if (leader.is_object()) {
          running += leader.value("num_running_reqs", int64_t{0});
          waiting += leader.value("num_waiting_reqs", int64_t{0});
          live += leader.value("num_live_requests", int64_t{0});
          if (!based) {
            info = leader;  // the first group that answered gives the top-level facts
            based = true;
          }
          g["info"] = std::move(leader);
        } else {
          g["info"] = nullptr;
          g["error"] = "the leader's info is not a JSON object";
        }
      } else {
        g["info"] = nullptr;
        g["error"] = p.errors[k].empty() ? "no answer in time" : p.errors[k];
      }
      groups.push_back(std::move(g));
    }
    info["num_running_reqs"] = running;
    info["num_waiting_reqs"] = waiting;
    info["num_live_requests"] = live;
    info["dp_size"] = policy_.dp_size();
    info["load_balance_method"] = load_balance_method_name(policy_.method());
    info["dp_groups"] = std::move(groups);
    answer = GetServerInfoResp{info.dump()};
  }
  if (out_.send(answer, options_.send_timeout)) {
    ++stats_.control_answers;
  } else {
    spdlog::error("dp controller: could not send {} to the tokenizer manager",
                  message_name(answer));
  }
}

void DataParallelController::check_timers(SteadyTime now) {
  for (int32_t k : policy_.update_staleness(now)) {
    const DpGroupLoad& g = policy_.group(k);
    if (g.stale) {
      spdlog::warn(
          "[dp {}] stale: no load report for {:.1f} s; not chosen while another group is fresh", k,
          seconds_between(g.last_heard, now));
    } else {
      spdlog::info("[dp {}] reporting again; back in the rotation", k);
    }
  }
  if (pending_ && now >= pending_->deadline) {
    spdlog::warn("dp controller: {} of {} groups did not answer {} in time", pending_->outstanding,
                 pending_->answers.size(), pending_->flush ? "FlushCacheReq" : "GetServerInfoReq");
    finish_control();
  }
}

// ---- The child process ----

std::vector<std::string> data_parallel_controller_args(const std::string& runtime_dir, int dp_size,
                                                       std::string_view load_balance_method,
                                                       std::chrono::milliseconds stale_timeout,
                                                       const std::string& log_level) {
  return {"--runtime-dir",
          runtime_dir,
          "--dp-size",
          std::to_string(dp_size),
          "--load-balance-method",
          std::string(load_balance_method),
          "--stale-timeout-ms",
          std::to_string(stale_timeout.count()),
          "--log-level",
          log_level};
}

int run_data_parallel_controller_process(ChildContext& ctx) {
  // The parent handles Ctrl-C for the whole tree and stops this process with SIGTERM.
  std::signal(SIGINT, SIG_IGN);
  accept_sigterm_only_from_parent();
  try {
    std::string runtime_dir, method = "round_robin", log_level = "info";
    std::string input, output, load;
    std::vector<std::string> leaders;
    int dp_size = 0;
    int64_t stale_ms = 10000, control_ms = 5000;
    bool secure = false;
    CLI::App app{"dpserve data parallel controller process"};
    app.add_option("--runtime-dir", runtime_dir)->required();
    app.add_option("--dp-size", dp_size)->required()->check(CLI::Range(1, 4096));
    app.add_option("--load-balance-method", method);
    app.add_option("--input", input);
    app.add_option("--output", output);
    app.add_option("--load", load);
    app.add_option("--leader-input", leaders);
    app.add_flag("--secure", secure,
                 "secure the leader and report sockets with the cluster secret");
    app.add_option("--stale-timeout-ms", stale_ms)->check(CLI::PositiveNumber);
    app.add_option("--control-timeout-ms", control_ms)->check(CLI::PositiveNumber);
    app.add_option("--log-level", log_level);
    std::vector<std::string> argv(ctx.args().rbegin(), ctx.args().rend());  // CLI11: reversed
    app.parse(argv);
    init_logging(log_level);

    DataParallelControllerOptions opt = DataParallelControllerOptions::in_runtime_dir(
        runtime_dir, dp_size, parse_load_balance_method(method));
    if (!input.empty()) opt.input_endpoint = input;
    if (!output.empty()) opt.output_endpoint = output;
    if (!load.empty()) opt.load_endpoint = load;
    if (!leaders.empty()) opt.leader_endpoints = leaders;
    opt.stale_timeout = std::chrono::milliseconds(stale_ms);
    opt.control_timeout = std::chrono::milliseconds(control_ms);
    if (secure) {
      // The launcher hands the secret to its children through the environment, never argv.
      const char* secret = std::getenv(kClusterSecretEnv);
      if (secret == nullptr || *secret == '\0') {
        throw_error("dp controller: --secure needs the cluster secret in ${}", kClusterSecretEnv);
      }
      opt.secret = ClusterSecret(secret);
    }
    DataParallelController controller(opt);
    ctx.signal_ready({{"dp_size", dp_size},
                      {"load_balance_method", load_balance_method_name(opt.method)},
                      {"load_endpoint", controller.options().load_endpoint},
                      {"leader_endpoints", controller.options().leader_endpoints},
                      {"pid", static_cast<int64_t>(getpid())}});
    // PR_SET_PDEATHSIG kills this process with its parent; the check is the belt to those braces.
    const pid_t parent = ctx.parent_pid();
    controller.run([parent] { return getppid() == parent; });
    spdlog::info("dp controller: the parent process is gone; exiting");
    return 0;
  } catch (const CLI::ParseError& e) {
    ctx.signal_error(fmt::format("dp controller arguments: {}", e.what()));
    return 1;
  } catch (const std::exception& e) {
    ctx.signal_error(e.what());
    return 1;
  }
}

}  // namespace dpserve
