// The Prometheus registry: the emitted text is parsed back (HELP/TYPE lines, samples, escaped
// labels) and checked for bucket cumulativity, counts, sums and thread safety; SGLang's serving
// metrics and the per-request recorder with controlled timestamps.

#include <chrono>
#include <cmath>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "dpserve/openai/metrics.h"

namespace dpserve {
namespace {

// One parsed sample line.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0.0;
};

// A strict reader of the text exposition format 0.0.4 (enough for our output).
struct Exposition {
  std::map<std::string, std::string> help;
  std::map<std::string, std::string> type;
  std::vector<Sample> samples;

  explicit Exposition(const std::string& text) {
    EXPECT_TRUE(text.empty() || text.back() == '\n') << "text must end with a newline";
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("# HELP ", 0) == 0) {
        const size_t sp = line.find(' ', 7);
        help[line.substr(7, sp - 7)] = line.substr(sp + 1);
      } else if (line.rfind("# TYPE ", 0) == 0) {
        const size_t sp = line.find(' ', 7);
        type[line.substr(7, sp - 7)] = line.substr(sp + 1);
      } else {
        if (line.empty() || line[0] == '#') {
          ADD_FAILURE() << "unexpected line: " << line;
          continue;
        }
        samples.push_back(parse_sample(line));
      }
    }
  }

  static Sample parse_sample(const std::string& line) {
    Sample s;
    size_t i = line.find_first_of("{ ");
    s.name = line.substr(0, i);
    if (line[i] == '{') {
      ++i;
      while (line[i] != '}') {
        const size_t eq = line.find('=', i);
        const std::string key = line.substr(i, eq - i);
        EXPECT_EQ(line[eq + 1], '"') << line;
        std::string value;
        for (i = eq + 2; line[i] != '"'; ++i) {
          if (line[i] == '\\') {
            ++i;
            value += line[i] == 'n' ? '\n' : line[i];
          } else {
            value += line[i];
          }
        }
        s.labels[key] = value;
        ++i;
        if (line[i] == ',') ++i;
      }
      ++i;
    }
    EXPECT_EQ(line[i], ' ') << line;
    const std::string v = line.substr(i + 1);
    s.value = v == "+Inf" ? INFINITY : v == "-Inf" ? -INFINITY : v == "NaN" ? NAN : std::stod(v);
    return s;
  }

  // Samples named `name` whose labels include `match`.
  std::vector<Sample> find(const std::string& name,
                           const std::map<std::string, std::string>& match = {}) const {
    std::vector<Sample> out;
    for (const Sample& s : samples) {
      if (s.name != name) continue;
      bool ok = true;
      for (const auto& [k, v] : match) ok = ok && s.labels.count(k) && s.labels.at(k) == v;
      if (ok) out.push_back(s);
    }
    return out;
  }

  double value(const std::string& name,
               const std::map<std::string, std::string>& match = {}) const {
    auto f = find(name, match);
    EXPECT_EQ(f.size(), 1u) << name;
    return f.empty() ? NAN : f[0].value;
  }
};

// Checks a histogram series: buckets in increasing le, cumulative, +Inf last and == _count.
void check_histogram(const Exposition& e, const std::string& name,
                     const std::map<std::string, std::string>& labels) {
  std::vector<Sample> buckets = e.find(name + "_bucket", labels);
  ASSERT_FALSE(buckets.empty()) << name;
  double prev_le = -INFINITY, prev_count = 0;
  for (const Sample& b : buckets) {
    ASSERT_TRUE(b.labels.count("le"));
    const std::string le = b.labels.at("le");
    const double bound = le == "+Inf" ? INFINITY : std::stod(le);
    EXPECT_GT(bound, prev_le) << name;
    EXPECT_GE(b.value, prev_count) << name << " le=" << le;
    prev_le = bound;
    prev_count = b.value;
  }
  EXPECT_EQ(buckets.back().labels.at("le"), "+Inf");
  EXPECT_EQ(buckets.back().value, e.value(name + "_count", labels));
}

TEST(MetricsRegistry, CountersGaugesAndTypeLines) {
  MetricsRegistry r;
  Counter& c = r.counter("dp:requests_total", "Requests.", {{"model_name", "m"}});
  c.inc();
  c.inc(2.5);
  EXPECT_EQ(&r.counter("dp:requests_total", "ignored", {{"model_name", "m"}}), &c);
  r.counter("dp:requests_total", "", {{"model_name", "other"}}).inc(7);
  Gauge& g = r.gauge("dp_running", "Running now.\nSecond line with \\.");
  g.set(5);
  g.inc(-2);
  const std::string text = r.render();
  Exposition e(text);
  EXPECT_EQ(e.type.at("dp:requests_total"), "counter");
  EXPECT_EQ(e.type.at("dp_running"), "gauge");
  EXPECT_EQ(e.help.at("dp:requests_total"), "Requests.");
  EXPECT_EQ(e.help.at("dp_running"), "Running now.\\nSecond line with \\\\.");
  EXPECT_DOUBLE_EQ(e.value("dp:requests_total", {{"model_name", "m"}}), 3.5);
  EXPECT_DOUBLE_EQ(e.value("dp:requests_total", {{"model_name", "other"}}), 7);
  EXPECT_DOUBLE_EQ(e.value("dp_running"), 3);
  // HELP then TYPE precede the family's samples; unlabelled series print no braces.
  EXPECT_NE(text.find("# HELP dp:requests_total Requests.\n# TYPE dp:requests_total counter\n"
                      "dp:requests_total{model_name=\"m\"} 3.5\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("\ndp_running 3\n"), std::string::npos) << text;
}

TEST(MetricsRegistry, LabelValuesAreEscaped) {
  MetricsRegistry r;
  const std::string nasty = "a\"b\\c\nd";
  r.gauge("g", "h", {{"path", nasty}, {"z", "plain"}}).set(1);
  const std::string text = r.render();
  EXPECT_NE(text.find(R"(g{path="a\"b\\c\nd",z="plain"} 1)"), std::string::npos) << text;
  Exposition e(text);
  ASSERT_EQ(e.samples.size(), 1u);
  EXPECT_EQ(e.samples[0].labels.at("path"), nasty);
  EXPECT_EQ(escape_label_value("x\\y"), "x\\\\y");
}

TEST(MetricsRegistry, HistogramBucketsAreCumulative) {
  MetricsRegistry r;
  Histogram& h =
      r.histogram("lat_seconds", "Latency.", {0.001, 0.01, 1, 10}, {{"model_name", "m"}});
  for (double v : {0.0005, 0.003, 0.01, 7.0, 1000.0}) h.observe(v);
  h.observe(0.5, 3);  // three observations at once
  Exposition e(r.render());
  EXPECT_EQ(e.type.at("lat_seconds"), "histogram");
  check_histogram(e, "lat_seconds", {{"model_name", "m"}});
  auto bucket = [&](const char* le) {
    return e.value("lat_seconds_bucket", {{"model_name", "m"}, {"le", le}});
  };
  EXPECT_EQ(bucket("0.001"), 1);
  EXPECT_EQ(bucket("0.01"), 3);  // le is inclusive: 0.01 counts here
  EXPECT_EQ(bucket("1"), 6);
  EXPECT_EQ(bucket("10"), 7);
  EXPECT_EQ(bucket("+Inf"), 8);
  EXPECT_EQ(e.value("lat_seconds_count", {{"model_name", "m"}}), 8);
  EXPECT_NEAR(e.value("lat_seconds_sum", {{"model_name", "m"}}),
              0.0005 + 0.003 + 0.01 + 7.0 + 1000.0 + 1.5, 1e-9);
  Histogram::Snapshot s = h.snapshot();
  EXPECT_EQ(s.count, 8u);
  EXPECT_EQ(s.buckets, (std::vector<uint64_t>{1, 3, 6, 7, 8}));
}

TEST(MetricsRegistry, ValueFormatting) {
  EXPECT_EQ(format_metric_value(INFINITY), "+Inf");
  EXPECT_EQ(format_metric_value(-INFINITY), "-Inf");
  EXPECT_EQ(format_metric_value(NAN), "NaN");
  EXPECT_EQ(format_metric_value(100.0), "100");
  EXPECT_EQ(format_metric_value(0.1), "0.1");
  EXPECT_EQ(std::stod(format_metric_value(1e-5)), 1e-5);
  EXPECT_EQ(std::stod(format_metric_value(123456789012.0)), 123456789012.0);
}

TEST(MetricsRegistry, ThreadSafeUpdatesAndRenders) {
  MetricsRegistry r;
  Counter& c = r.counter("c_total", "c");
  Histogram& h = r.histogram("h", "h", {0.5, 1.5});
  constexpr int kThreads = 8, kIters = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIters; ++i) {
        c.inc();
        h.observe(i % 2);
        r.gauge("g", "g", {{"thread", std::to_string(t)}}).set(i);
        if (i % 5000 == 0) {
          Exposition e(r.render());
          check_histogram(e, "h", {});
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  Exposition e(r.render());
  EXPECT_EQ(e.value("c_total"), kThreads * kIters);
  EXPECT_EQ(e.value("h_count"), kThreads * kIters);
  EXPECT_EQ(e.value("h_bucket", {{"le", "0.5"}}), kThreads * kIters / 2);
  EXPECT_EQ(e.value("h_sum"), kThreads * kIters / 2);
  EXPECT_EQ(e.find("g").size(), static_cast<size_t>(kThreads));
}

TEST(ServingMetrics, SGLangNamesAndRecorderTimings) {
  MetricsRegistry r;
  ServingMetrics m(r, "stories");
  using Clock = RequestMetricsRecorder::Clock;
  const Clock::time_point t0 = Clock::now();
  auto at = [&](double s) {
    return t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  };
  RequestMetricsRecorder rec(m, t0);
  rec.on_output(0, at(0.1));                // no tokens yet: nothing recorded
  rec.on_output(1, at(0.5));                // TTFT 0.5
  rec.on_output(3, at(0.7));                // 2 tokens in 0.2 s: two inter-token latencies of 0.1
  rec.on_finish(10, 4, 6, false, at(1.0));  // last token after 0.3 s; e2e 1.0
  rec.on_finish(10, 4, 6, false, at(2.0));  // ignored
  RequestMetricsRecorder aborted(m, at(1.0));
  aborted.on_finish(5, 0, 0, true, at(1.2));  // aborted before any token: no TTFT
  m.set_scheduler_stats({.num_running_reqs = 3,
                         .num_queue_reqs = 2,
                         .num_used_tokens = 100,
                         .token_usage = 0.25,
                         .cache_hit_rate = 0.5,
                         .gen_throughput = 42.0});

  const std::string text = r.render();
  Exposition e(text);
  const std::map<std::string, std::string> lbl = {{"model_name", "stories"}};
  for (const char* name : {"sglang:prompt_tokens_total", "sglang:generation_tokens_total",
                           "sglang:cached_tokens_total", "sglang:num_requests_total",
                           "sglang:num_aborted_requests_total"}) {
    EXPECT_EQ(e.type.at(name), "counter") << name;
  }
  for (const char* name :
       {"sglang:time_to_first_token_seconds", "sglang:inter_token_latency_seconds",
        "sglang:e2e_request_latency_seconds"}) {
    EXPECT_EQ(e.type.at(name), "histogram") << name;
    check_histogram(e, name, lbl);
  }
  for (const char* name :
       {"sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:num_used_tokens",
        "sglang:token_usage", "sglang:cache_hit_rate", "sglang:gen_throughput"}) {
    EXPECT_EQ(e.type.at(name), "gauge") << name;
  }
  EXPECT_EQ(e.value("sglang:prompt_tokens_total", lbl), 15);
  EXPECT_EQ(e.value("sglang:generation_tokens_total", lbl), 4);
  EXPECT_EQ(e.value("sglang:cached_tokens_total", lbl), 6);
  EXPECT_EQ(e.value("sglang:num_requests_total", lbl), 2);
  EXPECT_EQ(e.value("sglang:num_aborted_requests_total", lbl), 1);
  EXPECT_EQ(e.value("sglang:time_to_first_token_seconds_count", lbl), 1);
  EXPECT_NEAR(e.value("sglang:time_to_first_token_seconds_sum", lbl), 0.5, 1e-6);
  EXPECT_EQ(e.value("sglang:time_to_first_token_seconds_bucket",
                    {{"model_name", "stories"}, {"le", "0.5"}}),
            1);
  EXPECT_EQ(e.value("sglang:time_to_first_token_seconds_bucket",
                    {{"model_name", "stories"}, {"le", "0.25"}}),
            0);
  EXPECT_EQ(e.value("sglang:inter_token_latency_seconds_count", lbl), 3);
  EXPECT_NEAR(e.value("sglang:inter_token_latency_seconds_sum", lbl), 0.5, 1e-6);
  EXPECT_EQ(e.value("sglang:e2e_request_latency_seconds_count", lbl), 2);
  EXPECT_NEAR(e.value("sglang:e2e_request_latency_seconds_sum", lbl), 1.2, 1e-6);
  EXPECT_EQ(e.value("sglang:num_running_reqs", lbl), 3);
  EXPECT_EQ(e.value("sglang:num_queue_reqs", lbl), 2);
  EXPECT_EQ(e.value("sglang:num_used_tokens", lbl), 100);
  EXPECT_EQ(e.value("sglang:token_usage", lbl), 0.25);
  EXPECT_EQ(e.value("sglang:cache_hit_rate", lbl), 0.5);
  EXPECT_EQ(e.value("sglang:gen_throughput", lbl), 42);
  EXPECT_STREQ(MetricsRegistry::kContentType, "text/plain; version=0.0.4; charset=utf-8");
}

}  // namespace
}  // namespace dpserve
