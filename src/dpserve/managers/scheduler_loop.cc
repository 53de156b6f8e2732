// The scheduler's event loop (SGLang's event_loop_normal: receive, process input, step, send) and
// its watchdog thread (a step running longer than watchdog_timeout is reported).

#include <chrono>

#include <spdlog/spdlog.h>

#include "dpserve/common/errors.h"
#include "dpserve/managers/scheduler.h"

namespace dpserve {

void Scheduler::submit(GenerateRequest request) {
  {
    std::lock_guard<std::mutex> lock(input_mu_);
    input_queue_.emplace_back(std::move(request));
  }
  input_cv_.notify_one();
}

void Scheduler::submit_abort(const std::string& rid) {
  {
    std::lock_guard<std::mutex> lock(input_mu_);
    input_queue_.emplace_back(AbortMsg{rid});
  }
  input_cv_.notify_one();
}

void Scheduler::process_input_queue() {
  std::vector<InputMsg> msgs;
  {
    std::lock_guard<std::mutex> lock(input_mu_);
    msgs.swap(input_queue_);
  }
  for (InputMsg& m : msgs) {
    if (auto* abort = std::get_if<AbortMsg>(&m)) {
      abort_request(abort->rid);
      continue;
    }
    auto& req = std::get<GenerateRequest>(m);
    const std::string rid = req.rid;
    const int64_t n = std::max<int64_t>(req.sampling_params.n, 1);
    const auto prompt_len = static_cast<int64_t>(req.input_ids.size());
    try {
      add_request(std::move(req));
    } catch (const Error& e) {
      spdlog::warn("[{}] rejected: {}", rid, e.what());
      for (int64_t i = 0; i < n; ++i) {
        RequestOutput out;
        out.rid = rid;
        out.index = i;
        out.finished = true;
        out.finish_reason = FinishReason::abort(e.what());
        out.prompt_tokens = prompt_len;
        pending_outputs_.push_back(std::move(out));
      }
    }
  }
}

void Scheduler::run_event_loop() {
  while (!stop_loop_.load()) {
    process_input_queue();
    if (!has_work()) {
      // Idle: the memory accounting must balance (SGLang's self_check_during_idle).
      if (const std::string report = check_memory(); !report.empty()) {
        spdlog::error("scheduler: memory check failed at idle: {}", report);
      }
      std::unique_lock<std::mutex> lock(input_mu_);
      input_cv_.wait(lock, [&] { return stop_loop_.load() || !input_queue_.empty(); });
      continue;
    }
    std::vector<RequestOutput> out = step();
    if (!out.empty() && output_callback_) output_callback_(std::move(out));
  }
}

void Scheduler::start_event_loop() {
  DPSERVE_CHECK(!loop_thread_.joinable(), "event loop already started");
  stop_loop_.store(false);
  loop_thread_ = std::thread([this] { run_event_loop(); });
}

void Scheduler::stop_event_loop() {
  {
    std::lock_guard<std::mutex> lock(input_mu_);
    stop_loop_.store(true);
  }
  input_cv_.notify_all();
  if (loop_thread_.joinable()) loop_thread_.join();
}

void Scheduler::set_watchdog_callback(WatchdogCallback cb) {
  std::lock_guard<std::mutex> lock(watchdog_mu_);
  watchdog_callback_ = std::move(cb);
}

void Scheduler::watchdog_loop() {
  const double timeout = config_.watchdog_timeout;
  const auto period = std::chrono::duration<double>(std::min(timeout / 4.0, 1.0));
  int64_t reported_step = 0;
  std::unique_lock<std::mutex> lock(watchdog_mu_);
  while (!watchdog_stop_) {
    watchdog_cv_.wait_for(lock, period);
    if (watchdog_stop_) break;
    const int64_t step = step_counter_.load();
    const int64_t started = step_started_ns_.load();
    if (started == 0 || step == reported_step || step != step_counter_.load()) continue;
    const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::steady_clock::now().time_since_epoch())
                            .count();
    const double seconds = static_cast<double>(now - started) / 1e9;
    if (seconds <= timeout) continue;
    reported_step = step;
    watchdog_reports_.fetch_add(1);
    const int64_t bs = step_batch_size_.load();
    const std::string what = bs == 0 ? std::string("scheduling")
                                     : fmt::format("{} batch of {} sequences, {} tokens",
                                                   step_is_decode_.load() ? "decode" : "prefill",
                                                   bs, step_num_tokens_.load());
    spdlog::error(
        "watchdog: scheduler step {} ({}) has been running for {:.2f} s (watchdog_timeout {} s)",
        step, what, seconds, timeout);
    if (watchdog_callback_) watchdog_callback_(step, seconds);
  }
}

}  // namespace dpserve
