// Scheduler: construction, request intake and abort, one step (forward, batched sampling, stop
// checks, outputs) and the offline batch API. The prefill adder lives in scheduler_prefill.cc,
// decode and retraction in scheduler_retract.cc, the event loop and watchdog in scheduler_loop.cc.

#include "dpserve/managers/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"

namespace dpserve {

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

SchedulerConfig validated(SchedulerConfig c) {
  c.validate();
  return c;
}

KVPoolSize size_pool(const SchedulerConfig& c, const LlamaForCausalLM& model) {
  const ModelConfig& m = model.config();
  KVPoolBudget b;
  b.max_total_tokens = c.max_total_tokens;
  b.kv_cache_memory = c.kv_cache_memory;
  b.mem_fraction = c.mem_fraction;
  b.page_size = c.page_size;
  // Under tensor parallelism a rank stores only its own KV heads.
  b.bytes_per_token =
      kv_bytes_per_token(m.num_hidden_layers, model.num_local_kv_heads(), m.head_dim);
  return size_kv_pool(b);
}

std::vector<int32_t> all_eos_ids(const Tokenizer& tok, const ModelConfig& m) {
  std::vector<int32_t> ids = tok.eos_token_ids();
  for (int64_t id : m.eos_token_ids) {
    if (std::find(ids.begin(), ids.end(), static_cast<int32_t>(id)) == ids.end()) {
      ids.push_back(static_cast<int32_t>(id));
    }
  }
  return ids;
}

}  // namespace

void SchedulerConfig::validate() const {
  if (max_running_requests < 0) {
    throw_error("--max-running-requests must be >= 0, got {}", max_running_requests);
  }
  if (max_total_tokens < 0)
    throw_error("--max-total-tokens must be >= 0, got {}", max_total_tokens);
  if (kv_cache_memory < 0) throw_error("--kv-cache-memory must be >= 0, got {}", kv_cache_memory);
  if (page_size < 1) throw_error("--page-size must be >= 1, got {}", page_size);
  if (max_prefill_tokens < 1) {
    throw_error("--max-prefill-tokens must be >= 1, got {}", max_prefill_tokens);
  }
  if (!(watchdog_timeout >= 0.0)) {
    throw_error("--watchdog-timeout must be >= 0 seconds, got {}", watchdog_timeout);
  }
  if (num_threads < 0) throw_error("--num-threads must be >= 0, got {}", num_threads);
  if (!(schedule_conservativeness > 0.0)) {
    throw_error("--schedule-conservativeness must be > 0, got {}", schedule_conservativeness);
  }
  if (!(init_new_token_ratio >= 0.0 && min_new_token_ratio_factor >= 0.0) ||
      new_token_ratio_decay_steps < 1 || retract_decode_steps < 0 ||
      clip_max_new_tokens_estimation < 1) {
    throw_error("invalid new_token_ratio settings");
  }
}

Scheduler::Scheduler(SchedulerConfig config, std::shared_ptr<LlamaForCausalLM> model,
                     std::shared_ptr<const Tokenizer> tokenizer)
    : config_(validated(std::move(config))),
      model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      vocab_size_(model_->config().vocab_size),
      context_len_(model_->config().max_position_embeddings),
      extra_eos_ids_(all_eos_ids(*tokenizer_, model_->config())),
      pool_(config_.num_threads > 0 ? config_.num_threads : default_num_threads()),
      pool_size_(size_pool(config_, *model_)),
      kv_(model_->make_kv_pool(pool_size_.pool_slots)),
      allocator_(pool_size_.num_pages, pool_size_.page_size),
      tree_(allocator_, config_.disable_radix_cache),
      sampler_(extra_eos_ids_, config_.random_seed.value_or(0), &pool_),
      policy_(config_.schedule_policy),
      seed_rng_(config_.random_seed ? *config_.random_seed : std::random_device{}()) {
  if (config_.max_running_requests == 0) {
    config_.max_running_requests =
        std::clamp<int64_t>(pool_size_.usable_tokens / 2, 1, int64_t{1024});
  }
  init_new_token_ratio_ =
      std::min(1.0, config_.init_new_token_ratio * config_.schedule_conservativeness);
  min_new_token_ratio_ = init_new_token_ratio_ * config_.min_new_token_ratio_factor;
  new_token_ratio_decay_ = (init_new_token_ratio_ - min_new_token_ratio_) /
                           static_cast<double>(config_.new_token_ratio_decay_steps);
  new_token_ratio_ = init_new_token_ratio_;
  spdlog::info(
      "scheduler: KV pool {} tokens ({} pages of {}, {:.1f} MiB, from {}), max_running_requests "
      "{}, chunked_prefill_size {}, max_prefill_tokens {}, policy {}, radix cache {}",
      pool_size_.usable_tokens, pool_size_.num_pages, pool_size_.page_size,
      static_cast<double>(pool_size_.bytes) / (1 << 20), pool_size_.source,
      config_.max_running_requests, config_.chunked_prefill_size, config_.max_prefill_tokens,
      config_.schedule_policy, config_.disable_radix_cache ? "off" : "on");
  if (config_.watchdog_timeout > 0.0) watchdog_thread_ = std::thread([this] { watchdog_loop(); });
}

Scheduler::~Scheduler() {
  stop_event_loop();
  {
    std::lock_guard<std::mutex> lock(watchdog_mu_);
    watchdog_stop_ = true;
  }
  watchdog_cv_.notify_all();
  if (watchdog_thread_.joinable()) watchdog_thread_.join();
  // Return every slot before the allocator and tree go (requests may still be live).
  for (auto& [ptr, req] : live_) tree_.release_req(req->cache);
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s = stats_;
  s.num_watchdog_reports = watchdog_reports_.load();
  return s;
}

int64_t Scheduler::num_waiting() const {
  return static_cast<int64_t>(waiting_queue_.size()) + (chunked_req_ != nullptr ? 1 : 0);
}

int64_t Scheduler::num_waiting_tokens() const {
  int64_t n = 0;
  for (const Req* r : waiting_queue_) n += static_cast<int64_t>(r->origin_input_ids.size());
  if (chunked_req_ != nullptr) n += static_cast<int64_t>(chunked_req_->origin_input_ids.size());
  return n;
}

bool Scheduler::has_work() const { return !live_.empty() || !pending_outputs_.empty(); }

Req* Scheduler::new_req(const GenerateRequest& r, int64_t index, const SamplingParams& params) {
  RequestSamplingState state = sampler_.make_state(params, r.input_ids, index);
  auto stop = std::make_unique<StopChecker>(*tokenizer_, params, r.input_ids, extra_eos_ids_);
  auto req = std::make_unique<Req>(r.rid, index, next_arrival_++, r.input_ids, params,
                                   std::move(state), std::move(stop));
  Req* p = req.get();
  live_.emplace(p, std::move(req));
  return p;
}

void Scheduler::erase_req(Req* req) { live_.erase(req); }

void Scheduler::add_request(GenerateRequest request) {
  if (request.rid.empty()) request.rid = fmt::format("req-{}", next_rid_++);
  const std::string& rid = request.rid;
  for (const auto& [ptr, r] : live_) {
    if (r->rid == rid) throw_error("request {}: a request with this id is already running", rid);
  }
  SamplingParams params = request.sampling_params;
  params.validate(vocab_size_);
  const auto prompt_len = static_cast<int64_t>(request.input_ids.size());
  if (prompt_len == 0) throw_error("request {}: the prompt has no tokens", rid);
  for (int32_t id : request.input_ids) {
    if (id < 0 || id >= vocab_size_) {
      throw_error("request {}: token id {} outside the model's vocab_size {}", rid, id,
                  vocab_size_);
    }
  }
  if (prompt_len >= context_len_) {
    throw_error("request {}: the prompt of {} tokens does not fit the context length of {}", rid,
                prompt_len, context_len_);
  }
  params.max_new_tokens = std::min(params.max_new_tokens, context_len_ - prompt_len);
  const int64_t page = pool_size_.page_size;
  const int64_t need_pages = (prompt_len + params.max_new_tokens + page - 1) / page;
  if (need_pages > pool_size_.num_pages) {
    throw_error(
        "request {}: {} prompt tokens plus max_new_tokens {} need more KV cache than the pool's "
        "{} tokens (raise --max-total-tokens or --kv-cache-memory)",
        rid, prompt_len, params.max_new_tokens, pool_size_.usable_tokens);
  }
  // Every completion's random stream derives from one seed, so outputs do not depend on when the
  // n > 1 siblings are created or on what else is running.
  if (!params.seed) params.seed = seed_rng_();

  if (params.max_new_tokens == 0) {
    for (int64_t i = 0; i < params.n; ++i) {
      RequestOutput out;
      out.rid = rid;
      out.index = i;
      out.finished = true;
      out.finish_reason = FinishReason::max_length(0);
      out.prompt_tokens = prompt_len;
      pending_outputs_.push_back(std::move(out));
    }
    return;
  }
  Req* leader = new_req(request, 0, params);
  leader->siblings_to_fork = params.n - 1;
  waiting_queue_.push_back(leader);
  spdlog::debug("[{}] queued: {} prompt tokens, max_new_tokens {}, n {}", rid, prompt_len,
                params.max_new_tokens, params.n);
}

bool Scheduler::abort_request(const std::string& rid, const std::string& message) {
  std::vector<Req*> victims;
  for (const auto& [ptr, r] : live_) {
    if (r->rid == rid) victims.push_back(ptr);
  }
  if (victims.empty()) return false;
  std::sort(victims.begin(), victims.end(),
            [](const Req* a, const Req* b) { return a->index < b->index; });
  for (Req* r : victims) {
    std::erase(waiting_queue_, r);
    std::erase(running_, r);
    if (chunked_req_ == r) chunked_req_ = nullptr;
    tree_.release_req(r->cache);
    r->pending.new_text += r->stop_checker->flush();
    r->finished_reason = FinishReason::abort(message);
    pending_outputs_.push_back(r->take_output());
    for (int64_t i = 1; i <= r->siblings_to_fork; ++i) {
      RequestOutput out;
      out.rid = rid;
      out.index = r->index + i;
      out.finished = true;
      out.finish_reason = FinishReason::abort(message);
      out.prompt_tokens = static_cast<int64_t>(r->origin_input_ids.size());
      pending_outputs_.push_back(std::move(out));
    }
    stats_.num_aborted += 1 + r->siblings_to_fork;
    stats_.num_finished += 1 + r->siblings_to_fork;
    erase_req(r);
  }
  spdlog::info("[{}] aborted: {}", rid, message);
  return true;
}

std::optional<ScheduleBatch> Scheduler::get_next_batch_to_run() {
  if (std::optional<ScheduleBatch> prefill = get_new_batch_prefill()) return prefill;
  return update_running_batch();
}

std::vector<RequestOutput> Scheduler::step() {
  const int64_t step_no = step_counter_.load() + 1;
  step_counter_.store(step_no);
  step_batch_size_.store(0);
  step_started_ns_.store(now_ns());
  std::optional<ScheduleBatch> batch = get_next_batch_to_run();
  if (!batch && dp_sync_) {
    // DP attention: this group has nothing to run, but the others may; then it joins their
    // MLP collectives with an idle forward.
    const DpStepCounts counts = sync_dp_step(0, false);
    if (last_global_num_tokens_ > 0) run_idle_batch(counts);
  }
  if (batch) {
    run_batch(*batch);
  } else if (live_.empty()) {
    new_token_ratio_ = init_new_token_ratio_;  // idle: start estimating afresh
  } else {
    // Live requests but nothing runnable would hang the caller: admission guarantees that a
    // request fitting the pool alone is admitted once nothing runs.
    DPSERVE_CHECK(!running_.empty() || chunked_req_ != nullptr || !pending_outputs_.empty(),
                  "scheduler stalled: {} waiting, none admitted ({} free pages, {} evictable)",
                  waiting_queue_.size(), allocator_.num_free_pages(), tree_.evictable_size());
  }
  if (step_hook_) step_hook_(step_no);
  step_started_ns_.store(0);
  std::vector<RequestOutput> out = std::move(pending_outputs_);
  pending_outputs_.clear();
  return out;
}

void Scheduler::run_batch(ScheduleBatch& batch) {
  ForwardBatch fb = batch.to_forward_batch();
  if (dp_sync_) {
    DpStepCounts counts = sync_dp_step(fb.num_tokens(), batch.mode == ForwardMode::kExtend);
    fb.global_num_tokens = std::move(counts.global_num_tokens);
    fb.is_extend_in_batch = counts.is_extend_in_batch;
  }
  step_is_decode_.store(batch.mode == ForwardMode::kDecode);
  step_batch_size_.store(fb.batch_size);
  step_num_tokens_.store(fb.num_tokens());
  model_->forward(fb, kv_, pool_, logits_);
  ++stats_.num_steps;
  if (batch.mode == ForwardMode::kDecode) {
    ++stats_.num_decode_batches;
    stats_.num_decode_tokens += fb.num_tokens();
    process_decode_result(batch, logits_);
  } else {
    ++stats_.num_prefill_batches;
    stats_.num_prefill_tokens += fb.num_tokens();
    process_prefill_result(batch, logits_);
  }
}

DpStepCounts Scheduler::sync_dp_step(int64_t num_tokens, bool is_extend) {
  DpStepCounts counts = dp_sync_(num_tokens, is_extend);
  last_global_num_tokens_ = 0;
  for (const int64_t n : counts.global_num_tokens) last_global_num_tokens_ += n;
  // This group decodes while another prefills: the steps SGLang's MLP sync exists for.
  if (num_tokens > 0 && !is_extend && counts.is_extend_in_batch) {
    ++stats_.num_decode_batches_beside_prefill;
  }
  return counts;
}

void Scheduler::run_idle_batch(const DpStepCounts& counts) {
  ForwardBatch fb;
  fb.mode = ForwardMode::kIdle;
  fb.kv_indptr = {0};
  fb.global_num_tokens = counts.global_num_tokens;
  fb.is_extend_in_batch = counts.is_extend_in_batch;
  model_->forward(fb, kv_, pool_, logits_);
  ++stats_.num_idle_batches;
}

void Scheduler::process_prefill_result(ScheduleBatch& batch, std::vector<float>& logits) {
  std::vector<Req*> rows;
  row_logits_.clear();
  for (size_t i = 0; i < batch.reqs.size(); ++i) {
    Req* r = batch.reqs[i];
    // Share what is computed with later requests (and keep it across chunks).
    tree_.cache_unfinished_req(r->cache);
    if (r->computed_len() < r->fill_len()) {
      chunked_req_ = r;  // carried over: the next step continues it first
      continue;
    }
    const float* row = logits.data() + i * vocab_size_;
    rows.push_back(r);
    row_logits_.insert(row_logits_.end(), row, row + vocab_size_);
    if (r->siblings_to_fork > 0) fork_siblings(r, rows, row_logits_, row);
  }
  if (rows.empty()) return;
  sample_and_check(rows, row_logits_);
  for (Req* r : rows) {
    if (r->finished()) {
      erase_req(r);
    } else {
      running_.push_back(r);
    }
  }
}

void Scheduler::process_decode_result(ScheduleBatch& batch, std::vector<float>& logits) {
  sample_and_check(batch.reqs, logits);
  std::erase_if(running_, [](const Req* r) { return r->finished(); });
  for (Req* r : batch.reqs) {
    if (r->finished()) erase_req(r);
  }
}

void Scheduler::fork_siblings(Req* leader, std::vector<Req*>& rows, std::vector<float>& rows_logits,
                              const float* leader_logits) {
  const auto prompt_len = static_cast<int64_t>(leader->origin_input_ids.size());
  DPSERVE_CHECK(leader->computed_len() == prompt_len && leader->output_ids.empty(),
                "fork of {} after {} tokens", leader->log_name(), leader->computed_len());
  GenerateRequest proto;
  proto.rid = leader->rid;
  proto.input_ids = leader->origin_input_ids;
  const int64_t count = leader->siblings_to_fork;
  leader->siblings_to_fork = 0;
  for (int64_t k = 1; k <= count; ++k) {
    Req* s = new_req(proto, leader->index + k, leader->sampling_params);
    s->arrival = leader->arrival;
    // The prompt's whole pages come from the radix cache (the leader just inserted them); the
    // rest of the prompt's K/V is copied from the leader, so no sibling recomputes its prompt.
    const int64_t shared = tree_.match_and_lock(s->cache, prompt_len);
    if (!alloc_slots(s, prompt_len - shared)) {
      tree_.release_req(s->cache);
      waiting_queue_.push_back(s);  // no room now: it will prefill like any request
      spdlog::debug("[{}] no KV room to fork, queued", s->log_name());
      continue;
    }
    copy_kv(kv_, std::span<const int32_t>(leader->cache.kv_slots).subspan(shared),
            std::span<const int32_t>(s->cache.kv_slots).subspan(shared));
    s->cached_tokens = prompt_len;
    s->admitted_once = true;
    stats_.num_cached_tokens += prompt_len;
    rows.push_back(s);
    rows_logits.insert(rows_logits.end(), leader_logits, leader_logits + vocab_size_);
  }
}

void Scheduler::sample_and_check(std::vector<Req*>& rows, std::vector<float>& logits) {
  std::vector<RequestSamplingState*> states;
  states.reserve(rows.size());
  for (Req* r : rows) states.push_back(&r->sampling_state);
  DPSERVE_CHECK(logits.size() >= rows.size() * vocab_size_, "{} logits for {} rows", logits.size(),
                rows.size());
  const std::vector<SampleResult> results =
      sampler_.sample(logits.data(), static_cast<int64_t>(rows.size()), vocab_size_, states);
  for (size_t i = 0; i < rows.size(); ++i) {
    Req* r = rows[i];
    const SampleResult& res = results[i];
    r->output_ids.push_back(res.token);
    r->cache.token_ids.push_back(res.token);
    r->pending.new_token_ids.push_back(res.token);
    if (r->sampling_params.return_logprob || r->sampling_params.top_logprobs_num > 0) {
      r->pending.output_logprobs.push_back(res.logprob);
      if (r->sampling_params.top_logprobs_num > 0) {
        r->pending.output_top_logprobs.push_back(res.top_logprobs);
      }
    }
    r->pending.new_text += r->stop_checker->add(res.token);
    if (r->stop_checker->finished()) {
      r->finished_reason = r->stop_checker->finish_reason();
      finish_req(r);
    }
    emit(r);
  }
}

void Scheduler::finish_req(Req* req) {
  tree_.cache_finished_req(req->cache);
  ++stats_.num_finished;
  spdlog::debug("[{}] finished ({}): {} prompt + {} output tokens, {} cached", req->log_name(),
                req->finished_reason->type_name(), req->origin_input_ids.size(),
                req->output_ids.size(), req->cached_tokens);
}

void Scheduler::emit(Req* req) { pending_outputs_.push_back(req->take_output()); }

std::vector<CompletedRequest> Scheduler::generate(std::vector<GenerateRequest> requests) {
  std::unordered_map<std::string, size_t> base;  // rid -> first record
  std::vector<CompletedRequest> done;
  std::vector<std::string> added;
  try {
    for (GenerateRequest& r : requests) {
      if (r.rid.empty()) r.rid = fmt::format("req-{}", next_rid_++);
      if (base.count(r.rid) != 0) throw_error("request {}: duplicate request id", r.rid);
      base[r.rid] = done.size();
      const int64_t n = r.sampling_params.n;
      const std::string rid = r.rid;
      add_request(std::move(r));
      added.push_back(rid);
      for (int64_t i = 0; i < n; ++i) {
        CompletedRequest c;
        c.rid = rid;
        c.index = i;
        done.push_back(std::move(c));
      }
    }
  } catch (...) {
    for (const std::string& rid : added) abort_request(rid);
    std::erase_if(pending_outputs_, [&](const RequestOutput& o) { return base.count(o.rid) != 0; });
    throw;
  }
  while (has_work()) {
    for (RequestOutput& o : step()) {
      auto it = base.find(o.rid);
      if (it == base.end()) continue;  // not ours (added through the API meanwhile)
      CompletedRequest& c = done[it->second + o.index];
      c.output_ids.insert(c.output_ids.end(), o.new_token_ids.begin(), o.new_token_ids.end());
      c.text += o.new_text;
      c.output_logprobs.insert(c.output_logprobs.end(), o.output_logprobs.begin(),
                               o.output_logprobs.end());
      for (auto& t : o.output_top_logprobs) c.output_top_logprobs.push_back(std::move(t));
      c.prompt_tokens = o.prompt_tokens;
      c.completion_tokens = o.completion_tokens;
      c.cached_tokens = o.cached_tokens;
      if (o.finished && o.finish_reason) c.finish_reason = *o.finish_reason;
    }
  }
  return done;
}

std::string Scheduler::check_memory() const {
  int64_t held = 0;  // request-owned slots
  for (const auto& [ptr, r] : live_) {
    held += static_cast<int64_t>(r->cache.kv_slots.size()) - r->cache.prefix_len;
  }
  if (allocator_.used_slots() != held + tree_.total_size()) {
    return fmt::format("{} live slots, but requests hold {} and the radix cache {}",
                       allocator_.used_slots(), held, tree_.total_size());
  }
  if (live_.empty()) {
    if (tree_.protected_size() != 0) {
      return fmt::format("idle, but {} cached tokens are still locked", tree_.protected_size());
    }
    const int64_t used = allocator_.num_used_pages() * allocator_.page_size();
    if (used != tree_.evictable_size()) {
      return fmt::format("idle, {} tokens of pages in use but {} evictable in the radix cache",
                         used, tree_.evictable_size());
    }
  }
  return "";
}

bool Scheduler::flush_cache() {
  if (!live_.empty()) return false;
  tree_.reset();
  spdlog::info("scheduler: cache flushed");
  return true;
}

KVPoolSize Scheduler::plan_kv_pool(const SchedulerConfig& config, const LlamaForCausalLM& model) {
  return size_pool(validated(config), model);
}

std::shared_ptr<LlamaForCausalLM> make_model(const std::string& model_dir,
                                             const SchedulerConfig& config, ModelOptions options) {
  options.attention_backend = config.attention_backend;
  return std::shared_ptr<LlamaForCausalLM>(load_model(model_dir, options));
}

}  // namespace dpserve
