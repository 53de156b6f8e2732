// dpserve_bench_offline_throughput: offline throughput of the real Scheduler (after SGLang's
// bench_offline_throughput). N requests of random token ids with a fixed input and output length
// (ignore_eos, so every request produces exactly output-len tokens) are queued at once and stepped
// to completion. Prints request and token throughput, and for the decode and prefill steps the
// fraction of the roofline from this machine's ceilings (bench/roofline.h), measured in the same
// run. The shared-prefix dataset (a few long common prefixes, many short suffixes) reports the
// radix cache hit rate and, with --compare-no-cache, the speed-up against --disable-radix-cache.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "ceilings.h"
#include "dpserve/common/errors.h"
#include "dpserve/common/progress.h"
#include "dpserve/common/thread_pool.h"
#include "dpserve/managers/scheduler.h"
#include "dpserve/tokenizer/tokenizer.h"
#include "roofline.h"

namespace dpserve::bench {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The workload to generate.
struct Workload {
  std::string dataset = "random";  // "random" or "shared-prefix"
  int num_prompts = 32;            // requests
  int input_len = 128;             // random: prompt tokens per request
  int output_len = 64;             // generated tokens per request (both datasets)
  int num_groups = 4;              // shared-prefix: distinct common prefixes
  int prefix_len = 512;            // shared-prefix: tokens of each common prefix
  int suffix_len = 32;             // shared-prefix: per-request tokens after the prefix
  uint64_t seed = 1;               // token ids
};

std::vector<int32_t> random_tokens(std::mt19937_64& rng, int64_t vocab, int64_t n) {
  // Ids from 1 up to at most 32000 (every benchmark vocabulary has them; 0 is often special).
  std::uniform_int_distribution<int32_t> d(
      1, static_cast<int32_t>(std::min<int64_t>(vocab, 32000) - 1));
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = d(rng);
  return t;
}

// Greedy requests with ignore_eos; shared-prefix request i uses prefix i % num_groups, so the
// first num_groups requests carry distinct prefixes.
std::vector<GenerateRequest> make_requests(const Workload& w, int64_t vocab) {
  std::mt19937_64 rng(w.seed);
  std::vector<std::vector<int32_t>> prefixes;
  if (w.dataset == "shared-prefix") {
    for (int g = 0; g < w.num_groups; ++g)
      prefixes.push_back(random_tokens(rng, vocab, w.prefix_len));
  }
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < w.num_prompts; ++i) {
    GenerateRequest r;
    r.rid = "bench-" + std::to_string(i);
    if (prefixes.empty()) {
      r.input_ids = random_tokens(rng, vocab, w.input_len);
    } else {
      r.input_ids = prefixes[static_cast<size_t>(i % w.num_groups)];
      const auto suffix = random_tokens(rng, vocab, w.suffix_len);
      r.input_ids.insert(r.input_ids.end(), suffix.begin(), suffix.end());
    }
    r.sampling_params.temperature = 0.0;
    r.sampling_params.max_new_tokens = w.output_len;
    r.sampling_params.ignore_eos = true;
    reqs.push_back(std::move(r));
  }
  return reqs;
}

// One timed step of the scheduler.
struct StepRecord {
  bool decode = false;  // decode forward (else prefill)
  int64_t tokens = 0;   // new tokens computed (decode: = sequences)
  int64_t seqs = 0;     // sequences that got logits (prefill: those that finished their prompt)
  double s = 0;         // wall seconds of step()
};

// Everything measured in one run of the workload.
struct RunResult {
  std::string label;              // e.g. "radix cache" / "no radix cache"
  double total_s = 0;             // first step to last output
  int64_t requests = 0;           // finished requests
  int64_t input_tokens = 0;       // prompt tokens of all requests
  int64_t output_tokens = 0;      // generated tokens of all requests
  int64_t wrong_length = 0;       // requests that did not produce exactly output_len tokens
  SchedulerStats stats;           // scheduler counters for this run only
  std::vector<StepRecord> steps;  // every step that ran a forward
};

SchedulerStats minus(const SchedulerStats& a, const SchedulerStats& b) {
  SchedulerStats d;
  d.num_steps = a.num_steps - b.num_steps;
  d.num_prefill_batches = a.num_prefill_batches - b.num_prefill_batches;
  d.num_decode_batches = a.num_decode_batches - b.num_decode_batches;
  d.num_prefill_tokens = a.num_prefill_tokens - b.num_prefill_tokens;
  d.num_decode_tokens = a.num_decode_tokens - b.num_decode_tokens;
  d.num_cached_tokens = a.num_cached_tokens - b.num_cached_tokens;
  d.num_retractions = a.num_retractions - b.num_retractions;
  d.num_finished = a.num_finished - b.num_finished;
  d.num_aborted = a.num_aborted - b.num_aborted;
  d.num_watchdog_reports = a.num_watchdog_reports - b.num_watchdog_reports;
  return d;
}

// Queues all requests and steps the scheduler until they finish, timing every step.
RunResult run_workload(Scheduler& sched, const std::vector<GenerateRequest>& reqs, int output_len,
                       const std::string& label) {
  RunResult res;
  res.label = label;
  const SchedulerStats before = sched.stats();
  for (const auto& r : reqs) {
    res.input_tokens += static_cast<int64_t>(r.input_ids.size());
    sched.add_request(r);
  }
  ProgressBar bar(label, static_cast<int64_t>(reqs.size()) * output_len);
  const double t0 = now_s();
  while (sched.has_work()) {
    const SchedulerStats s0 = sched.stats();
    const double ts = now_s();
    const std::vector<RequestOutput> outs = sched.step();
    const double dt = now_s() - ts;
    const SchedulerStats d = minus(sched.stats(), s0);
    int64_t new_tokens = 0;
    for (const auto& o : outs) {
      new_tokens += static_cast<int64_t>(o.new_token_ids.size());
      if (o.finished) {
        ++res.requests;
        res.output_tokens += o.completion_tokens;
        if (o.completion_tokens != output_len) ++res.wrong_length;
      }
    }
    bar.advance(new_tokens);
    if (d.num_decode_batches > 0) {
      res.steps.push_back({true, d.num_decode_tokens, d.num_decode_tokens, dt});
    } else if (d.num_prefill_batches > 0) {
      res.steps.push_back({false, d.num_prefill_tokens, static_cast<int64_t>(outs.size()), dt});
    }
  }
  res.total_s = now_s() - t0;
  bar.finish();
  res.stats = minus(sched.stats(), before);
  return res;
}

void print_result(const RunResult& r, const Ceilings& c, const LinearCost& lc) {
  double dec_s = 0, dec_roof_s = 0, pre_s = 0, pre_roof_s = 0;
  int64_t dec_steps = 0, dec_tokens = 0, pre_steps = 0, pre_tokens = 0, max_batch = 0;
  for (const auto& s : r.steps) {
    if (s.decode) {
      ++dec_steps;
      dec_tokens += s.tokens;
      dec_s += s.s;
      dec_roof_s += decode_roofline(c, lc, s.tokens).step_s(s.tokens);
      max_batch = std::max(max_batch, s.tokens);
    } else {
      ++pre_steps;
      pre_tokens += s.tokens;
      pre_s += s.s;
      pre_roof_s += prefill_linear_roofline_s(c, lc, s.tokens, s.seqs);
    }
  }
  const double prompt_tokens = static_cast<double>(r.input_tokens);
  std::printf("\n============ Offline throughput: %s ============\n", r.label.c_str());
  std::printf("%-44s %lld\n", "Successful requests:", static_cast<long long>(r.requests));
  std::printf("%-44s %.2f\n", "Benchmark duration (s):", r.total_s);
  std::printf("%-44s %lld\n", "Total input tokens:", static_cast<long long>(r.input_tokens));
  std::printf("%-44s %lld\n", "Total generated tokens:", static_cast<long long>(r.output_tokens));
  std::printf("%-44s %.3f\n", "Request throughput (req/s):", r.requests / r.total_s);
  std::printf("%-44s %.1f\n", "Input token throughput (tok/s):", prompt_tokens / r.total_s);
  std::printf("%-44s %.1f\n", "Output token throughput (tok/s):", r.output_tokens / r.total_s);
  std::printf("%-44s %.1f\n", "Total token throughput (tok/s):",
              (prompt_tokens + static_cast<double>(r.output_tokens)) / r.total_s);
  std::printf("%-44s %.1f %% (%lld of %lld prompt tokens)\n", "Radix cache hit rate:",
              100.0 * static_cast<double>(r.stats.num_cached_tokens) / prompt_tokens,
              static_cast<long long>(r.stats.num_cached_tokens),
              static_cast<long long>(r.input_tokens));
  if (pre_steps > 0)
    std::printf(
        "%-44s %lld steps, %lld tokens, %.2f s, %.1f tok/s, %.0f %% of SGEMM roofline "
        "(linear flops)\n",
        "Prefill:", static_cast<long long>(pre_steps), static_cast<long long>(pre_tokens), pre_s,
        static_cast<double>(pre_tokens) / pre_s, 100.0 * pre_roof_s / pre_s);
  if (dec_steps > 0) {
    const DecodeRoofline top = decode_roofline(c, lc, max_batch);
    std::printf(
        "%-44s %lld steps, mean batch %.1f (max %lld), %.2f s, %.1f tok/s, %.0f %% of roofline\n",
        "Decode:", static_cast<long long>(dec_steps),
        static_cast<double>(dec_tokens) / static_cast<double>(dec_steps),
        static_cast<long long>(max_batch), dec_s, static_cast<double>(dec_tokens) / dec_s,
        100.0 * dec_roof_s / dec_s);
    std::printf("%-44s %.1f tok/s (bandwidth %.1f, flops %.1f)\n",
                "  roofline at max batch:", top.tps, top.bandwidth_tps, top.flops_tps);
  }
  std::printf("%-44s %lld prefill, %lld decode, %lld retractions\n",
              "Scheduler batches:", static_cast<long long>(r.stats.num_prefill_batches),
              static_cast<long long>(r.stats.num_decode_batches),
              static_cast<long long>(r.stats.num_retractions));
  if (r.wrong_length > 0)
    std::printf("WARNING: %lld requests did not produce exactly output-len tokens\n",
                static_cast<long long>(r.wrong_length));
}

}  // namespace
}  // namespace dpserve::bench

int main(int argc, char** argv) {
  using namespace dpserve;
  using namespace dpserve::bench;
  CLI::App app{"Offline throughput of the Scheduler (SGLang's bench_offline_throughput idea)"};
  std::string model_path;
  Workload w;
  int threads = default_num_threads();
  SchedulerConfig cfg;
  bool compare_no_cache = false, no_ceilings = false, no_warmup = false;
  app.add_option("--model-path", model_path, "checkpoint directory (config.json + safetensors)")
      ->required();
  app.add_option("--dataset", w.dataset, "random | shared-prefix")
      ->check(CLI::IsMember({"random", "shared-prefix"}));
  app.add_option("--num-prompts", w.num_prompts, "requests")->check(CLI::PositiveNumber);
  app.add_option("--input-len", w.input_len, "random: prompt tokens per request")
      ->check(CLI::PositiveNumber);
  app.add_option("--output-len", w.output_len, "generated tokens per request (ignore_eos)")
      ->check(CLI::PositiveNumber);
  app.add_option("--num-groups", w.num_groups, "shared-prefix: distinct common prefixes")
      ->check(CLI::PositiveNumber);
  app.add_option("--prefix-len", w.prefix_len, "shared-prefix: tokens per common prefix")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--suffix-len", w.suffix_len, "shared-prefix: tokens after the prefix")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", w.seed, "seed of the random token ids");
  app.add_option("--threads", threads, "compute threads");
  app.add_option("--max-running-requests", cfg.max_running_requests,
                 "most sequences decoding at once (0 = derived)");
  app.add_option("--chunked-prefill-size", cfg.chunked_prefill_size,
                 "most prompt tokens per prefill step (<= 0 disables)");
  app.add_option("--max-prefill-tokens", cfg.max_prefill_tokens, "prefill token budget per step");
  app.add_option("--page-size", cfg.page_size, "KV slots per page");
  app.add_option("--max-total-tokens", cfg.max_total_tokens,
                 "KV pool size in tokens (0 = all requests' tokens + 1024, at least the context)");
  app.add_option("--schedule-policy", cfg.schedule_policy, "fcfs | lpm");
  app.add_option("--attention-backend", cfg.attention_backend, "flash | native");
  app.add_flag("--disable-radix-cache", cfg.disable_radix_cache, "no prefix caching");
  app.add_flag("--compare-no-cache", compare_no_cache,
               "run the workload twice, with and then without the radix cache, and print the "
               "speed-up");
  app.add_flag("--no-ceilings", no_ceilings, "skip measuring the ceilings (fractions are void)");
  app.add_flag("--no-warmup", no_warmup, "skip the warm-up request (weights page in while timed)");
  CLI11_PARSE(app, argc, argv);
  if (w.dataset == "shared-prefix" && w.prefix_len + w.suffix_len == 0) {
    std::fprintf(stderr, "error: --prefix-len + --suffix-len must be positive\n");
    return 2;
  }

  try {
    cfg.num_threads = threads;
    cfg.random_seed = 0;
    const ModelConfig mc = ModelConfig::from_dir(model_path);
    const auto reqs = make_requests(w, mc.vocab_size);
    if (cfg.max_total_tokens == 0 && cfg.kv_cache_memory == 0) {
      // Room for every request at once, not a share of the (shared) machine's memory.
      int64_t total = 1024;
      for (const auto& r : reqs) total += static_cast<int64_t>(r.input_ids.size()) + w.output_len;
      // The pool must also hold one full context (its pages are touched only when used).
      cfg.max_total_tokens = std::max(total, mc.max_position_embeddings);
    }
    cfg.validate();

    ThreadPool pool(threads);  // for the ceilings (the scheduler has its own)
    Ceilings c;
    c.threads = threads;
    c.read_gbps = c.sgemm_gflops = 1;
    if (!no_ceilings) c = measure_ceilings(pool);
    std::printf("%s\n", describe(c).c_str());
    std::fflush(stdout);

    const double t_load = now_s();
    auto model = make_model(model_path, cfg);
    std::shared_ptr<const Tokenizer> tok(load_tokenizer(model_path));
    const LinearCost lc = linear_cost(mc, model_path);
    std::printf(
        "model %s (%s): %lld layers, hidden %lld, vocab %lld, linear weights %.2f GB, loaded in "
        "%.1f s\n",
        model_path.c_str(), mc.architecture.c_str(), static_cast<long long>(mc.num_hidden_layers),
        static_cast<long long>(mc.hidden_size), static_cast<long long>(mc.vocab_size),
        lc.weight_bytes() / 1e9, now_s() - t_load);
    if (w.dataset == "shared-prefix") {
      std::printf(
          "workload: shared-prefix, %d requests over %d prefixes of %d tokens + %d-token "
          "suffixes, output %d\n",
          w.num_prompts, w.num_groups, w.prefix_len, w.suffix_len, w.output_len);
    } else {
      std::printf("workload: random, %d requests, input %d, output %d\n", w.num_prompts,
                  w.input_len, w.output_len);
    }

    std::vector<RunResult> results;
    std::vector<bool> modes = {cfg.disable_radix_cache};
    if (compare_no_cache && !cfg.disable_radix_cache) modes.push_back(true);
    for (bool disable : modes) {
      SchedulerConfig run_cfg = cfg;
      run_cfg.disable_radix_cache = disable;
      Scheduler sched(run_cfg, model, tok);
      if (!no_warmup) {
        // Pages the weights in and sizes the scratch buffers; then the cache is emptied.
        GenerateRequest warm =
            make_requests(Workload{.num_prompts = 1, .input_len = 16, .output_len = 2, .seed = 99},
                          mc.vocab_size)[0];
        warm.rid = "warmup";
        sched.generate({warm});
        sched.flush_cache();
      }
      std::printf(
          "scheduler: max running %lld, KV pool %lld tokens, page %lld, chunked prefill "
          "%lld, radix cache %s\n",
          static_cast<long long>(sched.config().max_running_requests),
          static_cast<long long>(sched.kv_pool_size().usable_tokens),
          static_cast<long long>(run_cfg.page_size),
          static_cast<long long>(run_cfg.chunked_prefill_size), disable ? "off" : "on");
      std::fflush(stdout);
      results.push_back(
          run_workload(sched, reqs, w.output_len, disable ? "no radix cache" : "radix cache"));
    }

    if (!no_ceilings) {
      // Measured again after the figures; fractions use the higher of the two (conservative).
      const Ceilings end = measure_ceilings(pool);
      std::printf("%s (measured again at the end)\n", describe(end).c_str());
      c = best_of(c, end);
    }
    for (const auto& r : results) print_result(r, c, lc);
    if (results.size() == 2) {
      std::printf(
          "\nSpeed-up of the radix cache: %.2fx in duration (%.2f s vs %.2f s), hit rate "
          "%.1f %% vs %.1f %%\n",
          results[1].total_s / results[0].total_s, results[0].total_s, results[1].total_s,
          100.0 * results[0].stats.num_cached_tokens / results[0].input_tokens,
          100.0 * results[1].stats.num_cached_tokens / results[1].input_tokens);
    }
    std::printf("load average at end: %.2f\n", load_average());
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
