// dpserve_bench_tp: tensor-parallel decode with threads as ranks. Every rank is a thread with its
// own LlamaForCausalLM (one shared WeightStore), KV pool and ThreadPool, joined by the in-process
// ThreadGroup of the tests; the collectives are timed by a wrapper. For each configuration
// (tp x threads per rank, and the embedding / LM head vocab layouts) it prints decode ms/step and
// tokens/s for each batch size, and per step the time inside all_reduce_sum, the time waiting for
// the other ranks before it (timed apart with a barrier) and the time inside all_gatherv.
// Configurations run round-robin, best round kept. Multi-process (Gloo) numbers come separately.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "../tests/forward/thread_group.h"
#include "dpserve/common/errors.h"
#include "dpserve/common/thread_pool.h"
#include "dpserve/model/models/llama.h"
#include "forward_step.h"

namespace dpserve::bench {
namespace {

// A ProcessGroup that forwards to another and accumulates the seconds spent in each collective.
// Before each all_reduce_sum it meets the other ranks at a barrier, timed apart: the wait for a
// slower (or descheduled) rank is then not counted as the cost of the all-reduce itself.
class TimedGroup : public ProcessGroup {
 public:
  explicit TimedGroup(ProcessGroup& inner) : inner_(inner) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  const std::string& name() const override { return inner_.name(); }
  void all_reduce_sum(float* data, int64_t n) override {
    const double t0 = now_s();
    inner_.barrier();
    const double t1 = now_s();
    inner_.all_reduce_sum(data, n);
    wait_s += t1 - t0;
    all_reduce_s += now_s() - t1;
    ++all_reduce_calls;
  }
  void all_gatherv(const float* in, float* out, const std::vector<int64_t>& counts) override {
    const double t0 = now_s();
    inner_.all_gatherv(in, out, counts);
    all_gather_s += now_s() - t0;
  }
  void all_gather_bytes(const void* in, size_t bytes, void* out) override {
    inner_.all_gather_bytes(in, bytes, out);
  }
  void broadcast_bytes(void* data, size_t bytes, int root) override {
    inner_.broadcast_bytes(data, bytes, root);
  }
  void barrier() override { inner_.barrier(); }
  // Zeroes the counters.
  void reset() { wait_s = all_reduce_s = all_gather_s = 0, all_reduce_calls = 0; }

  double wait_s = 0;             // seconds waiting for the other ranks before an all-reduce
  double all_reduce_s = 0;       // seconds inside all_reduce_sum (after that wait)
  double all_gather_s = 0;       // seconds inside all_gatherv (waiting included)
  int64_t all_reduce_calls = 0;  // all_reduce_sum calls

 private:
  ProcessGroup& inner_;
};

struct Config {
  int tp = 1;
  int threads = 1;           // per rank
  bool split_embed = false;  // vocab-parallel embedding
  bool split_head = true;    // vocab-parallel LM head
  std::string label() const {
    std::string s = "tp=" + std::to_string(tp) + " threads/rank=" + std::to_string(threads);
    if (tp > 1) {
      s += std::string(" embed=") + (split_embed ? "vocab-split" : "replicated");
      s += std::string(" lm_head=") + (split_head ? "vocab-split" : "replicated");
    }
    return s;
  }
};

struct Figures {
  int batch = 0;
  double step_s = 0;    // mean seconds per decode step (rank 0)
  double wait_s = 0;    // per step: waiting for the other ranks before all-reduces
  double reduce_s = 0;  // per step: inside all_reduce_sum after that wait
  double gather_s = 0;  // per step: inside all_gatherv
  double reduces = 0;   // all_reduce_sum calls per step
};

// One rank of one configuration, kept across rounds.
struct Rank {
  std::unique_ptr<LlamaForCausalLM> model;
  std::unique_ptr<TimedGroup> timer;  // null with one rank
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<KVPool> kv;
  std::vector<float> logits;
};

// One round on one rank: per batch size a short prefill and `steps` timed decode steps. Every rank
// runs the same steps (greedy tokens from identical logits).
std::vector<Figures> run_round(Rank& rk, const std::vector<int>& batches, int prompt_len, int steps,
                               uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Figures> out;
  for (int b : batches) {
    const DecodeTimes t = greedy_decode_run(*rk.model, *rk.kv, *rk.pool, rk.logits, b, prompt_len,
                                            steps, 31999, rng, [&] {
                                              if (rk.timer) rk.timer->reset();
                                            });
    Figures f;
    f.batch = b;
    f.step_s = t.decode_s / steps;
    if (rk.timer) {
      f.wait_s = rk.timer->wait_s / steps;
      f.reduce_s = rk.timer->all_reduce_s / steps;
      f.gather_s = rk.timer->all_gather_s / steps;
      f.reduces = static_cast<double>(rk.timer->all_reduce_calls) / steps;
    }
    out.push_back(f);
  }
  return out;
}

}  // namespace
}  // namespace dpserve::bench

int main(int argc, char** argv) {
  using namespace dpserve;
  using namespace dpserve::bench;
  CLI::App app{"Tensor-parallel decode with threads as ranks"};
  std::string model_path = "models-gen/tinyllama-1.1b-bf16";
  std::vector<std::string> configs = {"1x1", "1x2", "2x1"};
  std::vector<int> batches = {1, 16};
  int prompt_len = 16;
  int steps = 16;
  bool vocab_layouts = false;
  int rounds = 3;
  app.add_option("--model-path", model_path, "checkpoint directory");
  app.add_option("--config", configs, "TPxTHREADS_PER_RANK entries, e.g. 1x1 1x2 2x1");
  app.add_option("--batch", batches, "decode batch sizes (sequences)");
  app.add_option("--prompt-len", prompt_len, "prompt tokens per sequence before decoding");
  app.add_option("--decode-steps", steps, "decode steps timed per batch size");
  app.add_option("--rounds", rounds, "rounds over all configurations (best round is kept)");
  app.add_flag("--vocab-layouts", vocab_layouts,
               "for tp > 1 also run the other embedding / LM head layouts");
  CLI11_PARSE(app, argc, argv);

  try {
    const ModelConfig cfg = ModelConfig::from_dir(model_path);
    auto weights = std::make_shared<const WeightStore>(model_path);
    std::printf(
        "model %s: %lld layers, hidden %lld, heads %lld/%lld kv, vocab %lld\n", model_path.c_str(),
        static_cast<long long>(cfg.num_hidden_layers), static_cast<long long>(cfg.hidden_size),
        static_cast<long long>(cfg.num_attention_heads),
        static_cast<long long>(cfg.num_key_value_heads), static_cast<long long>(cfg.vocab_size));
    std::vector<Config> runs;
    for (const std::string& c : configs) {
      Config r;
      if (std::sscanf(c.c_str(), "%dx%d", &r.tp, &r.threads) != 2 || r.tp < 1 || r.threads < 1) {
        throw_error("--config {}: expected TPxTHREADS, e.g. 2x1", c);
      }
      runs.push_back(r);
      if (vocab_layouts && r.tp > 1) {
        runs.push_back({r.tp, r.threads, true, true});
        runs.push_back({r.tp, r.threads, false, false});
      }
    }
    // Build every configuration first, then run them round-robin (best round kept per figure),
    // so that load from other processes on the machine spreads over all of them.
    const int max_batch = *std::max_element(batches.begin(), batches.end());
    struct Built {
      std::vector<std::unique_ptr<testing::ThreadGroup>> groups;
      std::vector<Rank> ranks;
      std::vector<Figures> best;
    };
    std::vector<Built> built(runs.size());
    for (size_t i = 0; i < runs.size(); ++i) {
      const Config& run = runs[i];
      Built& bt = built[i];
      bt.groups = testing::ThreadGroup::create(run.tp);
      const double t0 = now_s();
      for (int r = 0; r < run.tp; ++r) {
        Rank rk;
        if (run.tp > 1) rk.timer = std::make_unique<TimedGroup>(*bt.groups[r]);
        ModelOptions opt;
        opt.show_progress = false;
        opt.tp_size = run.tp;
        opt.tp_rank = r;
        opt.tp_group = rk.timer.get();
        opt.vocab_parallel_embedding = run.split_embed;
        opt.vocab_parallel_lm_head = run.split_head;
        rk.model = std::make_unique<LlamaForCausalLM>(cfg, weights, opt);
        rk.pool = std::make_unique<ThreadPool>(run.threads);
        rk.kv = std::make_unique<KVPool>(
            rk.model->make_kv_pool(int64_t{max_batch} * (prompt_len + steps + 1) + 64));
        bt.ranks.push_back(std::move(rk));
      }
      std::printf("built %s in %.2f s (%.0f MB of copied weight slices per rank)\n",
                  run.label().c_str(), now_s() - t0, bt.ranks[0].model->owned_weight_bytes() / 1e6);
      // Warm-up round: maps the weights in and sizes every scratch buffer.
      testing::run_ranks(bt.groups, [&](int r) { run_round(bt.ranks[r], {1}, 16, 1, 1); });
    }
    for (int round = 0; round < rounds; ++round) {
      for (Built& bt : built) {
        std::vector<std::vector<Figures>> figs(bt.ranks.size());
        testing::run_ranks(bt.groups, [&](int r) {
          figs[r] = run_round(bt.ranks[r], batches, prompt_len, steps, 100 + round);
        });
        if (bt.best.empty()) bt.best = figs[0];
        for (size_t j = 0; j < figs[0].size(); ++j) {
          if (figs[0][j].step_s < bt.best[j].step_s) bt.best[j] = figs[0][j];
        }
      }
    }
    std::printf("\nbest of %d rounds of %d decode steps (threads as ranks; rank 0's times)\n",
                rounds, steps);
    for (size_t i = 0; i < runs.size(); ++i) {
      std::printf("%s\n", runs[i].label().c_str());
      for (const Figures& f : built[i].best) {
        std::printf(
            "  decode batch %2d: %7.1f ms/step, %6.1f tok/s; all_reduce %5.2f ms/step (%.0f "
            "calls) + %6.2f ms waiting for the other rank; all_gatherv %5.2f ms/step\n",
            f.batch, f.step_s * 1e3, f.batch / f.step_s, f.reduce_s * 1e3, f.reduces,
            f.wait_s * 1e3, f.gather_s * 1e3);
      }
    }
    std::printf("\nload average at end: ");
    std::ifstream la("/proc/loadavg");
    std::string l;
    std::getline(la, l);
    std::printf("%s\n", l.c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
