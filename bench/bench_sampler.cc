// dpserve_bench_sampler: time of the Sampler per row on a large vocabulary (Qwen3's 151936) for
// each sampling mode, on a flat and on a peaked logits row. Moved out of the test suite: speed
// belongs in benchmarks.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include <CLI/CLI.hpp>

#include "dpserve/sampling/sampler.h"
#include "dpserve/sampling/sampling_params.h"

namespace dpserve::bench {
namespace {

std::vector<float> random_logits(int64_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

SamplingParams params_with(double temperature, int64_t top_k = -1, double top_p = 1.0,
                           double min_p = 0.0) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  return p;
}

}  // namespace
}  // namespace dpserve::bench

int main(int argc, char** argv) {
  using namespace dpserve;
  using namespace dpserve::bench;
  CLI::App app{"Sampler time per row for each sampling mode"};
  int64_t vocab = 151936;
  int reps = 20;
  app.add_option("--vocab", vocab, "logits per row")->check(CLI::PositiveNumber);
  app.add_option("--reps", reps, "timed samples per mode and row (best is kept)")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  const auto flat = random_logits(vocab, 9, 2.0f);
  auto peaked = flat;
  for (int i = 0; i < 30; ++i) peaked[static_cast<size_t>((i * int64_t{7919}) % vocab)] += 12.0f;
  struct Mode {
    const char* name;
    SamplingParams p;
  };
  SamplingParams with_lp = params_with(0.0);
  with_lp.return_logprob = true;
  with_lp.top_logprobs_num = 5;
  const Mode modes[] = {
      {"greedy", params_with(0.0)},
      {"greedy+logprobs(top 5)", with_lp},
      {"temperature", params_with(0.8)},
      {"top_k=50", params_with(0.8, 50)},
      {"top_k=50,top_p=0.9", params_with(0.8, 50, 0.9)},
      {"top_p=0.9", params_with(0.8, -1, 0.9)},
      {"min_p=0.05", params_with(0.8, -1, 1.0, 0.05)},
      {"top_k=1000,top_p=0.95,min_p=0.01", params_with(0.8, 1000, 0.95, 0.01)},
  };
  Sampler sampler({});
  std::vector<float> row(static_cast<size_t>(vocab));
  std::printf("vocab %lld, best of %d\n", static_cast<long long>(vocab), reps);
  std::printf("  %-36s %12s %12s\n", "mode", "flat us/row", "peaked us/row");
  for (const Mode& m : modes) {
    double best[2] = {1e30, 1e30};
    for (int d = 0; d < 2; ++d) {
      const auto& logits = d == 0 ? flat : peaked;
      RequestSamplingState st(m.p, {}, 1);
      RequestSamplingState* ptr = &st;
      for (int i = 0; i < reps; ++i) {
        std::copy(logits.begin(), logits.end(), row.begin());
        const auto t0 = std::chrono::steady_clock::now();
        sampler.sample(row.data(), 1, vocab, {&ptr, 1});
        best[d] = std::min(best[d], std::chrono::duration<double, std::micro>(
                                        std::chrono::steady_clock::now() - t0)
                                        .count());
      }
    }
    std::printf("  %-36s %12.1f %12.1f\n", m.name, best[0], best[1]);
  }
  return 0;
}
