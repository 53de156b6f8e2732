#include "dpserve/managers/tokenizer_manager.h"

#include <random>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"
#include "dpserve/openai/api_error.h"
#include "dpserve/tokenizer/unicode.h"

namespace dpserve {

namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

int64_t get_int(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_number_integer()) {
    throw_error("scheduler readiness message: missing integer \"{}\"", key);
  }
  return j[key].get<int64_t>();
}

// "" for a single prompt, " (prompt 3)" inside a batch: appended to error messages.
std::string where_of(size_t i, size_t n) { return n > 1 ? fmt::format(" (prompt {})", i) : ""; }

}  // namespace

SchedulerInfo SchedulerInfo::from_json(const nlohmann::json& j) {
  SchedulerInfo s;
  s.context_length = get_int(j, "context_length");
  s.max_total_tokens = get_int(j, "max_total_tokens");
  s.page_size = get_int(j, "page_size");
  s.vocab_size = get_int(j, "vocab_size");
  s.max_running_requests = get_int(j, "max_running_requests");
  return s;
}

nlohmann::json SchedulerInfo::to_json() const {
  return {{"context_length", context_length},
          {"max_total_tokens", max_total_tokens},
          {"page_size", page_size},
          {"vocab_size", vocab_size},
          {"max_running_requests", max_running_requests}};
}

void SequenceOutput::add(const TokenIdOut& out) {
  rid = out.rid;
  index = out.index;
  text += out.new_text;
  output_ids.insert(output_ids.end(), out.new_token_ids.begin(), out.new_token_ids.end());
  output_logprobs.insert(output_logprobs.end(), out.output_logprobs.begin(),
                         out.output_logprobs.end());
  output_top_logprobs.insert(output_top_logprobs.end(), out.output_top_logprobs.begin(),
                             out.output_top_logprobs.end());
  prompt_tokens = out.prompt_tokens;
  completion_tokens = out.completion_tokens;
  cached_tokens = out.cached_tokens;
  if (out.finished) {
    finished = true;
    finish_reason = out.finish_reason_json.empty() ? nlohmann::json(nullptr)
                                                   : nlohmann::json::parse(out.finish_reason_json);
  }
}

// ---------------------------------------------------------------------------------------------
// GenerateHandle

GenerateHandle::~GenerateHandle() {
  if (manager_ != nullptr) manager_->release(this, /*abort_unfinished=*/true);
}

double GenerateHandle::elapsed_seconds() const {
  return std::chrono::duration<double>(Clock::now() - created_).count();
}

void GenerateHandle::push(const TokenIdOut& out, bool notify) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = base_.find(out.rid);
    if (it == base_.end()) return;
    const int64_t seq = it->second + out.index;
    if (seq < 0 || seq >= num_sequences() || seq_finished_[static_cast<size_t>(seq)]) return;
    if (out.finished) {
      seq_finished_[static_cast<size_t>(seq)] = true;
      ++num_finished_;
    }
    if (!recorders_.empty()) {
      RequestMetricsRecorder& rec = recorders_[static_cast<size_t>(seq)];
      if (out.finished) {
        const bool aborted = out.finish_reason_json.find("\"abort\"") != std::string::npos;
        rec.on_finish(out.prompt_tokens, out.completion_tokens, out.cached_tokens, aborted);
      } else {
        rec.on_output(out.completion_tokens);
      }
      TokenIdOut& last = last_out_[static_cast<size_t>(seq)];
      last.prompt_tokens = out.prompt_tokens;
      last.completion_tokens = out.completion_tokens;
      last.cached_tokens = out.cached_tokens;
    }
    queue_.push_back({seq, out});
  }
  if (notify) cv_.notify_all();
}

void GenerateHandle::fail(const std::string& message, int retry_after_s) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_) {
      error_ = message;
      retry_after_s_ = retry_after_s;
    }
  }
  cv_.notify_all();
}

std::vector<GenerateChunk> GenerateHandle::next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] {
    return !queue_.empty() || error_.has_value() || num_finished_ == num_sequences();
  });
  std::vector<GenerateChunk> chunks(std::make_move_iterator(queue_.begin()),
                                    std::make_move_iterator(queue_.end()));
  queue_.clear();
  if (chunks.empty() && error_) {
    throw ApiError(503, *error_, "service_unavailable").with_retry_after(retry_after_s_);
  }
  return chunks;
}

bool GenerateHandle::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return num_finished_ == num_sequences() && queue_.empty();
}

void GenerateHandle::abort() {
  std::vector<std::string> unfinished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t p = 0; p < rids_.size(); ++p) {
      const int64_t base = base_.at(rids_[p]);
      const int64_t end = p + 1 < rids_.size() ? base_.at(rids_[p + 1]) : num_sequences();
      for (int64_t s = base; s < end; ++s) {
        if (!seq_finished_[static_cast<size_t>(s)]) {
          unfinished.push_back(rids_[p]);
          break;
        }
      }
    }
  }
  for (const std::string& rid : unfinished) manager_->abort(rid);
}

// ---------------------------------------------------------------------------------------------
// TokenizerManager

TokenizerManager::TokenizerManager(std::shared_ptr<const Tokenizer> tokenizer, SchedulerInfo info,
                                   MessageSocket to_scheduler, MessageSocket from_scheduler,
                                   int64_t context_length, bool log_requests)
    : tokenizer_(std::move(tokenizer)),
      info_(info),
      log_requests_(log_requests),
      to_scheduler_(std::move(to_scheduler)),
      from_scheduler_(std::move(from_scheduler)) {
  if (context_length > 0) info_.context_length = std::min(info_.context_length, context_length);
  std::random_device rd;
  rid_salt_ = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(now_ns());
  receiver_ = std::thread([this] { receive_loop(); });
}

TokenizerManager::~TokenizerManager() { shutdown(); }

void TokenizerManager::shutdown() {
  stop_.store(true);
  if (receiver_.joinable()) receiver_.join();
}

std::string TokenizerManager::new_rid() {
  // splitmix64 of a counter and a per-process salt: 32 hex digits, like SGLang's uuid4().hex.
  auto mix = [](uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  const uint64_t c = rid_counter_.fetch_add(1);
  return fmt::format("{:016x}{:016x}", mix(rid_salt_ ^ c), mix(rid_salt_ + 2 * c + 1));
}

std::vector<int32_t> TokenizerManager::tokenize(const GenerateReqInput& in,
                                                const std::string& where) const {
  if (in.text) {
    if (in.text->empty())
      throw ApiError(400, "the prompt text is empty" + where, "invalid_request_error", "text");
    if (!is_valid_utf8(*in.text)) {
      throw ApiError(400, "the prompt text is not valid UTF-8" + where, "invalid_request_error",
                     "text");
    }
    std::vector<int32_t> ids = tokenizer_->encode(*in.text, /*add_special_tokens=*/true);
    if (ids.empty()) {
      throw ApiError(400, "the prompt text encodes to no tokens" + where, "invalid_request_error",
                     "text");
    }
    return ids;
  }
  if (in.input_ids.empty()) {
    throw ApiError(400, "input_ids is empty" + where, "invalid_request_error", "input_ids");
  }
  for (size_t i = 0; i < in.input_ids.size(); ++i) {
    const int32_t id = in.input_ids[i];
    if (id < 0 || id >= info_.vocab_size) {
      throw ApiError(400,
                     fmt::format("input_ids[{}] = {} is outside the vocabulary [0, {}){}", i, id,
                                 info_.vocab_size, where),
                     "invalid_request_error", "input_ids");
    }
  }
  return in.input_ids;
}

void TokenizerManager::validate(const std::vector<int32_t>& ids, SamplingParams& params,
                                const std::string& where) const {
  try {
    params.validate(info_.vocab_size);
  } catch (const Error& e) {
    throw ApiError(400, std::string(e.what()) + where, "invalid_request_error", "sampling_params");
  }
  const auto prompt_len = static_cast<int64_t>(ids.size());
  const int64_t ctx = info_.context_length;
  if (prompt_len >= ctx) {
    throw ApiError(400,
                   fmt::format("The input ({} tokens) is longer than the model's context length "
                               "({} tokens){}.",
                               prompt_len, ctx, where),
                   "invalid_request_error", "input");
  }
  if (params.max_new_tokens == SamplingParams::kNoMaxNewTokens) {
    params.max_new_tokens = ctx - prompt_len;
  } else if (params.max_new_tokens > ctx - prompt_len) {  // prompt_len + max could overflow
    throw ApiError(
        400,
        fmt::format(
            "Requested token count exceeds the model's maximum context length of {} "
            "tokens. You requested a total of {} tokens: {} tokens from the input and {} "
            "tokens for the completion (max_new_tokens){}. Please reduce the number of "
            "tokens in the input or the completion.",
            ctx, static_cast<uint64_t>(prompt_len) + static_cast<uint64_t>(params.max_new_tokens),
            prompt_len, params.max_new_tokens, where),
        "invalid_request_error", "max_new_tokens");
  }
  const int64_t page = std::max<int64_t>(info_.page_size, 1);
  const int64_t need = (prompt_len + params.max_new_tokens + page - 1) / page * page;
  if (need > info_.max_total_tokens) {
    throw ApiError(400,
                   fmt::format("{} prompt tokens plus max_new_tokens {} need more KV cache than "
                               "the server's {} tokens{}",
                               prompt_len, params.max_new_tokens, info_.max_total_tokens, where),
                   "invalid_request_error", "max_new_tokens");
  }
}

void TokenizerManager::throw_if_down() const {
  if (dead_.load()) throw ApiError(503, dead_reason_, "service_unavailable");
  if (recovering_.load()) {
    throw ApiError(503, "the server is recovering: " + recovery_reason_, "service_unavailable")
        .with_retry_after(retry_after_s_);
  }
  if (controller_down_.load()) {
    throw ApiError(503, "the server is recovering: " + controller_reason_, "service_unavailable")
        .with_retry_after(controller_retry_after_s_);
  }
}

void TokenizerManager::throw_if_unavailable() const {
  if (dead_.load()) throw ApiError(503, dead_reason_, "service_unavailable");
  if (!accepting_.load()) {
    throw ApiError(503, "the server is shutting down", "service_unavailable");
  }
  throw_if_down();
}

std::shared_ptr<GenerateHandle> TokenizerManager::generate(std::vector<GenerateReqInput> inputs) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    throw_if_unavailable();
    for (const GenerateReqInput& in : inputs) {
      const auto down = down_groups_.find(in.data_parallel_rank);
      if (in.data_parallel_rank >= 0 && down != down_groups_.end()) {
        throw ApiError(503,
                       fmt::format("DP group {} is restarting ({}); retry later",
                                   in.data_parallel_rank, down->second.first),
                       "service_unavailable")
            .with_retry_after(down->second.second);
      }
    }
  }
  if (inputs.empty()) throw ApiError(400, "the request has no prompts", "invalid_request_error");

  std::shared_ptr<GenerateHandle> h(new GenerateHandle());
  h->self_ = h;
  h->created_ = Clock::now();
  std::vector<TokenizedGenerateReq> reqs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    GenerateReqInput& in = inputs[i];
    const std::string where = where_of(i, inputs.size());
    std::vector<int32_t> ids = tokenize(in, where);
    validate(ids, in.sampling_params, where);
    std::string rid = in.rid.empty() ? new_rid() : in.rid;
    if (h->base_.count(rid) != 0) {
      throw ApiError(400, fmt::format("duplicate rid \"{}\" in the batch", rid),
                     "invalid_request_error", "rid");
    }
    h->base_[rid] = h->num_sequences();
    for (int64_t k = 0; k < in.sampling_params.n; ++k) {
      h->seq_prompt_.push_back(static_cast<int64_t>(i));
    }
    TokenizedGenerateReq r;
    r.rid = rid;
    if (in.text) r.input_text = *in.text;
    r.input_ids = ids;
    r.sampling_params_json = in.sampling_params.to_json().dump();
    r.stream = in.stream;
    r.return_logprob = in.sampling_params.return_logprob;
    r.top_logprobs_num = static_cast<int32_t>(in.sampling_params.top_logprobs_num);
    r.data_parallel_rank = in.data_parallel_rank;
    h->rids_.push_back(rid);
    h->input_ids_.push_back(std::move(ids));
    reqs.push_back(std::move(r));
  }
  h->seq_finished_.assign(h->seq_prompt_.size(), false);
  // Health probes are not client requests: they stay out of the metrics.
  ServingMetrics* metrics = metrics_.load();
  if (metrics != nullptr && h->rids_.front().rfind("HEALTH_CHECK_", 0) != 0) {
    h->recorders_.reserve(h->seq_prompt_.size());
    for (size_t s = 0; s < h->seq_prompt_.size(); ++s)
      h->recorders_.emplace_back(*metrics, h->created_);
    h->last_out_.resize(h->seq_prompt_.size());
    for (size_t s = 0; s < h->seq_prompt_.size(); ++s) {
      h->last_out_[s].prompt_tokens =
          static_cast<int64_t>(h->input_ids_[static_cast<size_t>(h->seq_prompt_[s])].size());
    }
  }

  {
    std::lock_guard<std::mutex> lock(mu_);
    throw_if_unavailable();  // again: a failure may have begun while this call tokenized
    for (const std::string& rid : h->rids_) {
      if (live_.count(rid) != 0) {
        throw ApiError(400, fmt::format("a request with rid \"{}\" is already running", rid),
                       "invalid_request_error", "rid");
      }
    }
    for (const std::string& rid : h->rids_) live_[rid] = h.get();
    for (const TokenizedGenerateReq& r : reqs) {
      if (r.data_parallel_rank >= 0) rid_group_[r.rid] = r.data_parallel_rank;
    }
    h->manager_ = this;
    open_handles_.fetch_add(1);
  }
  for (const TokenizedGenerateReq& r : reqs) {
    if (log_requests_) {
      spdlog::info("[{}] receive: {} prompt tokens, stream {}, sampling_params {}, text {}", r.rid,
                   r.input_ids.size(), r.stream, r.sampling_params_json,
                   nlohmann::json(r.input_text)
                       .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    } else {
      spdlog::debug("[{}] receive: {} prompt tokens", r.rid, r.input_ids.size());
    }
    if (!send(r)) {
      throw ApiError(503, "the scheduler process is not reachable", "service_unavailable");
    }
  }
  return h;
}

bool TokenizerManager::send(const Message& msg) {
  // A PUSH socket blocks while no peer is connected: a dead scheduler must not hang the caller.
  std::lock_guard<std::mutex> lock(send_mu_);
  if (to_scheduler_.send(msg, std::chrono::milliseconds(2000))) return true;
  spdlog::error("cannot send {} to the scheduler: it is not connected", message_name(msg));
  return false;
}

void TokenizerManager::release(GenerateHandle* handle, bool abort_unfinished) {
  std::vector<std::string> to_abort;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& rid : handle->rids_) {
      const auto it = live_.find(rid);
      if (it != live_.end() && it->second == handle) {
        live_.erase(it);
        rid_group_.erase(rid);
        dispatched_.erase(rid);
        to_abort.push_back(rid);
      }
    }
  }
  open_handles_.fetch_sub(1);
  {
    // The receiver no longer routes outputs to this handle: its unfinished sequences end here.
    std::lock_guard<std::mutex> lock(handle->mu_);
    for (size_t s = 0; s < handle->recorders_.size(); ++s) {
      if (handle->seq_finished_[s]) continue;
      const TokenIdOut& last = handle->last_out_[s];
      handle->recorders_[s].on_finish(last.prompt_tokens, last.completion_tokens,
                                      last.cached_tokens, /*aborted=*/true);
    }
  }
  if (!abort_unfinished || dead_.load() || recovering_.load()) return;
  if (controller_down_.load()) {
    // Sent to the restarted controller (set_controller_up), which fans them out.
    std::lock_guard<std::mutex> lock(mu_);
    if (controller_down_.load()) {
      pending_aborts_.insert(pending_aborts_.end(), to_abort.begin(), to_abort.end());
      return;
    }
  }
  for (const std::string& rid : to_abort) {
    spdlog::info("[{}] abort: the client went away before it finished", rid);
    send(AbortReq{rid, false});
  }
}

void TokenizerManager::abort(const std::string& rid) {
  if (dead_.load() || recovering_.load()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (live_.count(rid) == 0) return;
    if (controller_down_.load()) {
      pending_aborts_.push_back(rid);
      return;
    }
  }
  spdlog::info("[{}] abort requested", rid);
  send(AbortReq{rid, false});
}

void TokenizerManager::abort_all() {
  std::vector<std::string> rids;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [rid, h] : live_) rids.push_back(rid);
  }
  if (dead_.load() || recovering_.load()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (controller_down_.load()) {
      pending_abort_all_ = true;
      return;
    }
  }
  if (!rids.empty()) spdlog::info("aborting {} live requests", rids.size());
  send(AbortReq{"", true});
}

void TokenizerManager::stop_accepting() { accepting_.store(false); }

void TokenizerManager::set_scheduler_dead(const std::string& reason) {
  std::vector<GenerateHandle*> handles;
  {
    std::lock_guard<std::mutex> lock(mu_);
    dead_reason_ = reason;
    dead_.store(true);
    for (const auto& [rid, h] : live_) handles.push_back(h);
    // Failing under mu_ keeps the handles alive (their destructors wait for mu_ in release()).
    for (GenerateHandle* h : handles) h->fail(reason);
  }
  { std::lock_guard<std::mutex> lock(control_resp_mu_); }
  control_cv_.notify_all();
}

void TokenizerManager::set_recovering(std::optional<std::string> reason, int retry_after_s) {
  std::lock_guard<std::mutex> lock(mu_);
  recovery_reason_ = reason.value_or("");
  retry_after_s_ = retry_after_s;
  recovering_.store(reason.has_value());
}

void TokenizerManager::forget_rid(const std::string& rid) {
  live_.erase(rid);
  rid_group_.erase(rid);
  dispatched_.erase(rid);
}

int64_t TokenizerManager::fail_requests(int32_t dp_rank, const std::string& reason,
                                        int retry_after_s) {
  int64_t n = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::pair<std::string, GenerateHandle*>> hit;
    for (const auto& [rid, h] : live_) {
      const auto g = rid_group_.find(rid);
      if (dp_rank < 0 || (g != rid_group_.end() && g->second == dp_rank)) hit.emplace_back(rid, h);
    }
    // Failing under mu_ keeps the handles alive (their destructors wait for mu_ in release()).
    // Other prompts of a failed call that run elsewhere stay live: release() aborts them.
    for (const auto& [rid, h] : hit) {
      forget_rid(rid);
      h->fail(reason, retry_after_s);
    }
    n = static_cast<int64_t>(hit.size());
  }
  if (n > 0) spdlog::warn("{} requests failed: {}", n, reason);
  return n;
}

void TokenizerManager::set_dp_group_down(int32_t dp_rank, const std::string& reason,
                                         int retry_after_s) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    down_groups_[dp_rank] = {reason, retry_after_s};
  }
  // Requests the controller dispatched there before it hears this are failed as their dispatch
  // notices arrive (the notices precede anything it does after this message). A restarting
  // controller is told by set_controller_up.
  if (!controller_down_.load()) send(DpGroupState{dp_rank, false, reason});
  fail_requests(dp_rank, reason, retry_after_s);
}

void TokenizerManager::set_dp_group_up(int32_t dp_rank) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    down_groups_.erase(dp_rank);
  }
  if (!controller_down_.load()) send(DpGroupState{dp_rank, true, ""});
}

void TokenizerManager::set_controller_down(const std::string& reason, int retry_after_s) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    controller_reason_ = reason;
    controller_retry_after_s_ = retry_after_s;
    controller_down_.store(true);
  }
  // A control request waiting for the dead controller's answer fails now.
  { std::lock_guard<std::mutex> lock(control_resp_mu_); }
  control_cv_.notify_all();
}

int64_t TokenizerManager::fail_undispatched(const std::string& reason, int retry_after_s) {
  int64_t n = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::pair<std::string, GenerateHandle*>> hit;
    for (const auto& [rid, h] : live_) {
      if (dispatched_.count(rid) == 0) hit.emplace_back(rid, h);
    }
    // Failing under mu_ keeps the handles alive (their destructors wait for mu_ in release()).
    for (const auto& [rid, h] : hit) {
      forget_rid(rid);
      h->fail(reason, retry_after_s);
      pending_aborts_.push_back(rid);  // in case it reached a group after all
    }
    n = static_cast<int64_t>(hit.size());
  }
  if (n > 0) spdlog::warn("{} requests not yet dispatched to a DP group failed: {}", n, reason);
  return n;
}

bool TokenizerManager::set_controller_up() {
  std::vector<DpGroupState> groups;
  std::vector<std::string> aborts;
  bool abort_all = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [k, down] : down_groups_) groups.push_back({k, false, down.first});
    aborts = std::exchange(pending_aborts_, {});
    abort_all = std::exchange(pending_abort_all_, false);
  }
  // Before any new request, on the same socket: the new controller knows the groups that are
  // down before it dispatches.
  bool ok = true;
  for (const DpGroupState& g : groups) ok = send(g) && ok;
  for (const std::string& rid : aborts) ok = send(AbortReq{rid, false}) && ok;
  if (abort_all) ok = send(AbortReq{"", true}) && ok;
  {
    std::lock_guard<std::mutex> lock(mu_);
    controller_down_.store(false);
    controller_reason_.clear();
  }
  spdlog::info("the data parallel controller serves again (told it {} DP groups down, {} aborts{})",
               groups.size(), aborts.size(), abort_all ? " and abort all" : "");
  return ok;
}

HealthStatus TokenizerManager::health() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (dead_.load()) return {false, "dead", "the server is stopping: " + dead_reason_, 0};
  if (!accepting_.load()) {
    return {false, "draining",
            "the server is draining: it is shutting down and takes no new requests", 0};
  }
  if (recovering_.load()) {
    return {false, "recovering", "the server is recovering: " + recovery_reason_, retry_after_s_};
  }
  if (controller_down_.load()) {
    return {false, "recovering", "the server is recovering: " + controller_reason_,
            controller_retry_after_s_};
  }
  return {true, "serving", "", 0};
}

void TokenizerManager::on_dispatch_notice(const DpDispatchNotice& notice) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < notice.rids.size() && i < notice.dp_ranks.size(); ++i) {
    const auto it = live_.find(notice.rids[i]);
    if (it == live_.end()) continue;  // finished or released already
    const auto down = down_groups_.find(notice.dp_ranks[i]);
    if (down == down_groups_.end()) {
      rid_group_[notice.rids[i]] = notice.dp_ranks[i];
      dispatched_.insert(notice.rids[i]);
      continue;
    }
    // Dispatched to a group that died since: it will never answer.
    GenerateHandle* h = it->second;
    spdlog::warn("[{}] failed: DP group {} is down: {}", notice.rids[i], notice.dp_ranks[i],
                 down->second.first);
    forget_rid(notice.rids[i]);
    h->fail(down->second.first, down->second.second);
  }
}

int64_t TokenizerManager::num_live_requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(live_.size());
}

void TokenizerManager::receive_loop() {
  while (!stop_.load()) {
    std::optional<Message> msg;
    try {
      msg = from_scheduler_.recv(std::chrono::milliseconds(100));
    } catch (const std::exception& e) {
      spdlog::error("tokenizer manager: dropping a malformed message from the scheduler: {}",
                    e.what());
      continue;
    }
    if (!msg) continue;
    if (const auto* notice = std::get_if<DpDispatchNotice>(&*msg)) {
      on_dispatch_notice(*notice);  // from the controller: no sign of scheduler progress
      continue;
    }
    last_receive_ns_.store(now_ns());
    if (auto* batch = std::get_if<BatchTokenIdOut>(&*msg)) {
      // Waking a handler's thread while mu_ is held lets it preempt this thread inside mu_, and
      // every HTTP thread starting or ending a request then queues behind it (a lock convoy
      // that, under load, starved the HTTP pool). So handlers are woken after mu_ is released,
      // their handles pinned meanwhile (a handle whose owner let go is being released: skipped).
      std::vector<std::shared_ptr<GenerateHandle>> to_wake;
      std::unique_lock<std::mutex> lock(mu_);
      for (const TokenIdOut& out : batch->outputs) {
        const auto it = live_.find(out.rid);
        if (it == live_.end()) continue;  // aborted by its client and released already
        GenerateHandle* h = it->second;
        std::shared_ptr<GenerateHandle> pinned = h->self_.lock();
        if (pinned == nullptr) continue;
        h->push(out, /*notify=*/false);
        if (to_wake.empty() || to_wake.back() != pinned) to_wake.push_back(std::move(pinned));
        if (out.finished) {
          if (log_requests_) {
            spdlog::info("[{}] finish: index {}, {} completion tokens, finish_reason {}", out.rid,
                         out.index, out.completion_tokens, out.finish_reason_json);
          }
          // The rid leaves live_ once all its sequences finished.
          bool all = true;
          {
            std::lock_guard<std::mutex> hl(h->mu_);
            const int64_t base = h->base_.at(out.rid);
            for (int64_t s = base;
                 s < h->num_sequences() && h->seq_prompt_[s] == h->seq_prompt_[base]; ++s) {
              if (!h->seq_finished_[static_cast<size_t>(s)]) all = false;
            }
          }
          if (all) {
            rid_group_.erase(out.rid);
            dispatched_.erase(out.rid);
            live_.erase(it);
          }
        }
      }
      lock.unlock();
      for (const std::shared_ptr<GenerateHandle>& h : to_wake) h->cv_.notify_all();
      to_wake.clear();  // may run the last owner's release(), which takes mu_
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(control_resp_mu_);
      control_resp_ = std::move(*msg);
    }
    control_cv_.notify_all();
  }
}

Message TokenizerManager::control(const Message& request, std::chrono::milliseconds timeout) {
  std::lock_guard<std::mutex> serial(control_mu_);
  {
    std::lock_guard<std::mutex> lock(control_resp_mu_);
    control_resp_.reset();
  }
  if (dead_.load() || recovering_.load() || controller_down_.load()) {
    std::lock_guard<std::mutex> lock(mu_);
    throw_if_down();
  }
  if (!send(request)) {
    throw ApiError(503, "the scheduler process is not reachable", "service_unavailable");
  }
  std::unique_lock<std::mutex> lock(control_resp_mu_);
  if (!control_cv_.wait_for(
          lock, timeout,
          [&] { return control_resp_.has_value() || dead_.load() || controller_down_.load(); }) ||
      !control_resp_) {
    throw ApiError(503,
                   fmt::format("the scheduler did not answer {} in time", message_name(request)),
                   "service_unavailable");
  }
  Message resp = std::move(*control_resp_);
  control_resp_.reset();
  return resp;
}

FlushCacheResp TokenizerManager::flush_cache(std::chrono::milliseconds timeout) {
  Message m = control(FlushCacheReq{}, timeout);
  if (auto* r = std::get_if<FlushCacheResp>(&m)) return *r;
  throw ApiError(500, fmt::format("unexpected {} from the scheduler", message_name(m)),
                 "internal_error");
}

nlohmann::json TokenizerManager::scheduler_server_info(std::chrono::milliseconds timeout) {
  Message m = control(GetServerInfoReq{}, timeout);
  if (auto* r = std::get_if<GetServerInfoResp>(&m)) return nlohmann::json::parse(r->info_json);
  throw ApiError(500, fmt::format("unexpected {} from the scheduler", message_name(m)),
                 "internal_error");
}

std::vector<int32_t> TokenizerManager::health_generate(int dp_size,
                                                       std::chrono::milliseconds timeout) {
  // SGLang's probe: one greedy token from input_ids [0], here one per DP group. With a single
  // group, any output that arrives after the probe was sent also proves the scheduler is making
  // progress (it is busy with other requests); outputs do not say their group, so with several
  // each group's own probe must answer.
  const int64_t tic = now_ns();
  const int n = std::max(dp_size, 1);
  std::vector<GenerateReqInput> probes;
  for (int k = 0; k < n; ++k) {
    GenerateReqInput in;
    in.input_ids = {0};
    in.sampling_params.max_new_tokens = 1;
    in.sampling_params.temperature = 0.0;
    in.rid = "HEALTH_CHECK_" + new_rid();
    in.data_parallel_rank = n > 1 ? k : -1;
    probes.push_back(std::move(in));
  }
  std::shared_ptr<GenerateHandle> h = generate(std::move(probes));
  std::vector<bool> answered(static_cast<size_t>(n), false);
  int missing = n;
  const auto deadline = Clock::now() + timeout;
  while (missing > 0 && Clock::now() < deadline) {
    for (const GenerateChunk& c : h->next(std::chrono::milliseconds(100))) {
      const auto k = static_cast<size_t>(c.seq);  // one sequence per probe
      if (c.out.completion_tokens > 0 && !answered[k]) {
        answered[k] = true;
        --missing;
      }
    }
    if (n == 1 && last_receive_ns_.load() > tic) return {};
  }
  std::vector<int32_t> failed;
  for (int k = 0; k < n; ++k) {
    if (!answered[static_cast<size_t>(k)]) failed.push_back(k);
  }
  if (!failed.empty()) {
    spdlog::warn("[{}] health check: no token from DP group(s) {} within {} ms", h->rids().front(),
                 fmt::join(failed, ", "), timeout.count());
  }
  return failed;
}

}  // namespace dpserve
