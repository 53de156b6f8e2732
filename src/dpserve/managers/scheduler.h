#pragma once
// Scheduler: one rank's continuous-batching loop (SGLang's managers/scheduler.py) on the CPU.
//
// Each step() is one iteration: admit waiting requests into a prefill batch (chunked to
// chunked_prefill_size, one chunked request carried over between steps, budgets
// max_prefill_tokens / max_running_requests / KV tokens with new_token_ratio reservations for the
// running decodes); if there is no prefill work, decode the running batch (evicting from the radix
// cache, then retracting requests back to the waiting queue when the pool is short); run the
// forward; sample every sequence in one batched pass; check stops; return the outputs; cache
// finished sequences in the radix cache.
//
// Threading: add_request / abort_request / step are not thread-safe: call them from one thread,
// or use the event loop (submit / submit_abort are thread-safe, outputs go to a callback from the
// loop thread). The watchdog thread only reads atomics.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <variant>
#include <vector>

#include "dpserve/common/thread_pool.h"
#include "dpserve/managers/io_struct.h"
#include "dpserve/managers/req.h"
#include "dpserve/managers/schedule_batch.h"
#include "dpserve/managers/schedule_policy.h"
#include "dpserve/mem_cache/kv_pool.h"
#include "dpserve/mem_cache/kv_pool_size.h"
#include "dpserve/mem_cache/paged_allocator.h"
#include "dpserve/mem_cache/radix_cache.h"
#include "dpserve/model/models/llama.h"
#include "dpserve/sampling/sampler.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {

// Runtime settings (SGLang's ServerArgs subset for one rank); names follow the CLI flags.
struct SchedulerConfig {
  int64_t max_running_requests = 0;      // 0 = derived: min(usable KV tokens / 2, 1024)
  int64_t max_total_tokens = 0;          // KV pool size in tokens; 0 = not given
  int64_t kv_cache_memory = 0;           // KV pool size in bytes; 0 = not given
  double mem_fraction = 0.5;             // share of MemAvailable used when neither is given
  int64_t page_size = 1;                 // KV slots per page
  int64_t chunked_prefill_size = 4096;   // most prompt tokens per prefill step; <= 0 disables
  int64_t max_prefill_tokens = 16384;    // prefill token budget per step (first request may chunk)
  std::string schedule_policy = "fcfs";  // "fcfs" or "lpm"
  bool disable_radix_cache = false;      // no prefix caching (pass-through radix cache)
  double watchdog_timeout = 300.0;      // seconds one step may take before it is reported; <= 0 off
  std::optional<uint64_t> random_seed;  // seeds seedless requests; random when absent
  int num_threads = 0;                  // compute threads; 0 = all CPUs
  std::string attention_backend = "flash";   // "flash" or "native" (used by make_model)
  double schedule_conservativeness = 1.0;    // scales the initial new_token_ratio
  double init_new_token_ratio = 0.7;         // SGLANG_INIT_NEW_TOKEN_RATIO (times conservativeness)
  double min_new_token_ratio_factor = 0.14;  // min ratio = init * this
  int64_t new_token_ratio_decay_steps = 600;      // decode steps to decay from init to min
  int64_t retract_decode_steps = 20;              // headroom per request after a retraction
  int64_t clip_max_new_tokens_estimation = 4096;  // cap on a request's reserved future tokens

  // Throws dpserve::Error naming the flag of the first invalid value.
  void validate() const;
};

// DP attention: every DP group's token count this step (attn_dp_rank order) and whether any
// group runs an extend; the answer of a step's sync (see Scheduler::set_dp_sync).
struct DpStepCounts {
  std::vector<int64_t> global_num_tokens;  // one entry per DP group
  bool is_extend_in_batch = false;         // some group prefills this step
};

// Counters for tests, logs and later /get_server_info.
struct SchedulerStats {
  int64_t num_steps = 0;            // step() calls that ran a forward
  int64_t num_prefill_batches = 0;  // prefill (extend) forwards
  int64_t num_decode_batches = 0;   // decode forwards
  int64_t num_idle_batches = 0;     // DP attention: idle forwards (other groups had tokens)
  int64_t num_decode_batches_beside_prefill = 0;  // DP attention: decodes while a group prefilled
  int64_t num_prefill_tokens = 0;    // prompt tokens actually computed (cache hits excluded)
  int64_t num_decode_tokens = 0;     // tokens computed by decode forwards
  int64_t num_cached_tokens = 0;     // prompt tokens served from the radix cache or siblings
  int64_t num_retractions = 0;       // sequences sent back to the waiting queue
  int64_t num_finished = 0;          // sequences finished (aborts included)
  int64_t num_aborted = 0;           // sequences aborted
  int64_t num_watchdog_reports = 0;  // steps the watchdog reported
};

class Scheduler {
 public:
  // Called with every step's outputs by the event loop (on the loop thread).
  using OutputCallback = std::function<void(std::vector<RequestOutput>&&)>;
  // Called by the watchdog thread with the step number and how long it has run, in seconds.
  using WatchdogCallback = std::function<void(int64_t step, double seconds)>;
  // Test hook run inside every step after the forward, with the step number.
  using StepHook = std::function<void(int64_t step)>;
  // DP attention: called once per step with this group's token count and extend flag (0, false
  // without a batch); returns every group's counts (a collective over all ranks of the instance).
  using DpSync = std::function<DpStepCounts(int64_t num_tokens, bool is_extend)>;

  // Sizes the KV pool from config (throws dpserve::Error naming a bad flag), builds the paged
  // allocator, radix cache and sampler, and starts the watchdog. The model is used by this
  // scheduler only (its forward is not reentrant); config.json's eos ids add to the tokenizer's.
  Scheduler(SchedulerConfig config, std::shared_ptr<LlamaForCausalLM> model,
            std::shared_ptr<const Tokenizer> tokenizer);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request (n > 1 gives n sequences that share the prompt's KV). Throws dpserve::Error
  // naming the problem (bad sampling parameter, empty or too long prompt, duplicate rid).
  void add_request(GenerateRequest request);
  // Aborts every sequence of `rid`, queued or running: its slots are returned and an output with
  // finish reason abort comes from the next step(). False if no such live request.
  bool abort_request(const std::string& rid, const std::string& message = "aborted");
  // One iteration (prefill or decode, or nothing); returns the outputs it produced.
  std::vector<RequestOutput> step();
  // True while requests are queued or running, or outputs wait to be taken.
  bool has_work() const;
  // Offline batch API: queues all requests, steps until they finish, and returns one record per
  // sequence in input order (n > 1 gives n consecutive records).
  std::vector<CompletedRequest> generate(std::vector<GenerateRequest> requests);

  // Event loop: thread-safe intake.
  void submit(GenerateRequest request);
  // Thread-safe abort through the event loop.
  void submit_abort(const std::string& rid);
  // Where the event loop sends outputs (set before starting it).
  void set_output_callback(OutputCallback cb) { output_callback_ = std::move(cb); }
  // Runs the loop on the calling thread until stop_event_loop(); rejected requests come back as
  // outputs with an abort finish reason.
  void run_event_loop();
  // Starts run_event_loop() on its own thread.
  void start_event_loop();
  // Asks the loop to stop after the current step and joins its thread (if started here).
  void stop_event_loop();

  // Called (from the watchdog thread) when a step exceeds watchdog_timeout.
  void set_watchdog_callback(WatchdogCallback cb);
  // Test hook run inside each step (e.g. to force a slow step).
  void set_step_hook(StepHook hook) { step_hook_ = std::move(hook); }
  // DP attention: every step() syncs its counts through `sync` right before the forward, even
  // without local work (then it runs an idle forward when another group has tokens, and nothing
  // when none has). Unset (the default): no sync, no idle forwards.
  void set_dp_sync(DpSync sync) { dp_sync_ = std::move(sync); }
  // DP attention: the total tokens of all groups in the last step's sync (0 without a sync).
  int64_t last_global_num_tokens() const { return last_global_num_tokens_; }

  // Counters (a copy: the watchdog's count is updated from its own thread).
  SchedulerStats stats() const;
  // Empty when the memory accounting is consistent: with nothing running, every used page is an
  // evictable radix-cache page (SGLang's check_memory); otherwise names the discrepancy.
  std::string check_memory() const;
  // Drops the radix cache when idle (SGLang's flush_cache); false when requests are live. After
  // it, allocator().check_idle() proves every page is back.
  bool flush_cache();
  // Sequences waiting (chunked one included) and decoding.
  int64_t num_waiting() const;
  // Prompt tokens of the waiting sequences (the controller's minimum_tokens load).
  int64_t num_waiting_tokens() const;
  // Sequences in the running (decode) batch.
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  // The KV pool `config` gives `model` on this rank (what the constructor will allocate); TP ranks
  // compare it to agree on one size. Throws dpserve::Error naming a bad flag.
  static KVPoolSize plan_kv_pool(const SchedulerConfig& config, const LlamaForCausalLM& model);
  // The KV pool size that was chosen, and why.
  const KVPoolSize& kv_pool_size() const { return pool_size_; }
  // Current reservation ratio for running requests' future tokens.
  double new_token_ratio() const { return new_token_ratio_; }
  // The page allocator (accounting checks).
  const PagedAllocator& allocator() const { return allocator_; }
  // The radix cache (accounting checks).
  const RadixCache& tree_cache() const { return tree_; }
  // The settings in use (derived values filled in).
  const SchedulerConfig& config() const { return config_; }

 private:
  struct AbortMsg {
    std::string rid;  // request to abort
  };
  using InputMsg = std::variant<GenerateRequest, AbortMsg>;

  // scheduler.cc: batch execution and results.
  std::optional<ScheduleBatch> get_next_batch_to_run();
  void run_batch(ScheduleBatch& batch);
  // DP attention: this step's sync with every group (keeps the total, counts mixed steps).
  DpStepCounts sync_dp_step(int64_t num_tokens, bool is_extend);
  void run_idle_batch(const DpStepCounts& counts);
  void process_prefill_result(ScheduleBatch& batch, std::vector<float>& logits);
  void process_decode_result(ScheduleBatch& batch, std::vector<float>& logits);
  void sample_and_check(std::vector<Req*>& rows, std::vector<float>& logits);
  void finish_req(Req* req);
  void emit(Req* req);
  Req* new_req(const GenerateRequest& r, int64_t index, const SamplingParams& params);
  void erase_req(Req* req);
  void fork_siblings(Req* leader, std::vector<Req*>& rows, std::vector<float>& rows_logits,
                     const float* leader_logits);

  // scheduler_prefill.cc: the prefill adder.
  std::optional<ScheduleBatch> get_new_batch_prefill();
  int64_t reserved_decode_tokens(const Req* req) const;
  bool alloc_slots(Req* req, int64_t n);

  // scheduler_retract.cc: decode batch, memory check, retraction.
  std::optional<ScheduleBatch> update_running_batch();
  int64_t decode_pages_needed(const std::vector<Req*>& reqs) const;
  void retract_decode();
  void retract(Req* req);

  // scheduler_loop.cc: event loop and watchdog.
  void watchdog_loop();
  void process_input_queue();

  SchedulerConfig config_;
  std::shared_ptr<LlamaForCausalLM> model_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  int64_t vocab_size_;
  int64_t context_len_;
  std::vector<int32_t> extra_eos_ids_;  // config.json eos ids beyond the tokenizer's
  ThreadPool pool_;
  KVPoolSize pool_size_;
  KVPool kv_;
  PagedAllocator allocator_;
  RadixCache tree_;
  Sampler sampler_;
  SchedulePolicy policy_;

  std::unordered_map<Req*, std::unique_ptr<Req>> live_;  // every queued or running sequence
  std::vector<Req*> waiting_queue_;                      // not yet (re)admitted
  std::vector<Req*> running_;                            // decoding
  Req* chunked_req_ = nullptr;                           // prefill in progress across steps
  std::vector<RequestOutput> pending_outputs_;           // aborts / rejections for the next step
  uint64_t next_arrival_ = 0;
  uint64_t next_rid_ = 0;     // for requests given without a rid
  std::mt19937_64 seed_rng_;  // seeds for requests without one (from random_seed)
  double init_new_token_ratio_;
  double min_new_token_ratio_;
  double new_token_ratio_decay_;
  double new_token_ratio_;
  SchedulerStats stats_;
  std::vector<float> logits_;      // forward output, reused
  std::vector<float> row_logits_;  // rows to sample, gathered

  // Event loop.
  std::mutex input_mu_;
  std::condition_variable input_cv_;
  std::vector<InputMsg> input_queue_;
  std::atomic<bool> stop_loop_{false};
  std::thread loop_thread_;
  OutputCallback output_callback_;
  StepHook step_hook_;
  DpSync dp_sync_;                      // DP attention only
  int64_t last_global_num_tokens_ = 0;  // DP attention: the last sync's total

  // Watchdog.
  std::mutex watchdog_mu_;
  std::condition_variable watchdog_cv_;
  bool watchdog_stop_ = false;
  WatchdogCallback watchdog_callback_;
  std::atomic<int64_t> step_counter_{0};
  std::atomic<int64_t> step_started_ns_{0};  // 0 while no step runs
  std::atomic<bool> step_is_decode_{false};  // the running step's batch: decode or prefill
  std::atomic<int64_t> step_batch_size_{0};  // its sequences (0 before the forward starts)
  std::atomic<int64_t> step_num_tokens_{0};  // its new tokens
  std::atomic<int64_t> watchdog_reports_{0};
  std::thread watchdog_thread_;
};

// Loads the model of `model_dir` with the config's attention backend (and `options`' tensor
// parallelism, if any).
std::shared_ptr<LlamaForCausalLM> make_model(const std::string& model_dir,
                                             const SchedulerConfig& config,
                                             ModelOptions options = {});

}  // namespace dpserve
