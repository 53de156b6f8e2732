// bench_serving: online serving benchmark of a running server (after SGLang's bench_serving).
// Sends streamed requests (random or generated-shared-prefix workloads; greedy, ignore_eos, so
// each request produces exactly the tokens asked for) at a Poisson request rate or all at once,
// capped at --max-concurrency in flight, and measures per request the time to first token, the
// inter-token latencies (the gap between two chunks divided over the chunk's tokens), TPOT and
// end-to-end latency. Prints SGLang's result table beside this machine's ceilings (memory
// bandwidth, SGEMM rate, measured before and after the run while the server is idle) and the
// decode roofline of the served model, and writes everything as JSON (--output-file).

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "ceilings.h"
#include "dpserve/common/errors.h"
#include "dpserve/common/progress.h"
#include "dpserve/common/thread_pool.h"
#include "roofline.h"
#include "serving_client.h"
#include "serving_dataset.h"
#include "serving_metrics.h"

namespace dpserve::bench {
namespace {

using nlohmann::json;

// Every command-line option.
struct Options {
  std::string host = "127.0.0.1";
  int port = 30000;
  std::string base_url;
  std::string backend = "sglang";
  std::string model;
  std::string model_path;  // for the roofline; default: /get_model_info's model_path
  DatasetOptions dataset;
  std::string prompt_kind = "auto";  // ids, text, auto (ids for sglang, text for openai)
  double tokens_per_word = 0;        // 0: measured with one probe request
  std::string request_rate = "inf";
  int64_t max_concurrency = 0;  // 0: no cap
  std::string output_file;
  bool output_details = false;
  bool disable_progress_bar = false;
  int64_t warmup_requests = 1;
  bool flush_cache = false;
  bool no_ceilings = false;
  int ceiling_threads = 0;
  double timeout_s = 3600;
  std::string extra_request_body;
};

// A counting semaphore whose limit may be "none".
class Limiter {
 public:
  explicit Limiter(int64_t limit) : limit_(limit) {}
  void acquire() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return limit_ <= 0 || in_use_ < limit_; });
    ++in_use_;
    peak_ = std::max(peak_, in_use_);
  }
  void release() {
    {
      std::lock_guard lock(mu_);
      --in_use_;
    }
    cv_.notify_one();
  }
  int64_t peak() const {
    std::lock_guard lock(mu_);
    return peak_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int64_t limit_;
  int64_t in_use_ = 0;
  int64_t peak_ = 0;
};

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

double parse_rate(const std::string& s) {
  if (s == "inf" || s == "Inf" || s == "INF") return std::numeric_limits<double>::infinity();
  try {
    size_t pos = 0;
    const double r = std::stod(s, &pos);
    if (pos == s.size() && r > 0) return r;
  } catch (const std::exception&) {
  }
  throw_error("--request-rate must be a number > 0 or inf, got \"{}\"", s);
}

// The kernel's count of connections dropped because a listen queue was full (TcpExt
// ListenOverflows, machine-wide; -1 when unavailable). Each drop costs a client a SYN retransmit,
// one second on Linux, which shows up as a TTFT of about 1 s.
int64_t listen_overflows() {
  std::ifstream f("/proc/net/netstat");
  std::string header, values;
  while (std::getline(f, header) && std::getline(f, values)) {
    if (!header.starts_with("TcpExt:")) continue;
    std::istringstream hs(header), vs(values);
    std::string name, value;
    while (hs >> name && vs >> value) {
      if (name == "ListenOverflows") return std::stoll(value);
    }
  }
  return -1;
}

json ceilings_json(const Ceilings& c) {
  return {{"threads", c.threads},
          {"read_gbps", c.read_gbps},
          {"sgemm_gflops", c.sgemm_gflops},
          {"sgemm_blas_gflops", c.sgemm_blas_gflops},
          {"sgemm_split_gflops", c.sgemm_split_gflops}};
}

// Runs `reqs` at their arrival times with at most `limit` in flight; `t0` is set to the start.
std::vector<RequestOutput> run_requests(const ServingClient& client,
                                        const std::vector<BenchRequest>& reqs,
                                        const std::vector<double>& arrivals, Limiter& limiter,
                                        bool progress, double& t0) {
  std::vector<RequestOutput> outputs(reqs.size());
  std::optional<ProgressBar> bar;
  if (progress) bar.emplace("requests", static_cast<int64_t>(reqs.size()));
  std::mutex bar_mu;
  std::vector<std::thread> threads;
  threads.reserve(reqs.size());
  t0 = steady_seconds();
  for (size_t i = 0; i < reqs.size(); ++i) {
    const double wait = t0 + arrivals[i] - steady_seconds();
    if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
    limiter.acquire();  // like SGLang's semaphore: a request past the cap waits for a slot
    threads.emplace_back([&, i, start = t0] {
      outputs[i] = client.send(reqs[i], start);
      limiter.release();
      if (bar) {
        std::lock_guard lock(bar_mu);
        bar->advance(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  if (bar) bar->finish();
  return outputs;
}

// Tokens per random word as the server counts them: one probe request of up to 100 words (fewer
// for a short context: a word takes a few tokens at most).
double probe_tokens_per_word(const ServingClient& client, int64_t context_length) {
  std::mt19937_64 rng(12345);
  BenchRequest probe;
  const int64_t kWords = context_length > 0 ? std::clamp<int64_t>(context_length / 8, 1, 100) : 100;
  probe.text = random_words(rng, kWords);
  probe.output_len = 1;
  const RequestOutput o = client.send(probe, steady_seconds());
  if (!o.success || o.prompt_len <= 0) {
    throw_error("the probe request for tokens per word failed ({}); pass --tokens-per-word",
                o.success ? "no prompt token count in the answer" : o.error);
  }
  return static_cast<double>(o.prompt_len) / static_cast<double>(kWords);
}

json request_json(const RequestOutput& o) {
  return {{"success", o.success},
          {"error", o.error},
          {"prompt_len", o.prompt_len},
          {"output_len", o.output_len},
          {"expected_output_len", o.expected_output_len},
          {"cached_tokens", o.cached_tokens},
          {"finish_reason", o.finish_reason},
          {"start_s", o.start},
          {"ttft_s", o.ttft},
          {"latency_s", o.latency},
          {"tpot_s", o.tpot()},
          {"itl_s", o.itl}};
}

std::optional<LinearCost> model_cost(const std::string& dir) {
  if (dir.empty() || !std::filesystem::is_directory(dir)) return std::nullopt;
  try {
    return linear_cost(ModelConfig::from_dir(dir), dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "note: no roofline for %s: %s\n", dir.c_str(), e.what());
    return std::nullopt;
  }
}

int run(const Options& opt, const std::string& command_line) {
  ClientOptions co;
  co.base_url =
      opt.base_url.empty() ? fmt::format("http://{}:{}", opt.host, opt.port) : opt.base_url;
  while (!co.base_url.empty() && co.base_url.back() == '/') co.base_url.pop_back();
  co.backend = parse_backend(opt.backend);
  co.timeout_s = opt.timeout_s;
  if (!opt.extra_request_body.empty()) {
    co.extra_body = json::parse(opt.extra_request_body, nullptr, false);
    if (!co.extra_body.is_object()) {
      throw_error("--extra-request-body must be a JSON object, got {}", opt.extra_request_body);
    }
  }
  const double rate = parse_rate(opt.request_rate);

  // What the server says about itself (dpserve and SGLang both answer these).
  ServingClient probe_client(co);
  json model_info = json::object(), server_info = json::object();
  try {
    model_info = probe_client.get_json("/get_model_info");
  } catch (const Error& e) {
    std::fprintf(stderr, "note: %s\n", e.what());
  }
  try {
    server_info = probe_client.get_json("/get_server_info");
  } catch (const Error& e) {
    std::fprintf(stderr, "note: %s\n", e.what());
  }
  if (!model_info.is_object()) model_info = json::object();
  if (!server_info.is_object()) server_info = json::object();
  co.model = opt.model;
  if (co.model.empty() && co.backend == Backend::kOpenai) {
    try {
      const json models = probe_client.get_json("/v1/models");
      co.model = models.at("data").at(0).at("id").get<std::string>();
    } catch (const std::exception&) {
      co.model = model_info.value("served_model_name", std::string("default"));
    }
  }
  if (co.model.empty()) co.model = model_info.value("served_model_name", std::string());
  const ServingClient client(co);

  const int64_t context = model_info.value("context_length", int64_t{0});
  DatasetOptions d = opt.dataset;
  if (d.vocab_size <= 0) d.vocab_size = model_info.value("vocab_size", int64_t{0});
  d.text_prompts =
      opt.prompt_kind == "text" || (opt.prompt_kind == "auto" && co.backend == Backend::kOpenai);
  if (opt.prompt_kind != "ids" && opt.prompt_kind != "text" && opt.prompt_kind != "auto") {
    throw_error("--prompt-kind must be ids, text or auto, got \"{}\"", opt.prompt_kind);
  }
  if (d.text_prompts) {
    d.tokens_per_word =
        opt.tokens_per_word > 0 ? opt.tokens_per_word : probe_tokens_per_word(client, context);
  }
  const std::vector<BenchRequest> reqs = make_dataset(d);
  int64_t sum_in = 0, sum_out = 0, longest = 0;
  for (const BenchRequest& r : reqs) {
    sum_in += r.prompt_len;
    sum_out += r.output_len;
    longest = std::max(longest, r.prompt_len + r.output_len);
  }
  if (context > 0 && longest > context) {
    throw_error(
        "the longest request needs {} tokens (prompt + output) but the model's context length "
        "is {}; lower the input / output lengths",
        longest, context);
  }
  std::printf("#Input tokens: %lld\n#Output tokens: %lld\n", static_cast<long long>(sum_in),
              static_cast<long long>(sum_out));
  if (d.text_prompts) std::printf("Text prompts: %.3f tokens per word\n", d.tokens_per_word);

  // Warm-up (the first request's prompt, SGLang's choice), then optionally an empty cache.
  if (opt.warmup_requests > 0 && !reqs.empty()) {
    std::printf("Starting warmup with %lld sequences...\n",
                static_cast<long long>(opt.warmup_requests));
    std::fflush(stdout);
    const std::vector<BenchRequest> warm(static_cast<size_t>(opt.warmup_requests), reqs[0]);
    Limiter unlimited(0);
    double t0 = 0;
    const auto outs =
        run_requests(client, warm, std::vector<double>(warm.size(), 0.0), unlimited, false, t0);
    const auto ok = std::count_if(outs.begin(), outs.end(), [](auto& o) { return o.success; });
    if (ok == 0) {
      throw_error("warmup failed, is the server running at {}? {}", co.base_url, outs[0].error);
    }
    std::printf("Warmup finished: %lld of %lld succeeded\n", static_cast<long long>(ok),
                static_cast<long long>(outs.size()));
  }
  if (opt.flush_cache && !client.post_empty("/flush_cache")) {
    std::fprintf(stderr, "warning: POST /flush_cache failed\n");
  }

  // Ceilings while the server is idle (before and after the run), and the load beside us.
  const int ceiling_threads = opt.ceiling_threads > 0 ? opt.ceiling_threads : default_num_threads();
  std::optional<ThreadPool> pool;
  Ceilings c_start, c_end;
  if (!opt.no_ceilings) {
    pool.emplace(ceiling_threads);
    c_start = measure_ceilings(*pool);
    std::printf("start: %s\n", describe(c_start).c_str());
  }
  const double load_start = load_average();
  const std::string started_at = utc_now();
  std::printf("Benchmark: %lld requests, request rate %s, max concurrency %s\n",
              static_cast<long long>(reqs.size()), opt.request_rate.c_str(),
              opt.max_concurrency > 0 ? std::to_string(opt.max_concurrency).c_str() : "not set");
  std::fflush(stdout);

  const int64_t overflows_start = listen_overflows();
  Limiter limiter(opt.max_concurrency);
  double t0 = 0;
  const std::vector<RequestOutput> outputs =
      run_requests(client, reqs, arrival_times(static_cast<int64_t>(reqs.size()), rate, d.seed),
                   limiter, !opt.disable_progress_bar, t0);
  double duration = 0;
  for (const RequestOutput& o : outputs) duration = std::max(duration, o.start + o.latency);
  const double load_end = load_average();
  const int64_t overflows =
      overflows_start >= 0 ? listen_overflows() - overflows_start : int64_t{-1};
  if (!opt.no_ceilings) {
    c_end = measure_ceilings(*pool);
    std::printf("end: %s\n", describe(c_end).c_str());
  }

  const BenchmarkMetrics m = compute_metrics(outputs, duration, limiter.peak());
  std::vector<std::pair<std::string, std::string>> header = {
      {"Backend", backend_name(co.backend)},
      {"Dataset", d.name},
      {"Traffic request rate", opt.request_rate},
      {"Max request concurrency",
       opt.max_concurrency > 0 ? std::to_string(opt.max_concurrency) : "not set"}};
  std::vector<std::pair<std::string, std::string>> footer = {
      {"Load average (start / end)", fmt::format("{:.2f} / {:.2f}", load_start, load_end)},
      {"TCP listen queue overflows (machine)", std::to_string(overflows)}};

  json ceilings = nullptr, roofline = nullptr;
  const std::string model_path =
      !opt.model_path.empty() ? opt.model_path : model_info.value("model_path", std::string());
  if (!opt.no_ceilings) {
    const Ceilings best = best_of(c_start, c_end);
    footer.emplace_back("Memory read bandwidth (GB/s)",
                        fmt::format("{:.1f} (start {:.1f}, end {:.1f}, {} threads)", best.read_gbps,
                                    c_start.read_gbps, c_end.read_gbps, best.threads));
    footer.emplace_back("SGEMM (GFLOP/s)",
                        fmt::format("{:.1f} (start {:.1f}, end {:.1f})", best.sgemm_gflops,
                                    c_start.sgemm_gflops, c_end.sgemm_gflops));
    ceilings = {{"start", ceilings_json(c_start)},
                {"end", ceilings_json(c_end)},
                {"best", ceilings_json(best)}};
    if (const auto lc = model_cost(model_path)) {
      // Decode at the achieved concurrency: every in-flight request adds a row to the batch.
      const int64_t batch = std::max<int64_t>(1, std::llround(m.concurrency));
      const DecodeRoofline r = decode_roofline(best, *lc, batch);
      const double frac = r.tps > 0 ? m.output_throughput / r.tps : 0;
      footer.emplace_back(fmt::format("Decode roofline, batch {} (tok/s)", batch),
                          fmt::format("{:.1f} (bandwidth {:.1f}, flops {:.1f})", r.tps,
                                      r.bandwidth_tps, r.flops_tps));
      footer.emplace_back("Output throughput / decode roofline",
                          fmt::format("{:.0f} %", 100.0 * frac));
      roofline = {{"model_path", model_path},
                  {"weight_bytes", lc->weight_bytes()},
                  {"batch", batch},
                  {"decode_tps", r.tps},
                  {"decode_bandwidth_tps", r.bandwidth_tps},
                  {"decode_flops_tps", r.flops_tps},
                  {"output_throughput_fraction", frac}};
    }
  }
  print_metrics(m, header, footer);

  std::vector<std::string> errors;
  for (const RequestOutput& o : outputs) {
    if (!o.success && errors.size() < 10) errors.push_back(o.error);
  }
  for (const std::string& e : errors) std::fprintf(stderr, "request failed: %s\n", e.c_str());
  if (overflows > 0) {
    std::printf(
        "NOTE: %lld connections overflowed a listen queue during the run (the server's accept "
        "backlog is too short for this burst, or another process's was); each waited for a "
        "1 s SYN retransmit, which shows in TTFT\n",
        static_cast<long long>(overflows));
  }

  if (!opt.output_file.empty()) {
    json out = {
        {"tool", "dpserve bench_serving"},
        {"command", command_line},
        {"started_at", started_at},
        {"backend", backend_name(co.backend)},
        {"base_url", co.base_url},
        {"model", co.model},
        {"dataset_name", d.name},
        {"prompt_kind", d.text_prompts ? "text" : "ids"},
        {"tokens_per_word", d.text_prompts ? json(d.tokens_per_word) : json(nullptr)},
        {"num_prompts", static_cast<int64_t>(reqs.size())},
        {"random_input_len", d.random_input_len},
        {"random_output_len", d.random_output_len},
        {"random_range_ratio", d.random_range_ratio},
        {"gsp_num_groups", d.gsp_num_groups},
        {"gsp_prompts_per_group", d.gsp_prompts_per_group},
        {"gsp_system_prompt_len", d.gsp_system_prompt_len},
        {"gsp_question_len", d.gsp_question_len},
        {"gsp_output_len", d.gsp_output_len},
        {"request_rate", std::isfinite(rate) ? json(rate) : json("inf")},
        {"max_concurrency", opt.max_concurrency > 0 ? json(opt.max_concurrency) : json(nullptr)},
        {"seed", d.seed},
        {"warmup_requests", opt.warmup_requests},
        {"load_average_start", load_start},
        {"load_average_end", load_end},
        {"tcp_listen_overflows", overflows},
        {"ceilings", ceilings},
        {"decode_roofline", roofline},
        {"server",
         {{"model_path", model_info.value("model_path", std::string())},
          {"context_length", context},
          {"vocab_size", model_info.value("vocab_size", int64_t{0})},
          {"max_total_num_tokens", server_info.value("max_total_num_tokens", int64_t{0})}}},
        {"metrics", m.to_json()},
        {"errors", errors}};
    if (opt.output_details) {
      json details = json::array();
      for (const RequestOutput& o : outputs) details.push_back(request_json(o));
      out["requests"] = std::move(details);
    }
    std::ofstream f(opt.output_file);
    if (!f) throw_error("cannot write --output-file {}", opt.output_file);
    f << out.dump(2) << "\n";
    std::printf("Results written to %s\n", opt.output_file.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace dpserve::bench

int main(int argc, char** argv) {
  using namespace dpserve::bench;
  CLI::App app{"Online serving benchmark of a running server (SGLang's bench_serving)"};
  Options o;
  DatasetOptions& d = o.dataset;
  app.add_option("--host", o.host, "server host")->capture_default_str();
  app.add_option("--port", o.port, "server port")->capture_default_str();
  app.add_option("--base-url", o.base_url, "http://host:port (overrides --host / --port)");
  app.add_option("--backend", o.backend, "sglang (/generate) or openai (/v1/completions)")
      ->capture_default_str();
  app.add_option("--model", o.model,
                 "model name sent to the openai backend (default: /v1/models' first)");
  app.add_option("--model-path", o.model_path,
                 "checkpoint for the decode roofline (default: the server's model_path)");
  app.add_option("--dataset-name", d.name, "random or generated-shared-prefix")
      ->capture_default_str();
  app.add_option("--num-prompts", d.num_prompts, "random: number of requests")
      ->capture_default_str();
  app.add_option("--random-input-len", d.random_input_len, "random: longest prompt (tokens)")
      ->capture_default_str();
  app.add_option("--random-output-len", d.random_output_len, "random: longest output (tokens)")
      ->capture_default_str();
  app.add_option("--random-range-ratio", d.random_range_ratio,
                 "random: lengths are uniform in [max(1, int(L * ratio)), L]")
      ->capture_default_str();
  app.add_option("--gsp-num-groups", d.gsp_num_groups, "shared prefix: system prompts")
      ->capture_default_str();
  app.add_option("--gsp-prompts-per-group", d.gsp_prompts_per_group,
                 "shared prefix: questions per system prompt")
      ->capture_default_str();
  app.add_option("--gsp-system-prompt-len", d.gsp_system_prompt_len,
                 "shared prefix: system prompt tokens")
      ->capture_default_str();
  app.add_option("--gsp-question-len", d.gsp_question_len, "shared prefix: question tokens")
      ->capture_default_str();
  app.add_option("--gsp-output-len", d.gsp_output_len, "shared prefix: output tokens")
      ->capture_default_str();
  app.add_option("--vocab-size", d.vocab_size,
                 "token ids are drawn from [1, vocab); default: /get_model_info's vocab_size");
  app.add_option("--prompt-kind", o.prompt_kind,
                 "ids (random token ids), text (random words) or auto (ids for sglang, text "
                 "for openai)")
      ->capture_default_str();
  app.add_option("--tokens-per-word", o.tokens_per_word,
                 "text prompts: tokens per word (default: measured with one probe request)");
  app.add_option("--request-rate", o.request_rate,
                 "requests per second (Poisson arrivals), or inf to send all at once")
      ->capture_default_str();
  app.add_option("--max-concurrency", o.max_concurrency, "most requests in flight (0 = no cap)")
      ->capture_default_str();
  app.add_option("--seed", d.seed, "seed of prompts, lengths and arrivals")->capture_default_str();
  app.add_option("--output-file", o.output_file, "write the results as JSON to this file");
  app.add_flag("--output-details", o.output_details, "add every request's figures to the JSON");
  app.add_flag("--disable-progress-bar,--disable-tqdm", o.disable_progress_bar,
               "no progress bar (it is drawn only on a tty anyway)");
  app.add_option("--warmup-requests", o.warmup_requests,
                 "requests sent (at once) before the benchmark")
      ->capture_default_str();
  app.add_flag("--flush-cache", o.flush_cache, "POST /flush_cache after the warmup");
  app.add_flag("--no-ceilings", o.no_ceilings,
               "skip measuring memory bandwidth and SGEMM (a few seconds before and after)");
  app.add_option("--ceiling-threads", o.ceiling_threads,
                 "threads for the ceilings (default: all CPUs)");
  app.add_option("--timeout", o.timeout_s, "read timeout of one request, seconds")
      ->capture_default_str();
  app.add_option("--extra-request-body", o.extra_request_body,
                 "JSON object merged into every request (sglang: a \"sampling_params\" "
                 "object, or keys already sent there, go into sampling_params)");
  CLI11_PARSE(app, argc, argv);
  std::string command_line;
  for (int i = 0; i < argc; ++i) command_line += (i > 0 ? " " : "") + std::string(argv[i]);
  try {
    return run(o, command_line);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_serving: error: %s\n", e.what());
    return 1;
  }
}
