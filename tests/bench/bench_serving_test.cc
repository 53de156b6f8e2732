// bench_serving: unit tests of its parts (SSE parsing, percentiles, workloads, arrivals) and smoke
// runs of the real binary against a real `dpserve serve` on stories260K, checking the JSON.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "http/server_process.h"
#include "serving_client.h"
#include "serving_dataset.h"
#include "serving_metrics.h"

namespace {

using dpserve_test::run_command;
using dpserve_test::ServerProcess;
using nlohmann::json;
using namespace dpserve::bench;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------
// Parts.

TEST(SseParser, EventsCutAnywhere) {
  const std::string stream =
      "data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n";
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    SseParser p;
    std::vector<std::string> got = p.feed(stream.data(), cut);
    const auto rest = p.feed(stream.data() + cut, stream.size() - cut);
    got.insert(got.end(), rest.begin(), rest.end());
    EXPECT_EQ(got, (std::vector<std::string>{"{\"a\":1}", "{\"b\":2}", "", "[DONE]"}))
        << "cut at " << cut;
  }
}

TEST(Percentile, MatchesNumpyLinear) {
  const std::vector<double> v = {1, 2, 3, 4, 10};
  // numpy.percentile([1, 2, 3, 4, 10], [0, 50, 90, 99, 100]) = 1, 3, 7.6, 9.76, 10.
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(percentile(v, 50), 3);
  EXPECT_NEAR(percentile(v, 90), 7.6, 1e-12);
  EXPECT_NEAR(percentile(v, 99), 9.76, 1e-12);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 10);
  EXPECT_DOUBLE_EQ(percentile({}, 50), 0);
  const Distribution d = summarize_ms({0.001, 0.002, 0.003, 0.004, 0.010});
  EXPECT_NEAR(d.mean, 4.0, 1e-9);
  EXPECT_NEAR(d.std, std::sqrt(10.0), 1e-9);  // population std of {1,2,3,4,10}
  EXPECT_NEAR(d.max, 10.0, 1e-9);
}

TEST(Metrics, ThroughputConcurrencyAndTpot) {
  RequestOutput a;
  a.success = true;
  a.prompt_len = 10;
  a.output_len = 5;
  a.expected_output_len = 5;
  a.ttft = 0.1;
  a.latency = 0.5;
  a.itl = {0.1, 0.1, 0.1, 0.1};
  a.chunks = {{0.1, 1}, {0.2, 1}, {0.3, 1}, {0.4, 1}, {1.5, 1}};
  RequestOutput b = a;
  b.output_len = 4;  // asked for 5
  RequestOutput failed;
  failed.error = "boom";
  const BenchmarkMetrics m = compute_metrics({a, b, failed}, 1.0, 2);
  EXPECT_EQ(m.completed, 2);
  EXPECT_EQ(m.failed, 1);
  EXPECT_EQ(m.total_input, 20);
  EXPECT_EQ(m.total_output, 9);
  EXPECT_EQ(m.total_output_expected, 10);
  EXPECT_EQ(m.wrong_output_len, 1);
  EXPECT_DOUBLE_EQ(m.concurrency, 1.0);
  EXPECT_DOUBLE_EQ(m.output_throughput, 9.0);
  EXPECT_NEAR(m.tpot.median, (400.0 / 4 + 400.0 / 3) / 2, 1e-9);
  EXPECT_EQ(m.itl.count, 8);
  EXPECT_EQ(m.max_output_tokens_per_s, 8);  // second 0 holds 4 + 4 chunks, second 1 holds 1 + 1
}

TEST(Dataset, RandomLengthsInRange) {
  DatasetOptions o;
  o.vocab_size = 512;
  o.num_prompts = 200;
  o.random_input_len = 40;
  o.random_output_len = 10;
  o.random_range_ratio = 0.5;
  const auto reqs = make_dataset(o);
  ASSERT_EQ(reqs.size(), 200u);
  for (const BenchRequest& r : reqs) {
    EXPECT_GE(r.prompt_len, 20);
    EXPECT_LE(r.prompt_len, 40);
    EXPECT_EQ(static_cast<int64_t>(r.input_ids.size()), r.prompt_len);
    EXPECT_GE(r.output_len, 5);
    EXPECT_LE(r.output_len, 10);
    for (int32_t id : r.input_ids) {
      EXPECT_GE(id, 1);
      EXPECT_LT(id, 512);
    }
  }
  // Same seed, same workload.
  EXPECT_EQ(make_dataset(o)[7].input_ids, reqs[7].input_ids);
}

TEST(Dataset, SharedPrefixGroupsShareTheirSystemPrompt) {
  DatasetOptions o;
  o.name = "generated-shared-prefix";
  o.vocab_size = 512;
  o.gsp_num_groups = 3;
  o.gsp_prompts_per_group = 4;
  o.gsp_system_prompt_len = 16;
  o.gsp_question_len = 4;
  o.gsp_output_len = 7;
  const auto reqs = make_dataset(o);
  ASSERT_EQ(reqs.size(), 12u);
  for (const BenchRequest& a : reqs) {
    EXPECT_EQ(a.prompt_len, 20);
    EXPECT_EQ(a.output_len, 7);
    for (const BenchRequest& b : reqs) {
      const bool same_prefix =
          std::equal(a.input_ids.begin(), a.input_ids.begin() + 16, b.input_ids.begin());
      EXPECT_EQ(same_prefix, a.group == b.group);
    }
  }
  o.text_prompts = true;
  o.tokens_per_word = 2.0;
  const auto text = make_dataset(o);
  EXPECT_THAT(text[0].text, HasSubstr("\n\n"));
  EXPECT_TRUE(text[0].input_ids.empty());
}

TEST(Dataset, BadOptionsNameTheFlag) {
  DatasetOptions o;
  o.vocab_size = 512;
  o.random_range_ratio = 2;
  EXPECT_THROW(
      {
        try {
          make_dataset(o);
        } catch (const std::exception& e) {
          EXPECT_THAT(e.what(), HasSubstr("--random-range-ratio"));
          throw;
        }
      },
      std::exception);
  o.random_range_ratio = 0;
  o.name = "sharegpt";
  EXPECT_THROW(make_dataset(o), std::exception);
}

TEST(Arrivals, PoissonMeanGap) {
  EXPECT_EQ(arrival_times(5, INFINITY, 1), std::vector<double>(5, 0.0));
  const auto t = arrival_times(20001, 50.0, 3);
  EXPECT_EQ(t[0], 0.0);
  EXPECT_TRUE(std::is_sorted(t.begin(), t.end()));
  EXPECT_NEAR(t.back() / 20000, 1.0 / 50, 0.001);
}

// ---------------------------------------------------------------------------------------------
// The binary against a real server.

class BenchServingSmoke : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ =
        std::make_unique<ServerProcess>(std::vector<std::string>{"--max-total-tokens", "16384"});
    ASSERT_TRUE(server_->wait_healthy()) << server_->log();
  }
  static void TearDownTestSuite() { server_.reset(); }

  // Runs bench_serving with `args` against the server; returns the JSON it wrote.
  static json run_bench(const std::string& args, const std::string& name) {
    const std::string out = ::testing::TempDir() + "/bench_serving_" + name + ".json";
    std::remove(out.c_str());
    const std::string cmd = std::string(BENCH_SERVING_BINARY) + " --port " +
                            std::to_string(server_->port()) +
                            " --no-ceilings --disable-progress-bar --output-details" +
                            " --output-file " + out + " " + args;
    const auto r = run_command(cmd, /*with_stderr=*/true);
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.out;
    std::printf("%s\n", r.out.c_str());  // the table, for the test log
    const json j = json::parse(dpserve_test::read_file(out), nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }

  // The checks every run must pass.
  static void expect_consistent(const json& j, int64_t num_prompts) {
    const json& m = j["metrics"];
    EXPECT_EQ(m["completed"], num_prompts) << j["errors"];
    EXPECT_EQ(m["failed"], 0);
    EXPECT_EQ(m["wrong_output_len"], 0);
    EXPECT_EQ(m["total_output_tokens"], m["total_output_tokens_expected"]);
    int64_t requested = 0, prompt = 0;
    ASSERT_EQ(j["requests"].size(), static_cast<size_t>(num_prompts));
    for (const json& r : j["requests"]) {
      requested += r["expected_output_len"].get<int64_t>();
      prompt += r["prompt_len"].get<int64_t>();
      EXPECT_EQ(r["output_len"], r["expected_output_len"]);
      EXPECT_GE(r["ttft_s"].get<double>(), 0);
      EXPECT_LE(r["ttft_s"].get<double>(), r["latency_s"].get<double>());
      // The first chunk's tokens count in TTFT; every later token has one ITL sample.
      EXPECT_LE(r["itl_s"].size(), r["output_len"].get<size_t>() - 1);
    }
    EXPECT_EQ(m["total_output_tokens"], requested);
    EXPECT_EQ(m["total_input_tokens"], prompt);
    for (const char* key : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_latency_ms"}) {
      const json& d = m[key];
      EXPECT_GE(d["median"].get<double>(), 0) << key;
      EXPECT_GE(d["p90"].get<double>(), d["median"].get<double>()) << key;
      EXPECT_GE(d["p99"].get<double>(), d["p90"].get<double>()) << key;
      EXPECT_GE(d["max"].get<double>(), d["p99"].get<double>()) << key;
    }
    EXPECT_LE(m["ttft_ms"]["mean"].get<double>(), m["e2e_latency_ms"]["mean"].get<double>());
    EXPECT_LE(m["ttft_ms"]["max"].get<double>(), m["e2e_latency_ms"]["max"].get<double>());
    EXPECT_GT(m["output_throughput"].get<double>(), 0);
    EXPECT_GT(m["concurrency"].get<double>(), 0);
    EXPECT_GE(m["max_concurrent_requests"].get<int64_t>(), 1);
  }

  static std::unique_ptr<ServerProcess> server_;
};

std::unique_ptr<ServerProcess> BenchServingSmoke::server_;

TEST_F(BenchServingSmoke, RandomAllAtOnce) {
  const json j = run_bench(
      "--backend sglang --dataset-name random --num-prompts 20 --random-input-len 48 "
      "--random-output-len 16 --random-range-ratio 1 --max-concurrency 8",
      "random");
  expect_consistent(j, 20);
  EXPECT_EQ(j["metrics"]["total_output_tokens"], 20 * 16);
  EXPECT_EQ(j["metrics"]["total_input_tokens"], 20 * 48);  // token-id prompts: no BOS added
  EXPECT_LE(j["metrics"]["max_concurrent_requests"].get<int64_t>(), 8);
  EXPECT_EQ(j["max_concurrency"], 8);
  EXPECT_EQ(j["server"]["vocab_size"], 512);
}

TEST_F(BenchServingSmoke, RandomVariableLengthsAtARequestRate) {
  const json j = run_bench(
      "--dataset-name random --num-prompts 20 --random-input-len 64 --random-output-len 24 "
      "--random-range-ratio 0.5 --request-rate 40 --seed 7",
      "rate");
  expect_consistent(j, 20);
  EXPECT_EQ(j["request_rate"], 40.0);
  // Poisson arrivals: the sends are spread out (mean gap 25 ms over 19 gaps).
  double last_start = 0;
  for (const json& r : j["requests"]) last_start = std::max(last_start, r["start_s"].get<double>());
  EXPECT_GT(last_start, 0.05);
}

TEST_F(BenchServingSmoke, GeneratedSharedPrefix) {
  const json j = run_bench(
      "--dataset-name generated-shared-prefix --gsp-num-groups 4 --gsp-prompts-per-group 5 "
      "--gsp-system-prompt-len 96 --gsp-question-len 16 --gsp-output-len 12 --max-concurrency 4",
      "gsp");
  expect_consistent(j, 20);
  EXPECT_EQ(j["metrics"]["total_output_tokens"], 20 * 12);
  // The scheduler may or may not find the prefixes in its radix cache: report, do not require.
  std::printf("shared prefix: %lld of %lld prompt tokens cached (%.1f %%)\n",
              j["metrics"]["total_cached_tokens"].get<long long>(),
              j["metrics"]["total_input_tokens"].get<long long>(),
              100.0 * j["metrics"]["cache_hit_rate"].get<double>());
  EXPECT_GE(j["metrics"]["total_cached_tokens"].get<int64_t>(), 0);
}

TEST_F(BenchServingSmoke, TextPrompts) {
  const json j = run_bench(
      "--prompt-kind text --num-prompts 6 --random-input-len 40 --random-output-len 8 "
      "--random-range-ratio 1 --warmup-requests 2 --flush-cache",
      "text");
  expect_consistent(j, 6);
  EXPECT_EQ(j["prompt_kind"], "text");
  EXPECT_GT(j["tokens_per_word"].get<double>(), 0);
}

TEST_F(BenchServingSmoke, OpenAiBackendWhenWired) {
  httplib::Client c = server_->client();
  auto r = c.Post("/v1/completions", R"({"prompt": "a", "max_tokens": 1})", "application/json");
  if (!r || r->status == 404) GTEST_SKIP() << "/v1/completions is not wired in this server yet";
  const json j = run_bench(
      "--backend openai --num-prompts 8 --random-input-len 32 --random-output-len 8 "
      "--random-range-ratio 1 --prompt-kind ids",
      "openai");
  expect_consistent(j, 8);
}

TEST(BenchServingCli, NoServerIsAClearError) {
  const std::string cmd = std::string(BENCH_SERVING_BINARY) + " --port " +
                          std::to_string(dpserve_test::free_port()) +
                          " --no-ceilings --num-prompts 2 --vocab-size 512";
  const auto r = run_command(cmd, /*with_stderr=*/true);
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("warmup failed"));
}

TEST(BenchServingCli, BadFlagsNameTheFlag) {
  const auto r = run_command(
      std::string(BENCH_SERVING_BINARY) + " --no-ceilings --vocab-size 512 --request-rate fast",
      /*with_stderr=*/true);
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--request-rate"));
}

}  // namespace
