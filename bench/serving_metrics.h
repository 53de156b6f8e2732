#pragma once
// bench_serving's figures (SGLang's BenchmarkMetrics): throughput, latency distributions and
// achieved concurrency over the requests of one run, as a table and as JSON.

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "serving_client.h"

namespace dpserve::bench {

// numpy.percentile's default (linear interpolation between closest ranks); `p` in [0, 100].
// `sorted` must be ascending; 0 for an empty list.
double percentile(const std::vector<double>& sorted, double p);

// Summary of one latency distribution, in milliseconds.
struct Distribution {
  int64_t count = 0;  // samples
  double mean = 0;    // arithmetic mean
  double median = 0;  // 50th percentile
  double std = 0;     // population standard deviation (numpy's default)
  double p90 = 0;     // 90th percentile
  double p95 = 0;     // 95th percentile
  double p99 = 0;     // 99th percentile
  double max = 0;     // largest sample

  // {"mean": .., "median": .., ...}.
  nlohmann::json to_json() const;
};

// Summarizes samples given in seconds (reported in milliseconds).
Distribution summarize_ms(std::vector<double> seconds);

// The figures of one run.
struct BenchmarkMetrics {
  int64_t completed = 0;                // successful requests
  int64_t failed = 0;                   // failed requests
  int64_t total_input = 0;              // prompt tokens of the successful requests
  int64_t total_output = 0;             // generated tokens of the successful requests
  int64_t total_output_expected = 0;    // tokens asked for by the successful requests
  int64_t wrong_output_len = 0;         // successful requests that did not produce what was asked
  int64_t total_cached = 0;             // prompt tokens served from the server's prefix cache
  double duration_s = 0;                // first send to the last request's end
  double request_throughput = 0;        // completed / duration, req/s
  double input_throughput = 0;          // total_input / duration, tok/s
  double output_throughput = 0;         // total_output / duration, tok/s
  double total_throughput = 0;          // (input + output) / duration, tok/s
  double max_output_tokens_per_s = 0;   // most output tokens in any 1-second window
  double concurrency = 0;               // sum of e2e latencies / duration (SGLang's)
  int64_t max_concurrent_requests = 0;  // most requests in flight at once (measured by the client)
  Distribution ttft;                    // time to first token
  Distribution tpot;                    // per-request (e2e - ttft) / (output - 1)
  Distribution itl;                     // inter-token latency, per token
  Distribution e2e;                     // end-to-end latency

  // Every field, for the output file.
  nlohmann::json to_json() const;
};

// Computes the figures from every request's output.
BenchmarkMetrics compute_metrics(const std::vector<RequestOutput>& outputs, double duration_s,
                                 int64_t max_concurrent_requests);

// Prints SGLang's result table. `header` holds (label, value) rows shown first (backend,
// rate, ...), `footer` rows shown last (ceilings, roofline).
void print_metrics(const BenchmarkMetrics& m,
                   const std::vector<std::pair<std::string, std::string>>& header,
                   const std::vector<std::pair<std::string, std::string>>& footer);

}  // namespace dpserve::bench
