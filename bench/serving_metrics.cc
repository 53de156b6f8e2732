#include "serving_metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>

#include <fmt/format.h>

namespace dpserve::bench {

using nlohmann::json;

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = rank - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

Distribution summarize_ms(std::vector<double> seconds) {
  Distribution d;
  if (seconds.empty()) return d;
  for (double& s : seconds) s *= 1000.0;
  std::sort(seconds.begin(), seconds.end());
  const double n = static_cast<double>(seconds.size());
  d.count = static_cast<int64_t>(seconds.size());
  d.mean = std::accumulate(seconds.begin(), seconds.end(), 0.0) / n;
  double var = 0;
  for (double s : seconds) var += (s - d.mean) * (s - d.mean);
  d.std = std::sqrt(var / n);
  d.median = percentile(seconds, 50);
  d.p90 = percentile(seconds, 90);
  d.p95 = percentile(seconds, 95);
  d.p99 = percentile(seconds, 99);
  d.max = seconds.back();
  return d;
}

json Distribution::to_json() const {
  return {{"count", count}, {"mean", mean}, {"median", median}, {"std", std},
          {"p90", p90},     {"p95", p95},   {"p99", p99},       {"max", max}};
}

BenchmarkMetrics compute_metrics(const std::vector<RequestOutput>& outputs, double duration_s,
                                 int64_t max_concurrent_requests) {
  BenchmarkMetrics m;
  m.duration_s = duration_s;
  m.max_concurrent_requests = max_concurrent_requests;
  std::vector<double> ttft, tpot, itl, e2e;
  std::map<int64_t, int64_t> tokens_per_second;  // 1-second window -> output tokens
  double latency_sum = 0;
  for (const RequestOutput& o : outputs) {
    if (!o.success) {
      ++m.failed;
      continue;
    }
    ++m.completed;
    m.total_input += o.prompt_len;
    m.total_output += o.output_len;
    m.total_output_expected += o.expected_output_len;
    if (o.output_len != o.expected_output_len) ++m.wrong_output_len;
    m.total_cached += o.cached_tokens;
    ttft.push_back(o.ttft);
    e2e.push_back(o.latency);
    if (o.output_len > 1) tpot.push_back(o.tpot());
    itl.insert(itl.end(), o.itl.begin(), o.itl.end());
    latency_sum += o.latency;
    for (const auto& [t, n] : o.chunks) tokens_per_second[static_cast<int64_t>(t)] += n;
  }
  if (duration_s > 0) {
    m.request_throughput = static_cast<double>(m.completed) / duration_s;
    m.input_throughput = static_cast<double>(m.total_input) / duration_s;
    m.output_throughput = static_cast<double>(m.total_output) / duration_s;
    m.total_throughput = static_cast<double>(m.total_input + m.total_output) / duration_s;
    m.concurrency = latency_sum / duration_s;
  }
  for (const auto& [second, n] : tokens_per_second) {
    m.max_output_tokens_per_s = std::max(m.max_output_tokens_per_s, static_cast<double>(n));
  }
  m.ttft = summarize_ms(std::move(ttft));
  m.tpot = summarize_ms(std::move(tpot));
  m.itl = summarize_ms(std::move(itl));
  m.e2e = summarize_ms(std::move(e2e));
  return m;
}

json BenchmarkMetrics::to_json() const {
  return {{"completed", completed},
          {"failed", failed},
          {"total_input_tokens", total_input},
          {"total_output_tokens", total_output},
          {"total_output_tokens_expected", total_output_expected},
          {"wrong_output_len", wrong_output_len},
          {"total_cached_tokens", total_cached},
          {"cache_hit_rate",
           total_input > 0 ? static_cast<double>(total_cached) / static_cast<double>(total_input)
                           : 0.0},
          {"duration_s", duration_s},
          {"request_throughput", request_throughput},
          {"input_throughput", input_throughput},
          {"output_throughput", output_throughput},
          {"total_throughput", total_throughput},
          {"max_output_tokens_per_s", max_output_tokens_per_s},
          {"concurrency", concurrency},
          {"max_concurrent_requests", max_concurrent_requests},
          {"ttft_ms", ttft.to_json()},
          {"tpot_ms", tpot.to_json()},
          {"itl_ms", itl.to_json()},
          {"e2e_latency_ms", e2e.to_json()}};
}

namespace {

void row(const std::string& label, const std::string& value) {
  std::printf("%s\n", fmt::format("{:<40} {}", label, value).c_str());
}

void rule(const std::string& title) { std::printf("%s\n", fmt::format("{:-^50}", title).c_str()); }

std::string f2(double v) { return fmt::format("{:.2f}", v); }

void distribution(const std::string& name, const Distribution& d, bool p90, bool p95, bool max) {
  row(fmt::format("Mean {} (ms):", name), f2(d.mean));
  row(fmt::format("Median {} (ms):", name), f2(d.median));
  row(fmt::format("Std {} (ms):", name), f2(d.std));
  if (p90) row(fmt::format("P90 {} (ms):", name), f2(d.p90));
  if (p95) row(fmt::format("P95 {} (ms):", name), f2(d.p95));
  row(fmt::format("P99 {} (ms):", name), f2(d.p99));
  if (max) row(fmt::format("Max {} (ms):", name), f2(d.max));
}

}  // namespace

void print_metrics(const BenchmarkMetrics& m,
                   const std::vector<std::pair<std::string, std::string>>& header,
                   const std::vector<std::pair<std::string, std::string>>& footer) {
  std::printf("\n%s\n", fmt::format("{:=^50}", " Serving Benchmark Result ").c_str());
  for (const auto& [k, v] : header) row(k + ":", v);
  row("Successful requests:", std::to_string(m.completed));
  row("Failed requests:", std::to_string(m.failed));
  row("Benchmark duration (s):", f2(m.duration_s));
  row("Total input tokens:", std::to_string(m.total_input));
  row("Total generated tokens:", std::to_string(m.total_output));
  row("Total cached prompt tokens:",
      fmt::format("{} ({:.1f} %)", m.total_cached,
                  m.total_input > 0 ? 100.0 * static_cast<double>(m.total_cached) /
                                          static_cast<double>(m.total_input)
                                    : 0.0));
  row("Request throughput (req/s):", f2(m.request_throughput));
  row("Input token throughput (tok/s):", f2(m.input_throughput));
  row("Output token throughput (tok/s):", f2(m.output_throughput));
  row("Peak output token throughput (tok/s):", f2(m.max_output_tokens_per_s));
  row("Total token throughput (tok/s):", f2(m.total_throughput));
  row("Concurrency:", f2(m.concurrency));
  row("Max concurrent requests:", std::to_string(m.max_concurrent_requests));
  rule("End-to-End Latency");
  distribution("E2E Latency", m.e2e, true, false, false);
  rule("Time to First Token");
  distribution("TTFT", m.ttft, true, false, false);
  rule("Time per Output Token (excl. 1st token)");
  distribution("TPOT", m.tpot, true, false, false);
  rule("Inter-Token Latency");
  distribution("ITL", m.itl, true, true, true);
  if (!footer.empty()) {
    rule("Machine");
    for (const auto& [k, v] : footer) row(k + ":", v);
  }
  std::printf("%s\n", std::string(50, '=').c_str());
  if (m.wrong_output_len > 0) {
    std::printf("WARNING: %lld requests did not produce the requested number of tokens\n",
                static_cast<long long>(m.wrong_output_len));
  }
  std::fflush(stdout);
}

}  // namespace dpserve::bench
