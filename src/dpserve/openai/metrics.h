#pragma once
// A small Prometheus registry (counters, gauges, fixed-bucket histograms, labels; thread-safe)
// that renders the text exposition format 0.0.4, and SGLang's serving metrics on top of it:
//
//   sglang:prompt_tokens_total, sglang:generation_tokens_total, sglang:cached_tokens_total,
//   sglang:num_requests_total, sglang:num_aborted_requests_total            (counters)
//   sglang:time_to_first_token_seconds, sglang:inter_token_latency_seconds,
//   sglang:e2e_request_latency_seconds                                      (histograms)
//   sglang:num_running_reqs, sglang:num_queue_reqs, sglang:num_used_tokens, sglang:token_usage,
//   sglang:cache_hit_rate, sglang:gen_throughput                             (gauges)
//
// every series labelled {model_name="<served name>"} as SGLang does.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace dpserve {

// Label name/value pairs of one series, in output order.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// A monotonically increasing value.
class Counter {
 public:
  // Adds v (>= 0).
  void inc(double v = 1.0);
  // The current value.
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down.
class Gauge {
 public:
  // Sets the value.
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  // Adds v (may be negative).
  void inc(double v = 1.0) { value_.fetch_add(v, std::memory_order_relaxed); }
  // The current value.
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted into fixed buckets (upper bounds, ascending; +Inf is implicit).
class Histogram {
 public:
  // A consistent copy of the state.
  struct Snapshot {
    std::vector<double> bounds;     // upper bounds, without +Inf
    std::vector<uint64_t> buckets;  // cumulative counts per bound, then +Inf (== count)
    double sum = 0.0;               // sum of observed values
    uint64_t count = 0;             // number of observations
  };

  // bounds: strictly increasing finite upper bounds.
  explicit Histogram(std::vector<double> bounds);
  // Records `count` observations of value v.
  void observe(double v, uint64_t count = 1);
  // The state, cumulative as Prometheus shows it.
  Snapshot snapshot() const;

 private:
  const std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // per bucket (non-cumulative), last = +Inf
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

// Named metric families with labelled series; renders Prometheus text format 0.0.4.
// Getting a series twice returns the same object; references stay valid for the registry's life.
class MetricsRegistry {
 public:
  // Content-Type of render()'s output.
  static constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

  MetricsRegistry();
  ~MetricsRegistry();

  // The counter series `name{labels}` (created on first use; help is set by the first call).
  Counter& counter(const std::string& name, const std::string& help,
                   const MetricLabels& labels = {});
  // The gauge series `name{labels}`.
  Gauge& gauge(const std::string& name, const std::string& help, const MetricLabels& labels = {});
  // The histogram series `name{labels}`; all series of a family share the first call's bounds.
  Histogram& histogram(const std::string& name, const std::string& help,
                       const std::vector<double>& bounds, const MetricLabels& labels = {});

  // All families in registration order: # HELP, # TYPE, then each series (histograms as
  // cumulative _bucket{...,le="..."}, _sum, _count).
  std::string render() const;

 private:
  struct Family;
  Family& family(const std::string& name, const std::string& help, int type,
                 const std::vector<double>* bounds);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Family>> families_;  // in registration order
  std::map<std::string, Family*> by_name_;         // name -> family
};

// Formats a sample value as Prometheus does: "+Inf", "-Inf", "NaN", else the shortest decimal.
std::string format_metric_value(double v);

// Escapes a label value (backslash, double quote, newline).
std::string escape_label_value(const std::string& v);

// Scheduler-side state that /metrics shows as gauges (SGLang's scheduler stats; named apart from
// managers/scheduler.h's SchedulerStats counters).
struct SchedulerGauges {
  int64_t num_running_reqs = 0;  // requests decoding
  int64_t num_queue_reqs = 0;    // requests waiting
  int64_t num_used_tokens = 0;   // KV tokens in use
  double token_usage = 0.0;      // used / total KV tokens
  double cache_hit_rate = 0.0;   // prefix-cache hit rate
  double gen_throughput = 0.0;   // generated tokens/s
};

// SGLang's serving metrics for one served model, registered on a registry.
class ServingMetrics {
 public:
  // Default histogram bounds (seconds).
  static const std::vector<double>& ttft_buckets();
  static const std::vector<double>& inter_token_buckets();
  static const std::vector<double>& e2e_buckets();

  // Registers every series with the label model_name=model_name.
  ServingMetrics(MetricsRegistry& registry, const std::string& model_name);

  // Sets the scheduler gauges.
  void set_scheduler_stats(const SchedulerGauges& s);

  Counter& prompt_tokens;          // sglang:prompt_tokens_total
  Counter& generation_tokens;      // sglang:generation_tokens_total
  Counter& cached_tokens;          // sglang:cached_tokens_total
  Counter& num_requests;           // sglang:num_requests_total
  Counter& num_aborted_requests;   // sglang:num_aborted_requests_total
  Histogram& time_to_first_token;  // sglang:time_to_first_token_seconds
  Histogram& inter_token_latency;  // sglang:inter_token_latency_seconds
  Histogram& e2e_request_latency;  // sglang:e2e_request_latency_seconds
  Gauge& num_running_reqs;         // sglang:num_running_reqs
  Gauge& num_queue_reqs;           // sglang:num_queue_reqs
  Gauge& num_used_tokens;          // sglang:num_used_tokens
  Gauge& token_usage;              // sglang:token_usage
  Gauge& cache_hit_rate;           // sglang:cache_hit_rate
  Gauge& gen_throughput;           // sglang:gen_throughput
};

// Per-sequence timing as SGLang's TokenizerManager records it: TTFT at the first output with
// tokens; for each later output, the gap since the previous output divided by its new tokens,
// observed once per new token (inter-token latency); end-to-end latency and the token counters
// at finish. One recorder per generated sequence (n > 1 means n recorders). Not thread-safe:
// a sequence's outputs arrive in order on one thread.
class RequestMetricsRecorder {
 public:
  using Clock = std::chrono::steady_clock;

  // start: when the request arrived.
  explicit RequestMetricsRecorder(ServingMetrics& metrics, Clock::time_point start = Clock::now());

  // An output arrived with `completion_tokens` generated so far (cumulative).
  void on_output(int64_t completion_tokens, Clock::time_point now = Clock::now());

  // The sequence ended: records its last tokens, e2e latency and counters once (later calls are
  // ignored). aborted also counts sglang:num_aborted_requests_total.
  void on_finish(int64_t prompt_tokens, int64_t completion_tokens, int64_t cached_tokens = 0,
                 bool aborted = false, Clock::time_point now = Clock::now());

 private:
  ServingMetrics& metrics_;
  Clock::time_point start_;  // arrival
  Clock::time_point last_;   // time of the previous output with tokens
  int64_t last_tokens_ = 0;  // completion tokens at the previous output
  bool finished_ = false;    // on_finish ran
};

}  // namespace dpserve
