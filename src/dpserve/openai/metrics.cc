// Prometheus registry and text exposition, and SGLang's serving metrics.

#include "dpserve/openai/metrics.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "dpserve/common/errors.h"

namespace dpserve {
namespace {

enum Type { kCounter = 0, kGauge = 1, kHistogram = 2 };
const char* const kTypeNames[] = {"counter", "gauge", "histogram"};

bool valid_name(const std::string& s, bool allow_colon) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                    (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

std::string escape_help(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// `{a="x",b="y"}` with an optional extra label last; "" for no labels.
std::string label_text(const MetricLabels& labels, const char* extra_name = nullptr,
                       const std::string& extra_value = "") {
  if (labels.empty() && !extra_name) return "";
  std::string out = "{";
  for (const auto& [k, v] : labels) {
    if (out.size() > 1) out += ',';
    out += k + "=\"" + escape_label_value(v) + "\"";
  }
  if (extra_name) {
    if (out.size() > 1) out += ',';
    out += std::string(extra_name) + "=\"" + escape_label_value(extra_value) + "\"";
  }
  return out + "}";
}

}  // namespace

std::string format_metric_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

std::string escape_label_value(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// ---- series ----

void Counter::inc(double v) {
  DPSERVE_CHECK(v >= 0.0, "counter increment {} < 0", v);
  value_.fetch_add(v, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    DPSERVE_CHECK(std::isfinite(bounds_[i]) && (i == 0 || bounds_[i] > bounds_[i - 1]),
                  "histogram bounds must be finite and strictly increasing");
  }
}

void Histogram::observe(double v, uint64_t count) {
  // Bucket i holds values <= bounds_[i] (Prometheus' "le"); past the last bound: +Inf.
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  std::lock_guard<std::mutex> lock(mu_);
  counts_[i] += count;
  sum_ += v * static_cast<double>(count);
  count_ += count;
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.bounds = bounds_;
  std::lock_guard<std::mutex> lock(mu_);
  s.buckets.resize(counts_.size());
  uint64_t acc = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    acc += counts_[i];
    s.buckets[i] = acc;
  }
  s.sum = sum_;
  s.count = count_;
  return s;
}

// ---- registry ----

struct MetricsRegistry::Family {
  std::string name;                 // metric name
  std::string help;                 // HELP text
  int type = kCounter;              // Type
  std::vector<double> bounds;       // histogram bounds
  std::vector<MetricLabels> order;  // series in creation order
  std::map<MetricLabels, std::unique_ptr<Counter>> counters;
  std::map<MetricLabels, std::unique_ptr<Gauge>> gauges;
  std::map<MetricLabels, std::unique_ptr<Histogram>> histograms;
};

MetricsRegistry::MetricsRegistry() = default;
MetricsRegistry::~MetricsRegistry() = default;

MetricsRegistry::Family& MetricsRegistry::family(const std::string& name, const std::string& help,
                                                 int type, const std::vector<double>* bounds) {
  DPSERVE_CHECK(valid_name(name, true), "invalid metric name '{}'", name);
  auto it = by_name_.find(name);
  if (it != by_name_.end()) {
    DPSERVE_CHECK(it->second->type == type, "metric '{}' registered as {} and {}", name,
                  kTypeNames[it->second->type], kTypeNames[type]);
    return *it->second;
  }
  auto f = std::make_unique<Family>();
  f->name = name;
  f->help = help;
  f->type = type;
  if (bounds) f->bounds = *bounds;
  Family* raw = f.get();
  families_.push_back(std::move(f));
  by_name_[name] = raw;
  return *raw;
}

namespace {
void check_labels(const MetricLabels& labels, bool histogram) {
  for (const auto& [k, v] : labels) {
    DPSERVE_CHECK(valid_name(k, false) && k.rfind("__", 0) != 0, "invalid label name '{}'", k);
    DPSERVE_CHECK(!(histogram && k == "le"), "label 'le' is reserved for histogram buckets");
  }
}
}  // namespace

Counter& MetricsRegistry::counter(const std::string& name, const std::string& help,
                                  const MetricLabels& labels) {
  check_labels(labels, false);
  std::lock_guard<std::mutex> lock(mu_);
  Family& f = family(name, help, kCounter, nullptr);
  auto& slot = f.counters[labels];
  if (!slot) {
    slot = std::make_unique<Counter>();
    f.order.push_back(labels);
  }
  return *slot;
}

Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help,
                              const MetricLabels& labels) {
  check_labels(labels, false);
  std::lock_guard<std::mutex> lock(mu_);
  Family& f = family(name, help, kGauge, nullptr);
  auto& slot = f.gauges[labels];
  if (!slot) {
    slot = std::make_unique<Gauge>();
    f.order.push_back(labels);
  }
  return *slot;
}

Histogram& MetricsRegistry::histogram(const std::string& name, const std::string& help,
                                      const std::vector<double>& bounds,
                                      const MetricLabels& labels) {
  check_labels(labels, true);
  std::lock_guard<std::mutex> lock(mu_);
  Family& f = family(name, help, kHistogram, &bounds);
  auto& slot = f.histograms[labels];
  if (!slot) {
    slot = std::make_unique<Histogram>(f.bounds);
    f.order.push_back(labels);
  }
  return *slot;
}

std::string MetricsRegistry::render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& f : families_) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", f->name, escape_help(f->help), f->name,
                       kTypeNames[f->type]);
    for (const MetricLabels& labels : f->order) {
      if (f->type == kCounter) {
        out += fmt::format("{}{} {}\n", f->name, label_text(labels),
                           format_metric_value(f->counters.at(labels)->value()));
      } else if (f->type == kGauge) {
        out += fmt::format("{}{} {}\n", f->name, label_text(labels),
                           format_metric_value(f->gauges.at(labels)->value()));
      } else {
        const Histogram::Snapshot s = f->histograms.at(labels)->snapshot();
        for (size_t i = 0; i < s.buckets.size(); ++i) {
          const std::string le =
              i < s.bounds.size() ? format_metric_value(s.bounds[i]) : std::string("+Inf");
          out +=
              fmt::format("{}_bucket{} {}\n", f->name, label_text(labels, "le", le), s.buckets[i]);
        }
        out +=
            fmt::format("{}_sum{} {}\n", f->name, label_text(labels), format_metric_value(s.sum));
        out += fmt::format("{}_count{} {}\n", f->name, label_text(labels), s.count);
      }
    }
  }
  return out;
}

// ---- SGLang's serving metrics ----

const std::vector<double>& ServingMetrics::ttft_buckets() {
  static const std::vector<double> b = {0.001, 0.005, 0.01, 0.02, 0.04,  0.06, 0.08, 0.1,
                                        0.25,  0.5,   0.75, 1.0,  2.5,   5.0,  7.5,  10.0,
                                        15.0,  20.0,  30.0, 60.0, 120.0, 300.0};
  return b;
}

const std::vector<double>& ServingMetrics::inter_token_buckets() {
  static const std::vector<double> b = {0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015,
                                        0.02,   0.025, 0.03,  0.04,  0.05,  0.075, 0.1,  0.15,
                                        0.2,    0.3,   0.4,   0.5,   0.75,  1.0,   2.5,  5.0};
  return b;
}

const std::vector<double>& ServingMetrics::e2e_buckets() {
  static const std::vector<double> b = {0.01, 0.025, 0.05,  0.1,   0.25,   0.5,   1.0,  2.0,
                                        4.0,  6.0,   8.0,   10.0,  15.0,   20.0,  30.0, 40.0,
                                        60.0, 120.0, 300.0, 600.0, 1200.0, 2400.0};
  return b;
}

ServingMetrics::ServingMetrics(MetricsRegistry& r, const std::string& model_name)
    : prompt_tokens(r.counter("sglang:prompt_tokens_total", "Number of prefill tokens processed.",
                              {{"model_name", model_name}})),
      generation_tokens(r.counter("sglang:generation_tokens_total",
                                  "Number of generation tokens processed.",
                                  {{"model_name", model_name}})),
      cached_tokens(r.counter("sglang:cached_tokens_total",
                              "Number of cached prompt tokens (prefix cache hits).",
                              {{"model_name", model_name}})),
      num_requests(r.counter("sglang:num_requests_total", "Number of requests processed.",
                             {{"model_name", model_name}})),
      num_aborted_requests(r.counter("sglang:num_aborted_requests_total",
                                     "Number of requests aborted.", {{"model_name", model_name}})),
      time_to_first_token(r.histogram("sglang:time_to_first_token_seconds",
                                      "Histogram of time to first token in seconds.",
                                      ttft_buckets(), {{"model_name", model_name}})),
      inter_token_latency(r.histogram("sglang:inter_token_latency_seconds",
                                      "Histogram of inter-token latency in seconds.",
                                      inter_token_buckets(), {{"model_name", model_name}})),
      e2e_request_latency(r.histogram("sglang:e2e_request_latency_seconds",
                                      "Histogram of End-to-end request latency in seconds",
                                      e2e_buckets(), {{"model_name", model_name}})),
      num_running_reqs(r.gauge("sglang:num_running_reqs", "The number of running requests.",
                               {{"model_name", model_name}})),
      num_queue_reqs(r.gauge("sglang:num_queue_reqs",
                             "The number of requests in the waiting queue.",
                             {{"model_name", model_name}})),
      num_used_tokens(r.gauge("sglang:num_used_tokens", "The number of used KV cache tokens.",
                              {{"model_name", model_name}})),
      token_usage(r.gauge("sglang:token_usage", "The token usage (used / total KV tokens).",
                          {{"model_name", model_name}})),
      cache_hit_rate(r.gauge("sglang:cache_hit_rate", "The prefix cache hit rate.",
                             {{"model_name", model_name}})),
      gen_throughput(r.gauge("sglang:gen_throughput", "The generation throughput (token/s).",
                             {{"model_name", model_name}})) {}

void ServingMetrics::set_scheduler_stats(const SchedulerGauges& s) {
  num_running_reqs.set(static_cast<double>(s.num_running_reqs));
  num_queue_reqs.set(static_cast<double>(s.num_queue_reqs));
  num_used_tokens.set(static_cast<double>(s.num_used_tokens));
  token_usage.set(s.token_usage);
  cache_hit_rate.set(s.cache_hit_rate);
  gen_throughput.set(s.gen_throughput);
}

RequestMetricsRecorder::RequestMetricsRecorder(ServingMetrics& metrics, Clock::time_point start)
    : metrics_(metrics), start_(start), last_(start) {}

void RequestMetricsRecorder::on_output(int64_t completion_tokens, Clock::time_point now) {
  if (finished_ || completion_tokens <= last_tokens_) return;
  if (last_tokens_ == 0) {
    metrics_.time_to_first_token.observe(std::chrono::duration<double>(now - start_).count());
  } else {
    const int64_t n = completion_tokens - last_tokens_;
    const double gap = std::chrono::duration<double>(now - last_).count();
    metrics_.inter_token_latency.observe(gap / static_cast<double>(n), static_cast<uint64_t>(n));
  }
  last_ = now;
  last_tokens_ = completion_tokens;
}

void RequestMetricsRecorder::on_finish(int64_t prompt_tokens, int64_t completion_tokens,
                                       int64_t cached_tokens, bool aborted, Clock::time_point now) {
  if (finished_) return;
  on_output(completion_tokens, now);
  finished_ = true;
  metrics_.e2e_request_latency.observe(std::chrono::duration<double>(now - start_).count());
  metrics_.prompt_tokens.inc(static_cast<double>(std::max<int64_t>(prompt_tokens, 0)));
  metrics_.generation_tokens.inc(static_cast<double>(std::max<int64_t>(completion_tokens, 0)));
  metrics_.cached_tokens.inc(static_cast<double>(std::max<int64_t>(cached_tokens, 0)));
  metrics_.num_requests.inc();
  if (aborted) metrics_.num_aborted_requests.inc();
}

}  // namespace dpserve
