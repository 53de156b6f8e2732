// dpserve_bench_tp_gloo: tensor-parallel decode with every rank a process and the collectives on
// Gloo over TCP (127.0.0.1), the way the server runs TP. The threads-as-ranks variant is
// dpserve_bench_tp (bench_tp.cc).
//
// The parent process never creates a thread pool, a Gloo context or a model: it forks one
// process per rank of every configuration (TPxTHREADS_PER_RANK, default 1xT, 2xT and 1x(2T) for
// the same cores), and one process per ceilings measurement. Each TP rank joins a
// GlooProcessGroup over a FileStore in a temp dir, wraps it in a TimedProcessGroup
// (bench/timed_group.h), loads its shard of the model and waits for commands on a pipe. The
// parent then runs the configurations round-robin, one at a time: for each batch size a prompt
// forward (prefill) and timed greedy decode steps. For TP > 1 every round runs twice: plainly
// (step time and time inside each collective, waiting for the slower rank included) and in the
// diagnostic mode with a barrier before each all-reduce (the wait for the slower rank apart from
// the transfer), followed by the collectives alone at the same sizes. Best and median over the
// rounds are printed beside the machine's ceilings (bench/ceilings.h) and rooflines
// (bench/roofline.h).
//
// --awake-ab repeats everything in each round with one SCHED_IDLE busy-loop process per CPU. They
// run only when a CPU would otherwise idle, so an idle vCPU never halts: on this VM a wake-up of a
// halted vCPU takes up to a 4 ms tick, and the A/B tells that delay apart from Gloo's own cost.

#include <sched.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gloo/rendezvous/file_store.h>
#include <CLI/CLI.hpp>

#include "ceilings.h"
#include "dpserve/common/errors.h"
#include "dpserve/common/thread_pool.h"
#include "dpserve/distributed/gloo_group.h"
#include "dpserve/model/models/llama.h"
#include "forward_step.h"
#include "roofline.h"
#include "timed_group.h"

namespace dpserve::bench {
namespace {

constexpr int kMaxBatches = 8;  // batch sizes per run (fixed-size results cross a pipe)

// Seconds on the steady clock.
// Median of v (0 when empty).
double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Smallest of v (0 when empty): the best time.
double best(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::min_element(v.begin(), v.end());
}

// Writes or reads exactly `n` bytes (false on EOF or error).
bool write_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}
bool read_all(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t r = ::read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// One configuration: TP ranks (processes) x threads per rank.
struct Config {
  int tp = 1;       // ranks
  int threads = 1;  // per rank
  // Cores in use.
  int cores() const { return tp * threads; }
  // "TP=2 x 1 thread (processes, Gloo)".
  std::string label() const {
    return "TP=" + std::to_string(tp) + " x " + std::to_string(threads) + " thread" +
           (threads > 1 ? "s" : "") + (tp > 1 ? " (processes, Gloo)" : " (1 process)");
  }
};

// Command-line settings every rank needs.
struct Options {
  std::string model_path = "models-gen/tinyllama-1.1b-bf16";  // checkpoint directory
  std::vector<int> batches = {1, 16};                         // decode batch sizes
  int prompt_len = 16;                                        // prompt tokens per sequence
  int steps = 16;                                             // timed decode steps per batch size
  int iso_reps = 50;                                          // calls per collective timed alone
  int timeout_s = 600;                                        // Gloo timeout
};

// What the parent asks a rank to do.
struct Command {
  int quit = 0;        // 1: exit
  int round = 0;       // seeds the prompts (same on every rank)
  int split_wait = 0;  // diagnostic mode: barrier before each all-reduce
};

// One rank's figures for one batch size in one round (plain data: it crosses a pipe).
struct BatchResult {
  int batch = 0;
  double prefill_s = 0;                     // the prompt forward (batch x prompt_len tokens)
  double step_s = 0;                        // mean decode step
  double op_s[kNumCollectiveOps] = {};      // per decode step, per operation
  double op_calls[kNumCollectiveOps] = {};  // per decode step: calls per operation
  double op_slow[kNumCollectiveOps] = {};   // per decode step: calls of at least 2 ms
  double iso_reduce_s = 0;      // all_reduce of batch x hidden floats alone: median per call
  double iso_reduce_p10_s = 0;  // same, 10th percentile
  double iso_gatherv_s = 0;     // all_gatherv of batch x vocab floats alone: median per call
  double iso_barrier_s = 0;     // barrier alone: median per call
};

// A rank's answer to a command, or its ready message (n == 0).
struct RoundResult {
  int ok = 1;                  // 0: the rank failed (error holds why) and exits
  int n = 0;                   // entries of b
  double load_s = 0;           // ready message: seconds to join the group and load the model
  double owned_mb = 0;         // ready message: MB of copied weight slices on this rank
  BatchResult b[kMaxBatches];  // one per batch size
  char error[512] = {};        // the failure, when !ok
};

// One process-local rank: its model, pool, KV cache and (TP > 1) groups.
struct Rank {
  std::unique_ptr<GlooProcessGroup> gloo;    // the TP group (null with one rank)
  std::unique_ptr<TimedProcessGroup> timer;  // gloo, timed; the model's tp_group
  std::unique_ptr<LlamaForCausalLM> model;   // this rank's shard
  std::unique_ptr<ThreadPool> pool;          // --num-threads threads
  std::unique_ptr<KVPool> kv;                // this rank's KV heads
  std::vector<float> logits;                 // the last forward's logits (all vocab)
};

// Median and 10th percentile of `reps` calls of fn (after a barrier that lines the ranks up).
std::pair<double, double> time_calls(ProcessGroup& g, int reps, const std::function<void()>& fn) {
  g.barrier();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const double t0 = now_s();
    fn();
    t.push_back(now_s() - t0);
  }
  std::sort(t.begin(), t.end());
  return {median(t), t[t.size() / 10]};
}

// One round on one rank: per batch size a prompt forward and `steps` timed decode steps (every
// rank runs the same steps: greedy tokens from the same gathered logits), then for TP > 1 outside
// the diagnostic mode the collectives alone at the sizes of this batch.
RoundResult run_round(Rank& rk, const Options& o, const std::vector<int>& batches, int steps,
                      uint32_t seed, bool split_wait) {
  const ModelConfig& cfg = rk.model->config();
  const int64_t vocab = cfg.vocab_size;
  const int64_t hidden = cfg.hidden_size;
  std::mt19937 rng(seed);
  RoundResult res;
  if (rk.timer) rk.timer->set_split_wait(split_wait);
  for (int b : batches) {
    BatchResult& f = res.b[res.n++];
    f.batch = b;
    const DecodeTimes t = greedy_decode_run(*rk.model, *rk.kv, *rk.pool, rk.logits, b, o.prompt_len,
                                            steps, 31999, rng, [&] {
                                              if (rk.timer) rk.timer->reset();
                                            });
    f.prefill_s = t.prefill_s;
    f.step_s = t.decode_s / steps;
    if (!rk.timer) continue;
    for (int op = 0; op < kNumCollectiveOps; ++op) {
      const OpTime& t = rk.timer->time(static_cast<CollectiveOp>(op));
      f.op_s[op] = t.seconds / steps;
      f.op_calls[op] = static_cast<double>(t.calls) / steps;
      f.op_slow[op] = static_cast<double>(t.slow) / steps;
    }
    if (split_wait || o.iso_reps <= 0) continue;
    // The collectives alone, the ranks lined up: what they cost when no rank is late.
    ProcessGroup& g = *rk.gloo;
    std::vector<float> buf(static_cast<size_t>(b * hidden), 1.0f);
    const auto reduce =
        time_calls(g, o.iso_reps, [&] { g.all_reduce_sum(buf.data(), b * hidden); });
    f.iso_reduce_s = reduce.first;
    f.iso_reduce_p10_s = reduce.second;
    std::vector<int64_t> counts(static_cast<size_t>(g.size()));
    for (int r = 0; r < g.size(); ++r) {
      const int64_t lo = vocab * r / g.size(), hi = vocab * (r + 1) / g.size();
      counts[r] = b * (hi - lo);
    }
    std::vector<float> in(static_cast<size_t>(counts[g.rank()]), 1.0f);
    std::vector<float> out(static_cast<size_t>(b * vocab));
    f.iso_gatherv_s =
        time_calls(g, o.iso_reps, [&] { g.all_gatherv(in.data(), out.data(), counts); }).first;
    f.iso_barrier_s = time_calls(g, o.iso_reps, [&] { g.barrier(); }).first;
  }
  if (rk.timer) rk.timer->set_split_wait(false);
  return res;
}

// Body of one rank process: joins the group, loads the model, answers commands until told to quit.
void rank_main(const Options& o, const Config& c, int rank, const std::string& store_dir,
               int cmd_fd, int res_fd) {
  RoundResult ready;
  try {
    const double t0 = now_s();
    Rank rk;
    if (c.tp > 1) {
      GlooTransportOptions t;
      t.hostname = "127.0.0.1";
      t.timeout = std::chrono::seconds(o.timeout_s);
      rk.gloo = std::make_unique<GlooProcessGroup>(
          "tp", rank, c.tp, std::make_shared<gloo::rendezvous::FileStore>(store_dir), "tp", t);
      rk.timer = std::make_unique<TimedProcessGroup>(*rk.gloo);
    }
    const ModelConfig cfg = ModelConfig::from_dir(o.model_path);
    auto weights = std::make_shared<const WeightStore>(o.model_path);
    ModelOptions opt;
    opt.show_progress = false;
    opt.tp_size = c.tp;
    opt.tp_rank = rank;
    opt.tp_group = rk.timer.get();
    rk.model = std::make_unique<LlamaForCausalLM>(cfg, weights, opt);
    rk.pool = std::make_unique<ThreadPool>(c.threads);
    const int max_batch = *std::max_element(o.batches.begin(), o.batches.end());
    rk.kv = std::make_unique<KVPool>(
        rk.model->make_kv_pool(int64_t{max_batch} * (o.prompt_len + o.steps + 1) + 64));
    // Warm-up: pages the weights in and sizes every scratch buffer.
    run_round(rk, o, {1}, 1, 1, false);
    ready.load_s = now_s() - t0;
    ready.owned_mb = static_cast<double>(rk.model->owned_weight_bytes()) / 1e6;
    if (!write_all(res_fd, &ready, sizeof(ready))) return;
    Command cmd;
    while (read_all(cmd_fd, &cmd, sizeof(cmd)) && !cmd.quit) {
      const RoundResult r = run_round(rk, o, o.batches, o.steps, 100 + cmd.round, cmd.split_wait);
      if (!write_all(res_fd, &r, sizeof(r))) return;
    }
  } catch (const std::exception& e) {
    ready.ok = 0;
    std::snprintf(ready.error, sizeof(ready.error), "rank %d of %s: %s", rank, c.label().c_str(),
                  e.what());
    write_all(res_fd, &ready, sizeof(ready));
  }
}

// A forked child with a command pipe (parent writes) and a result pipe (parent reads).
struct Child {
  pid_t pid = -1;
  int cmd_fd = -1;  // parent's write end
  int res_fd = -1;  // parent's read end
};

std::vector<int> g_parent_fds;  // every pipe end the parent holds (closed in each new child)

// Forks a child running body(cmd_fd, res_fd); it exits when body returns and dies with the parent.
Child fork_child(const std::function<void(int, int)>& body) {
  int cmd[2], res[2];
  if (pipe(cmd) != 0 || pipe(res) != 0) throw_error("pipe: {}", std::strerror(errno));
  std::fflush(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) throw_error("fork: {}", std::strerror(errno));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(3);
    for (int fd : g_parent_fds) close(fd);
    close(cmd[1]);
    close(res[0]);
    int code = 0;
    try {
      body(cmd[0], res[1]);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      code = 1;
    }
    std::fflush(nullptr);
    _exit(code);
  }
  close(cmd[0]);
  close(res[1]);
  g_parent_fds.push_back(cmd[1]);
  g_parent_fds.push_back(res[0]);
  return {pid, cmd[1], res[0]};
}

// Closes the child's pipes and waits for it to exit.
void reap(const Child& c) {
  close(c.cmd_fd);
  close(c.res_fd);
  int status = 0;
  waitpid(c.pid, &status, 0);
}

// Measures the ceilings with `threads` threads in a child process.
Ceilings ceilings_in_child(int threads) {
  const Child ch = fork_child([threads](int, int res_fd) {
    ThreadPool pool(threads);
    const Ceilings c = measure_ceilings(pool);
    write_all(res_fd, &c, sizeof(c));
  });
  Ceilings c;
  c.threads = threads;
  const bool ok = read_all(ch.res_fd, &c, sizeof(c));
  reap(ch);
  if (!ok) throw_error("the ceilings process ({} threads) died", threads);
  return c;
}

// Every round's results for one configuration and one mode, per rank.
struct Series {
  std::vector<std::vector<BatchResult>> rank_rounds;  // [rank] -> one entry per round and batch
};

// Values of `get` over the rounds of rank r for batch index j (nb batch sizes per round).
std::vector<double> values(const Series& s, int r, size_t j, size_t nb,
                           const std::function<double(const BatchResult&)>& get) {
  std::vector<double> v;
  const auto& rr = s.rank_rounds[static_cast<size_t>(r)];
  for (size_t i = j; i < rr.size(); i += nb) v.push_back(get(rr[i]));
  return v;
}

// "best / median" in milliseconds.
std::string ms_pair(const std::vector<double>& v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2f / %.2f", best(v) * 1e3, median(v) * 1e3);
  return buf;
}

// Prints one configuration's figures in one CPU mode: plain rounds, diagnostic rounds (TP > 1).
void report(const Config& c, const Series& plain, const Series& diag, const Options& o,
            const ModelConfig& cfg, const LinearCost& lc, const Ceilings* cl) {
  const size_t nb = o.batches.size();
  const double layers = static_cast<double>(cfg.num_hidden_layers);
  auto get = [&](const Series& s, int r, size_t j, auto f) { return values(s, r, j, nb, f); };
  for (size_t j = 0; j < nb; ++j) {
    const int b = o.batches[j];
    const auto step_t = get(plain, 0, j, [](const BatchResult& f) { return f.step_s; });
    const auto prefill = get(plain, 0, j, [](const BatchResult& f) { return f.prefill_s; });
    std::printf("  batch %2d: decode %s ms/step = %.1f / %.1f tok/s", b, ms_pair(step_t).c_str(),
                b / best(step_t), b / median(step_t));
    if (cl) {
      const DecodeRoofline roof = decode_roofline(*cl, lc, b);
      std::printf(" = %.0f%% of the roofline %.1f tok/s (%s-bound, %.1f ms/step)",
                  100.0 * b / best(step_t) / roof.tps, roof.tps,
                  roof.bandwidth_tps <= roof.flops_tps ? "bandwidth" : "flops",
                  roof.step_s(b) * 1e3);
    }
    std::printf("; prefill of %d tokens %s ms\n", b * o.prompt_len, ms_pair(prefill).c_str());
    if (c.tp == 1) continue;
    // Plain mode: time inside each collective per step, per rank (waiting included).
    for (int op = 0; op < kNumCollectiveOps; ++op) {
      const auto calls = get(plain, 0, j, [op](const BatchResult& f) { return f.op_calls[op]; });
      if (best(calls) == 0 && median(calls) == 0) continue;
      std::printf("    %-12s %3.0f calls/step:", collective_op_name(static_cast<CollectiveOp>(op)),
                  median(calls));
      for (int r = 0; r < c.tp; ++r) {
        const auto t = get(plain, r, j, [op](const BatchResult& f) { return f.op_s[op]; });
        const auto slow = get(plain, r, j, [op](const BatchResult& f) { return f.op_slow[op]; });
        std::printf(" rank %d %s ms/step (%.1f / %.1f calls >= 2 ms)%s", r, ms_pair(t).c_str(),
                    best(slow), median(slow), r + 1 < c.tp ? "," : "\n");
      }
    }
    // Diagnostic mode: the barrier before each all-reduce takes the wait for the slower rank.
    const auto dstep = get(diag, 0, j, [](const BatchResult& f) { return f.step_s; });
    std::printf("    diagnostic (barrier before each all_reduce): step %s ms;",
                ms_pair(dstep).c_str());
    for (int r = 0; r < c.tp; ++r) {
      const auto w = get(diag, r, j, [](const BatchResult& f) {
        return f.op_s[static_cast<int>(CollectiveOp::kWait)];
      });
      const auto a = get(diag, r, j, [](const BatchResult& f) {
        return f.op_s[static_cast<int>(CollectiveOp::kAllReduce)];
      });
      std::printf(" rank %d wait %s + all_reduce %s ms/step%s", r, ms_pair(w).c_str(),
                  ms_pair(a).c_str(), r + 1 < c.tp ? "," : "\n");
    }
    // The collectives alone, ranks lined up: the transfer cost without any waiting.
    const auto red = get(plain, 0, j, [](const BatchResult& f) { return f.iso_reduce_s; });
    const auto red10 = get(plain, 0, j, [](const BatchResult& f) { return f.iso_reduce_p10_s; });
    const auto gat = get(plain, 0, j, [](const BatchResult& f) { return f.iso_gatherv_s; });
    const auto bar = get(plain, 0, j, [](const BatchResult& f) { return f.iso_barrier_s; });
    const double reduces = median(get(plain, 0, j, [](const BatchResult& f) {
      return f.op_calls[static_cast<int>(CollectiveOp::kAllReduce)];
    }));
    if (red.empty() || best(red) <= 0) continue;
    const double kib = b * static_cast<double>(cfg.hidden_size) * 4 / 1024;
    std::printf(
        "    alone: all_reduce of %.0f KiB %.3f / %.3f ms per call (p10 best %.3f) x %.0f calls "
        "(2 per layer x %.0f layers) = %.2f ms/step; all_gatherv of %.0f KiB logits %s ms; "
        "barrier %s ms\n",
        kib, best(red) * 1e3, median(red) * 1e3, best(red10) * 1e3, reduces, layers,
        reduces * best(red) * 1e3, b * static_cast<double>(cfg.vocab_size) * 4 / 1024,
        ms_pair(gat).c_str(), ms_pair(bar).c_str());
    if (cl) {
      const DecodeRoofline roof = decode_roofline(*cl, lc, b);
      const double coll = reduces * best(red) + best(gat);
      std::printf(
          "    expected: roofline %.1f ms/step (%d cores stream the weights, each rank its 1/%d) + "
          "collectives alone %.2f ms = %.1f ms/step, %.1f tok/s\n",
          roof.step_s(b) * 1e3, c.cores(), c.tp, coll * 1e3, (roof.step_s(b) + coll) * 1e3,
          b / (roof.step_s(b) + coll));
    }
  }
}

}  // namespace
}  // namespace dpserve::bench

int main(int argc, char** argv) {
  using namespace dpserve;
  using namespace dpserve::bench;
  CLI::App app{"Tensor-parallel decode with ranks as processes over Gloo (TCP, 127.0.0.1)"};
  Options o;
  int num_threads = 1;
  int tp_size = 2;
  std::vector<std::string> config_specs;
  int rounds = 3;
  bool skip_ceilings = false;
  bool awake_ab = false;
  app.add_option("--model-path", o.model_path, "checkpoint directory");
  app.add_option("--tp-size", tp_size, "TP ranks of the tensor-parallel configuration");
  app.add_option("--num-threads", num_threads, "threads per rank");
  app.add_option("--config", config_specs,
                 "TPxTHREADS_PER_RANK entries instead of the default 1xT, TPxT, 1x(TP*T)");
  app.add_option("--batch", o.batches, "decode batch sizes (sequences)");
  app.add_option("--prompt-len", o.prompt_len, "prompt tokens per sequence before decoding");
  app.add_option("--decode-steps", o.steps, "decode steps timed per batch size and round");
  app.add_option("--rounds", rounds, "rounds over all configurations (best and median printed)");
  app.add_option("--iso-reps", o.iso_reps, "calls per collective timed alone (0: skip)");
  app.add_option("--timeout", o.timeout_s, "Gloo connect and per-collective timeout, seconds");
  app.add_flag("--no-ceilings", skip_ceilings, "skip measuring the ceilings (fractions are void)");
  app.add_flag("--awake-ab", awake_ab,
               "also run every configuration with one SCHED_IDLE spinner process per CPU, which "
               "keeps idle vCPUs out of halt (A/B within each round; a diagnostic)");
  CLI11_PARSE(app, argc, argv);

  std::vector<Child> children;          // rank processes
  std::vector<Child> spinners;          // --awake-ab: SCHED_IDLE busy loops, stopped when unused
  std::vector<std::string> store_dirs;  // FileStore directories, removed at exit
  struct RemoveDirs {
    std::vector<std::string>& dirs;
    ~RemoveDirs() {
      std::error_code ec;
      for (const std::string& d : dirs) std::filesystem::remove_all(d, ec);
    }
  } remove_dirs{store_dirs};
  auto kill_all = [&] {
    for (auto* v : {&children, &spinners}) {
      for (const Child& ch : *v) kill(ch.pid, SIGKILL);
      for (const Child& ch : *v) reap(ch);
      v->clear();
    }
  };
  try {
    if (o.batches.empty() || o.batches.size() > kMaxBatches) {
      throw_error("--batch: 1 to {} sizes", kMaxBatches);
    }
    std::vector<Config> configs;
    if (config_specs.empty()) {
      configs = {{1, num_threads}, {tp_size, num_threads}, {1, tp_size * num_threads}};
    }
    for (const std::string& s : config_specs) {
      Config c;
      if (std::sscanf(s.c_str(), "%dx%d", &c.tp, &c.threads) != 2 || c.tp < 1 || c.threads < 1) {
        throw_error("--config {}: expected TPxTHREADS, e.g. 2x1", s);
      }
      configs.push_back(c);
    }
    const ModelConfig cfg = ModelConfig::from_dir(o.model_path);
    const LinearCost lc = linear_cost(cfg, o.model_path);
    std::printf(
        "model %s: %lld layers, hidden %lld, heads %lld/%lld kv, vocab %lld, %.2f GB of linear "
        "weights per decode step\n",
        o.model_path.c_str(), static_cast<long long>(cfg.num_hidden_layers),
        static_cast<long long>(cfg.hidden_size), static_cast<long long>(cfg.num_attention_heads),
        static_cast<long long>(cfg.num_key_value_heads), static_cast<long long>(cfg.vocab_size),
        lc.weight_bytes() / 1e9);
    const double load_start = load_average();

    // Ceilings for every total core count, in child processes (the parent stays thread-free).
    std::set<int> core_counts;
    for (const Config& c : configs) core_counts.insert(c.cores());
    std::map<int, Ceilings> ceil;
    if (!skip_ceilings) {
      for (int t : core_counts) {
        ceil[t] = ceilings_in_child(t);
        std::printf("%s\n", describe(ceil[t]).c_str());
      }
    }

    // Fork every rank of every configuration; each loads its shard and reports ready.
    const int modes = awake_ab ? 2 : 1;  // 0: the vCPUs as they are, 1: kept awake by spinners
    // series[mode][config][split]: split 0 plain rounds, 1 diagnostic rounds (TP > 1).
    std::vector<std::vector<std::array<Series, 2>>> series(
        static_cast<size_t>(modes), std::vector<std::array<Series, 2>>(configs.size()));
    std::vector<std::vector<Child>> ranks(configs.size());
    for (size_t i = 0; i < configs.size(); ++i) {
      const Config& c = configs[i];
      const char* base = std::getenv("TMPDIR");
      std::string dir = std::string(base && *base ? base : "/tmp") + "/dpserve_bench_tp_XXXXXX";
      if (mkdtemp(dir.data()) == nullptr) throw_error("mkdtemp: {}", std::strerror(errno));
      store_dirs.push_back(dir);
      for (int r = 0; r < c.tp; ++r) {
        ranks[i].push_back(fork_child(
            [&, r, dir](int cmd_fd, int res_fd) { rank_main(o, c, r, dir, cmd_fd, res_fd); }));
        children.push_back(ranks[i].back());
      }
      for (auto& m : series) {
        for (Series& s : m[i]) s.rank_rounds.resize(static_cast<size_t>(c.tp));
      }
    }
    auto receive = [&](size_t i, int r) {
      RoundResult res;
      if (!read_all(ranks[i][static_cast<size_t>(r)].res_fd, &res, sizeof(res))) {
        throw_error("rank {} of {} died", r, configs[i].label());
      }
      if (!res.ok) throw_error("{}", res.error);
      return res;
    };
    for (size_t i = 0; i < configs.size(); ++i) {
      for (int r = 0; r < configs[i].tp; ++r) {
        const RoundResult res = receive(i, r);
        std::printf("%s rank %d: joined and loaded in %.2f s, %.0f MB of copied weight slices\n",
                    configs[i].label().c_str(), r, res.load_s, res.owned_mb);
      }
    }
    if (awake_ab) {
      const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
      for (long k = 0; k < cpus; ++k) {
        spinners.push_back(fork_child([](int, int) {
          sched_param sp{};
          sched_setscheduler(0, SCHED_IDLE, &sp);
          volatile uint64_t n = 0;
          while (true) n = n + 1;
        }));
        kill(spinners.back().pid, SIGSTOP);
      }
    }

    // Rounds: the configurations one at a time, TP > 1 plainly and then in the diagnostic mode;
    // with --awake-ab all of it once more with the spinners running.
    std::vector<double> round_loads;
    for (int round = 0; round < rounds; ++round) {
      for (int mode = 0; mode < modes; ++mode) {
        for (const Child& sp : spinners) kill(sp.pid, mode ? SIGCONT : SIGSTOP);
        for (size_t i = 0; i < configs.size(); ++i) {
          for (int split = 0; split < (configs[i].tp > 1 ? 2 : 1); ++split) {
            const Command cmd{0, round, split};
            for (const Child& ch : ranks[i]) {
              if (!write_all(ch.cmd_fd, &cmd, sizeof(cmd))) throw_error("a rank is gone");
            }
            for (int r = 0; r < configs[i].tp; ++r) {
              const RoundResult res = receive(i, r);
              auto& dst = series[static_cast<size_t>(mode)][i][static_cast<size_t>(split)]
                              .rank_rounds[static_cast<size_t>(r)];
              dst.insert(dst.end(), res.b, res.b + res.n);
            }
          }
        }
      }
      for (const Child& sp : spinners) kill(sp.pid, SIGSTOP);
      round_loads.push_back(load_average());
      std::fprintf(stderr, "round %d/%d done, load average %.2f\n", round + 1, rounds,
                   round_loads.back());
    }

    std::map<int, Ceilings> ceil_end;
    if (!skip_ceilings) {
      std::printf("\n");
      for (int t : core_counts) {
        ceil_end[t] = ceilings_in_child(t);
        std::printf("%s (measured again at the end)\n", describe(ceil_end[t]).c_str());
        ceil[t] = best_of(ceil[t], ceil_end[t]);
      }
    }
    for (const Child& ch : children) {
      const Command quit{1, 0, 0};
      write_all(ch.cmd_fd, &quit, sizeof(quit));
    }
    for (const Child& ch : children) reap(ch);
    children.clear();
    kill_all();

    std::printf(
        "\n%d rounds of %d decode steps after a %d-token prompt per sequence; figures are best / "
        "median over the rounds, rank 0's clock unless a rank is named; fractions against the "
        "higher ceilings of the cores in use. Load average: %.2f at start, %.2f at end (after "
        "each round:",
        rounds, o.steps, o.prompt_len, load_start, load_average());
    for (double l : round_loads) std::printf(" %.2f", l);
    std::printf(")\n");
    for (int mode = 0; mode < modes; ++mode) {
      if (awake_ab) {
        std::printf("\n=== %s ===\n", mode ? "vCPUs kept awake by SCHED_IDLE spinners (diagnostic)"
                                           : "vCPUs as they are");
      }
      for (size_t i = 0; i < configs.size(); ++i) {
        std::printf("\n%s\n", configs[i].label().c_str());
        const auto it = ceil.find(configs[i].cores());
        const auto& s = series[static_cast<size_t>(mode)][i];
        report(configs[i], s[0], s[1], o, cfg, lc, it == ceil.end() ? nullptr : &it->second);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    kill_all();
    return 1;
  }
  return 0;
}
