#pragma once
// TokenizerManager: the main process's side of generation (SGLang's managers/tokenizer_manager.py).
//
// HTTP handlers call generate() with one or more prompts (text or token ids). It tokenizes,
// validates against the scheduler's limits (ApiError 400 naming the problem), assigns request
// ids, registers per-request state and pushes TokenizedGenerateReq messages to the scheduler
// process. A receiver thread reads BatchTokenIdOut from the scheduler and routes every row to the
// GenerateHandle of its request: a queue with a condition variable that the handler drains.
// Streaming and non-streaming responses read the same chunks (non-streaming accumulates them in
// SequenceOutput). Dropping a handle before its request finished aborts the request in the
// scheduler (client disconnect), so its KV pages come back.
//
// Detokenization happens in the scheduler (its StopChecker already decodes incrementally to match
// stop strings), so the outputs carry final text deltas; there is no separate detokenizer
// process or thread here.
//
// Failures (node 0's ServerSupervisor drives them): set_recovering() makes new requests 503 +
// Retry-After while the scheduler ranks restart; fail_requests() ends live requests with a 503
// (streams: an error event); under plain DP set_dp_group_down() fails only that group's requests
// (the controller's DpDispatchNotice tells which group each request went to) and routes around
// it until set_dp_group_up(). With --dp-size > 1 the data parallel controller may die and be
// restarted: set_controller_down() makes new requests 503 + Retry-After; fail_undispatched()
// ends the requests the dead controller had not dispatched yet (those it dispatched run on in
// their groups, whose outputs come here directly); set_controller_up() tells the new controller
// the groups that are down and aborts what the clients dropped meanwhile, then serves again.
// health() is what /health answers.
//
// Thread safety: every public method may be called from any thread.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "dpserve/ipc/io_struct.h"
#include "dpserve/ipc/zmq_socket.h"
#include "dpserve/openai/metrics.h"
#include "dpserve/sampling/sampling_params.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {

// The scheduler's limits, from its readiness message.
struct SchedulerInfo {
  int64_t context_length = 0;        // longest sequence (prompt + output) in tokens
  int64_t max_total_tokens = 0;      // usable KV pool size in tokens
  int64_t page_size = 1;             // tokens per KV page
  int64_t vocab_size = 0;            // model vocabulary size
  int64_t max_running_requests = 0;  // most sequences decoding at once

  // Reads the readiness payload; throws dpserve::Error on a missing field.
  static SchedulerInfo from_json(const nlohmann::json& j);
  // The payload form (what the scheduler process sends).
  nlohmann::json to_json() const;
};

// One prompt of a generate call (SGLang's GenerateReqInput, one element).
struct GenerateReqInput {
  std::optional<std::string> text{};  // prompt text (special tokens added); else input_ids
  std::vector<int32_t> input_ids{};   // prompt token ids, used when text is absent
  SamplingParams sampling_params{};   // validated by generate()
  bool stream = false;                // the client streams (passed on for logs)
  std::string rid{};                  // request id; empty = a fresh random one
  int32_t data_parallel_rank = -1;    // DP group to run on (--dp-size > 1); -1 = the controller's
};

// One output event of a generate call.
struct GenerateChunk {
  int64_t seq = 0;  // flat sequence index: prompts in order, each with its n completions
  TokenIdOut out;   // what the scheduler sent for that sequence
};

// The accumulated output of one sequence (non-streaming answers and cumulative stream chunks).
struct SequenceOutput {
  std::string rid;                                           // request id of its prompt
  int64_t index = 0;                                         // completion index in [0, n)
  std::string text;                                          // generated text so far
  std::vector<int32_t> output_ids;                           // generated tokens so far
  std::vector<float> output_logprobs;                        // per token (return_logprob)
  std::vector<std::vector<TopLogprob>> output_top_logprobs;  // per token (top_logprobs_num)
  bool finished = false;                                     // the last output arrived
  nlohmann::json finish_reason;                              // SGLang's object; null until finished
  int64_t prompt_tokens = 0;                                 // prompt length
  int64_t completion_tokens = 0;                             // tokens generated so far
  int64_t cached_tokens = 0;                                 // prompt tokens from the prefix cache

  // Appends one scheduler output of this sequence.
  void add(const TokenIdOut& out);
};

class TokenizerManager;

// What /health reports: whether the server serves, and if not, which state it is in and why.
struct HealthStatus {
  bool ok = true;         // serving: /health answers 200
  std::string state;      // "serving", "recovering", "draining" or "dead"
  std::string message;    // why it does not serve (empty when it does)
  int retry_after_s = 0;  // Retry-After hint for 503 answers; 0 = none
};

// The live state of one generate call, shared by the handler and the receiver thread. Dropping
// it before every sequence finished aborts the unfinished requests.
class GenerateHandle {
 public:
  ~GenerateHandle();
  GenerateHandle(const GenerateHandle&) = delete;
  GenerateHandle& operator=(const GenerateHandle&) = delete;

  // Waits up to `timeout` for outputs and returns all that arrived (empty on timeout or when
  // done). Throws ApiError 503 when the scheduler died or the server is going away.
  std::vector<GenerateChunk> next(std::chrono::milliseconds timeout);
  // True when every sequence finished and all chunks were taken.
  bool done() const;
  // Aborts every unfinished request of this call (their final chunks still arrive).
  void abort();

  // Number of sequences (sum over prompts of n).
  int64_t num_sequences() const { return static_cast<int64_t>(seq_prompt_.size()); }
  // Number of prompts.
  int64_t num_prompts() const { return static_cast<int64_t>(rids_.size()); }
  // The prompt a sequence belongs to.
  int64_t prompt_of(int64_t seq) const { return seq_prompt_.at(static_cast<size_t>(seq)); }
  // Request id of each prompt.
  const std::vector<std::string>& rids() const { return rids_; }
  // Token ids of each prompt.
  const std::vector<std::vector<int32_t>>& input_ids() const { return input_ids_; }
  // When generate() accepted the call.
  std::chrono::steady_clock::time_point created() const { return created_; }
  // Seconds since created().
  double elapsed_seconds() const;

 private:
  friend class TokenizerManager;
  GenerateHandle() = default;
  // Called by the receiver thread; with notify false the caller wakes the waiter (cv_) later.
  void push(const TokenIdOut& out, bool notify = true);
  void fail(const std::string& message, int retry_after_s = 0);

  TokenizerManager* manager_ = nullptr;
  std::weak_ptr<GenerateHandle> self_;  // lets the receiver pin the handle outside the lock
  std::vector<std::string> rids_;
  std::vector<std::vector<int32_t>> input_ids_;
  std::vector<int64_t> seq_prompt_;                // seq -> prompt
  std::unordered_map<std::string, int64_t> base_;  // rid -> first seq of its prompt
  std::chrono::steady_clock::time_point created_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerateChunk> queue_;
  std::vector<bool> seq_finished_;
  int64_t num_finished_ = 0;
  std::optional<std::string> error_;
  int retry_after_s_ = 0;  // sent with error_'s 503 (0 = no Retry-After)
  // Per sequence, when the manager records metrics: timing and token counters.
  std::vector<RequestMetricsRecorder> recorders_;
  // Per sequence: the last output seen (for an abort's final metrics).
  std::vector<TokenIdOut> last_out_;
};

class TokenizerManager {
 public:
  // `to_scheduler` (PUSH) and `from_scheduler` (PULL) are bound or connected already;
  // `context_length` > 0 caps the scheduler's. Starts the receiver thread.
  TokenizerManager(std::shared_ptr<const Tokenizer> tokenizer, SchedulerInfo info,
                   MessageSocket to_scheduler, MessageSocket from_scheduler,
                   int64_t context_length = 0, bool log_requests = false);
  ~TokenizerManager();
  TokenizerManager(const TokenizerManager&) = delete;
  TokenizerManager& operator=(const TokenizerManager&) = delete;

  // Tokenizes and validates every prompt (ApiError 400 naming the problem and the prompt's
  // position in a batch; 503 when not accepting), then sends them all to the scheduler.
  std::shared_ptr<GenerateHandle> generate(std::vector<GenerateReqInput> inputs);

  // Asks the scheduler to drop its prefix cache; returns its answer (success, message).
  FlushCacheResp flush_cache(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // The scheduler's runtime facts as a JSON object; ApiError 503 when it does not answer.
  nlohmann::json scheduler_server_info(
      std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Sends a one-token probe to each of `dp_size` DP groups (pinned with data_parallel_rank; one
  // unpinned probe when dp_size is 1) and returns the groups whose probe produced no token within
  // `timeout` (empty = healthy). With one group any output that arrives meanwhile also counts.
  std::vector<int32_t> health_generate(
      int dp_size, std::chrono::milliseconds timeout = std::chrono::seconds(20));

  // Aborts one request by rid (no-op when it is not live).
  void abort(const std::string& rid);
  // Aborts every live request (graceful shutdown).
  void abort_all();
  // Stops accepting requests: generate() answers 503 from now on.
  void stop_accepting();
  // Marks the scheduler dead: every waiting handle and later call fails with `reason` (503).
  void set_scheduler_dead(const std::string& reason);
  // Recovery of the scheduler ranks: while set, generate() and control requests answer 503
  // with `reason` and Retry-After `retry_after_s`, /health says "recovering", and nothing is
  // sent to the (restarting) scheduler; nullopt ends it (serving again).
  void set_recovering(std::optional<std::string> reason, int retry_after_s = 0);
  // Ends every live request of DP group `dp_rank` (every live request with -1) with a 503
  // naming `reason` (streams get an error event, then [DONE]); their rids are forgotten, so
  // nothing is aborted later. Returns how many requests failed.
  int64_t fail_requests(int32_t dp_rank, const std::string& reason, int retry_after_s = 0);
  // Plain DP: DP group `dp_rank` is down (its ranks restart): its live requests fail, requests
  // pinned to it get 503 + Retry-After, the DataParallelController routes around it. Until
  // set_dp_group_up, whose controller message puts it back in the rotation.
  void set_dp_group_down(int32_t dp_rank, const std::string& reason, int retry_after_s = 0);
  // The restarted DP group `dp_rank` serves again.
  void set_dp_group_up(int32_t dp_rank);
  // The data parallel controller died and restarts: until set_controller_up, generate() and
  // control requests answer 503 with `reason` and Retry-After `retry_after_s`, /health says
  // "recovering", and nothing is sent to the controller (aborts wait for the new one).
  void set_controller_down(const std::string& reason, int retry_after_s);
  // Ends every live request whose dispatch to a DP group the controller never told (lost in the
  // dead controller's queues) with a 503 naming `reason`; they are aborted in the groups once
  // the controller is back, in case one was dispatched after all. Returns how many failed.
  int64_t fail_undispatched(const std::string& reason, int retry_after_s);
  // The restarted controller is ready: sends it the DP groups that are down (DpGroupState) and
  // the aborts held back meanwhile, then serves again. False when it cannot be reached.
  bool set_controller_up();
  // The serving state for /health.
  HealthStatus health() const;
  // Stops the receiver thread (idempotent; also done by the destructor).
  void shutdown();
  // Records every later request's metrics (TTFT, inter-token latency, e2e latency, token
  // counters, aborts) into `metrics`, which must outlive the manager; nullptr stops recording.
  void set_metrics(ServingMetrics* metrics) { metrics_.store(metrics); }

  // True while the scheduler is alive and requests are accepted (health().ok).
  bool healthy() const {
    return !dead_.load() && accepting_.load() && !recovering_.load() && !controller_down_.load();
  }
  // Number of live (unfinished) requests.
  int64_t num_live_requests() const;
  // Number of generate calls whose handle is still held (responses still being written).
  int64_t num_open_handles() const { return open_handles_.load(); }
  // The scheduler's limits in use (context_length already capped).
  const SchedulerInfo& info() const { return info_; }
  // The tokenizer.
  const Tokenizer& tokenizer() const { return *tokenizer_; }

 private:
  friend class GenerateHandle;
  std::vector<int32_t> tokenize(const GenerateReqInput& in, const std::string& where) const;
  void validate(const std::vector<int32_t>& ids, SamplingParams& params,
                const std::string& where) const;
  std::string new_rid();
  bool send(const Message& msg);
  void release(GenerateHandle* handle, bool abort_unfinished);
  void receive_loop();
  void on_dispatch_notice(const DpDispatchNotice& notice);
  void forget_rid(const std::string& rid);  // under mu_
  void throw_if_unavailable() const;        // under mu_
  void throw_if_down() const;               // dead, recovering or controller down; under mu_
  Message control(const Message& request, std::chrono::milliseconds timeout);

  std::shared_ptr<const Tokenizer> tokenizer_;
  SchedulerInfo info_;
  bool log_requests_;

  std::mutex send_mu_;
  MessageSocket to_scheduler_;
  MessageSocket from_scheduler_;  // used by the receiver thread only

  mutable std::mutex mu_;
  std::unordered_map<std::string, GenerateHandle*> live_;  // rid -> its call's handle
  std::atomic<uint64_t> rid_counter_{0};
  uint64_t rid_salt_ = 0;

  std::mutex control_mu_;  // one control request at a time
  std::mutex control_resp_mu_;
  std::condition_variable control_cv_;
  std::optional<Message> control_resp_;

  std::atomic<bool> accepting_{true};
  std::atomic<bool> dead_{false};
  std::string dead_reason_;  // guarded by mu_
  std::atomic<bool> recovering_{false};
  std::string recovery_reason_;  // guarded by mu_
  int retry_after_s_ = 0;        // guarded by mu_: Retry-After while recovering
  // Plain DP, guarded by mu_: the DP group of each live request (from the controller's
  // dispatch notices or the request's own data_parallel_rank), and the groups that are down
  // (dp rank -> (reason, Retry-After)).
  std::unordered_map<std::string, int32_t> rid_group_;
  std::unordered_map<int32_t, std::pair<std::string, int>> down_groups_;
  // Live requests the controller told it dispatched (DpDispatchNotice), guarded by mu_.
  std::unordered_set<std::string> dispatched_;
  // The controller is restarting (set_controller_down): its reason and Retry-After, and the
  // rids to abort once it is back (guarded by mu_).
  std::atomic<bool> controller_down_{false};
  std::string controller_reason_;
  int controller_retry_after_s_ = 0;
  std::vector<std::string> pending_aborts_;
  bool pending_abort_all_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> last_receive_ns_{0};
  std::atomic<int64_t> open_handles_{0};
  std::atomic<ServingMetrics*> metrics_{nullptr};
  std::thread receiver_;
};

}  // namespace dpserve
