// dpserve_bench_moe: decode of a mixture-of-experts model, fused vs naive expert path, expert
// parallelism 1 vs 2 with threads as ranks (every rank a thread with its own LlamaForCausalLM on
// one shared WeightStore, KV pool and ThreadPool, joined by the tests' in-process ThreadGroup).
//
// For each configuration and batch size it prints: the prefill of the prompts, decode ms/step and
// tokens/s; the time inside the MoE blocks per step and, of that, inside their all-reduce
// (waiting for the slower rank included); the expert weights streamed per step (distinct experts
// for the fused path, every (token, expert) pair for the naive one) and the decode roofline:
// the bytes one step must read (attention, routers, the distinct active experts, LM head) over
// the measured read bandwidth, or its linear-layer flops over the SGEMM rate if that is longer.
// Configurations run round-robin, best round kept.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "../tests/forward/thread_group.h"
#include "ceilings.h"
#include "dpserve/common/errors.h"
#include "dpserve/common/thread_pool.h"
#include "dpserve/model/models/llama.h"
#include "forward_step.h"
#include "timed_group.h"

namespace dpserve::bench {
namespace {

constexpr int kWarmupBatch = 4;    // warm-up: sequences ...
constexpr int kWarmupPrompt = 64;  // ... of this many prompt tokens

struct Config {
  int ranks = 1;    // TP = EP ranks
  int threads = 1;  // per rank
  MoeImpl impl = MoeImpl::kFused;
  std::string label() const {
    return "ep=tp=" + std::to_string(ranks) + " threads/rank=" + std::to_string(threads) + " " +
           moe_impl_name(impl);
  }
};

struct Figures {
  int batch = 0;
  double prefill_s = 0;         // the prompts of all sequences in one forward
  double step_s = 0;            // mean seconds per decode step (rank 0)
  double moe_s = 0;             // per step: inside the MoE blocks (rank 0)
  double reduce_s = 0;          // per step: inside their all-reduce (rank 0)
  double active_experts = 0;    // per step: distinct experts computed, all layers and ranks
  double expert_rows = 0;       // per step: (token, expert) pairs, all layers and ranks
  double max_rank_experts = 0;  // per step: distinct experts of the busiest rank
  double wait_s = 0;            // per step: all all-reduces (attention + MoE), waiting before them
  double pure_reduce_s = 0;     // per step: all all-reduces, the collective itself
  double reduces = 0;           // all-reduce calls per step
};

// One rank of one configuration, kept across rounds.
struct Rank {
  std::unique_ptr<TimedProcessGroup> timer;  // null with one rank
  std::unique_ptr<LlamaForCausalLM> model;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<KVPool> kv;
  std::vector<float> logits;
};

// The MoE counters of all layers of a model, summed.
MoeStats moe_stats(LlamaForCausalLM& model, bool reset) {
  MoeStats sum;
  for (int64_t l = 0; l < model.config().num_hidden_layers; ++l) {
    SparseMoeBlock* b = model.moe_block(l);
    if (b == nullptr) continue;
    const MoeStats& s = b->stats();
    sum.forwards += s.forwards;
    sum.tokens += s.tokens;
    sum.expert_rows += s.expert_rows;
    sum.active_experts += s.active_experts;
    sum.seconds += s.seconds;
    sum.reduce_seconds += s.reduce_seconds;
    if (reset) b->reset_stats();
  }
  return sum;
}

// One round on one rank: per batch size a prefill of the prompts and `steps` timed decode steps.
// Every rank runs the same steps (greedy tokens from identical logits). Returns this rank's
// figures (its own expert counts).
std::vector<Figures> run_round(Rank& rk, const std::vector<int>& batches, int prompt_len, int steps,
                               uint32_t seed) {
  LlamaForCausalLM& model = *rk.model;
  std::mt19937 rng(seed);
  std::vector<Figures> out;
  for (int b : batches) {
    Figures f;
    f.batch = b;
    const DecodeTimes t = greedy_decode_run(model, *rk.kv, *rk.pool, rk.logits, b, prompt_len,
                                            steps, 149999, rng, [&] {
                                              moe_stats(model, true);
                                              if (rk.timer) rk.timer->reset();
                                            });
    f.prefill_s = t.prefill_s;
    const MoeStats st = moe_stats(model, true);
    f.step_s = t.decode_s / steps;
    f.moe_s = st.seconds / steps;
    f.reduce_s = st.reduce_seconds / steps;
    f.active_experts = static_cast<double>(st.active_experts) / steps;
    f.expert_rows = static_cast<double>(st.expert_rows) / steps;
    f.max_rank_experts = f.active_experts;
    if (rk.timer) {
      const OpTime& reduce = rk.timer->time(CollectiveOp::kAllReduce);
      f.wait_s = rk.timer->time(CollectiveOp::kWait).seconds / steps;
      f.pure_reduce_s = reduce.seconds / steps;
      f.reduces = static_cast<double>(reduce.calls) / steps;
    }
    out.push_back(f);
  }
  return out;
}

// Bytes one decode step reads at the least, summed over ranks: every attention matrix once, the
// router on every rank, the distinct active experts once, the LM head once.
struct StepBytes {
  double attention = 0;  // all layers' q/k/v/o
  double router = 0;     // one copy of all layers' routers
  double expert = 0;     // one expert's gate + up + down
  double head = 0;       // lm_head
  double dense_mlp = 0;  // the dense MLP layers (mlp_only_layers)
  double es = 2;         // bytes per weight element
};

StepBytes step_bytes(const ModelConfig& c, const WeightStore& w) {
  const double es =
      static_cast<double>(dtype_size(w.get("model.layers.0.self_attn.q_proj.weight").dtype));
  const double h = static_cast<double>(c.hidden_size);
  const double q = static_cast<double>(c.num_attention_heads * c.head_dim);
  const double kv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  StepBytes b;
  b.es = es;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    b.attention += (q + 2 * kv) * h * es + h * q * es;
    if (c.is_moe_layer(l)) {
      b.router += static_cast<double>(c.num_experts) * h * es;
    } else {
      b.dense_mlp += 3.0 * static_cast<double>(c.intermediate_size) * h * es;
    }
  }
  b.expert = 3.0 * static_cast<double>(c.moe_intermediate_size) * h * es;
  b.head = static_cast<double>(c.vocab_size) * h * es;
  return b;
}

}  // namespace
}  // namespace dpserve::bench

int main(int argc, char** argv) {
  using namespace dpserve;
  using namespace dpserve::bench;
  CLI::App app{"MoE decode: fused vs naive experts, expert parallelism with threads as ranks"};
  std::string model_path = "models-gen/qwen3-30b-a3b-2l-bf16";
  std::vector<std::string> configs = {"1x2:fused", "1x2:fused-split", "1x2:naive", "2x1:fused",
                                      "2x1:naive"};
  std::vector<int> batches = {1, 16};
  int prompt_len = 16;
  int steps = 8;
  int rounds = 3;
  app.add_option("--model-path", model_path, "MoE checkpoint directory");
  app.add_option("--config", configs,
                 "RANKSxTHREADS_PER_RANK:IMPL entries (ranks = TP = EP; IMPL fused, fused-split or "
                 "naive), e.g. 1x2:fused 2x1:naive");
  app.add_option("--batch", batches, "decode batch sizes (sequences)");
  app.add_option("--prompt-len", prompt_len, "prompt tokens per sequence before decoding");
  app.add_option("--decode-steps", steps, "decode steps timed per batch size");
  app.add_option("--rounds", rounds, "rounds over all configurations (best round is kept)");
  CLI11_PARSE(app, argc, argv);

  try {
    const ModelConfig cfg = ModelConfig::from_dir(model_path);
    if (!cfg.is_moe()) throw_error("{}: not a mixture-of-experts model", model_path);
    auto weights = std::make_shared<const WeightStore>(model_path);
    std::printf(
        "model %s: %s, %lld layers, hidden %lld, %lld experts (top %lld) of %lld features, "
        "heads %lld/%lld kv x %lld, vocab %lld\n",
        model_path.c_str(), cfg.architecture.c_str(), static_cast<long long>(cfg.num_hidden_layers),
        static_cast<long long>(cfg.hidden_size), static_cast<long long>(cfg.num_experts),
        static_cast<long long>(cfg.num_experts_per_tok),
        static_cast<long long>(cfg.moe_intermediate_size),
        static_cast<long long>(cfg.num_attention_heads),
        static_cast<long long>(cfg.num_key_value_heads), static_cast<long long>(cfg.head_dim),
        static_cast<long long>(cfg.vocab_size));
    std::printf("load average at start: %.2f\n", load_average());
    Ceilings ceil;
    {
      ThreadPool pool(2);
      ceil = measure_ceilings(pool);
    }
    std::printf("%s\n", describe(ceil).c_str());
    const StepBytes sb = step_bytes(cfg, *weights);

    std::vector<Config> runs;
    for (const std::string& c : configs) {
      Config r;
      char impl[16] = "fused";
      const int n = std::sscanf(c.c_str(), "%dx%d:%15s", &r.ranks, &r.threads, impl);
      if (n < 2 || r.ranks < 1 || r.threads < 1) {
        throw_error("--config {}: expected RANKSxTHREADS[:fused|fused-split|naive], e.g. 2x1:fused",
                    c);
      }
      r.impl = parse_moe_impl(impl);
      runs.push_back(r);
    }
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
      bt.groups = testing::ThreadGroup::create(run.ranks);
      const double t0 = now_s();
      for (int r = 0; r < run.ranks; ++r) {
        Rank rk;
        ModelOptions opt;
        opt.show_progress = false;
        opt.tp_size = run.ranks;
        opt.ep_size = run.ranks;
        opt.tp_rank = r;
        if (run.ranks > 1) {
          // A barrier before every all-reduce, timed apart: waiting vs the collective itself.
          rk.timer = std::make_unique<TimedProcessGroup>(*bt.groups[r]);
          rk.timer->set_split_wait(true);
        }
        opt.tp_group = rk.timer.get();
        opt.moe_impl = run.impl;
        rk.model = std::make_unique<LlamaForCausalLM>(cfg, weights, opt);
        rk.pool = std::make_unique<ThreadPool>(run.threads);
        rk.kv = std::make_unique<KVPool>(
            rk.model->make_kv_pool(std::max<int64_t>(int64_t{max_batch} * (prompt_len + steps + 1),
                                                     kWarmupBatch * (kWarmupPrompt + 1)) +
                                   64));
        bt.ranks.push_back(std::move(rk));
      }
      std::printf(
          "built %s in %.2f s (%lld experts per rank, %.0f MB of copied weights per rank)\n",
          run.label().c_str(), now_s() - t0,
          static_cast<long long>(
              bt.ranks[0].model->moe_block(cfg.num_hidden_layers - 1)->num_local_experts()),
          bt.ranks[0].model->owned_weight_bytes() / 1e6);
      // Warm-up: maps every expert in (a 64-token prompt routes to most of them) and sizes the
      // scratch buffers.
      testing::run_ranks(
          bt.groups, [&](int r) { run_round(bt.ranks[r], {kWarmupBatch}, kWarmupPrompt, 1, 1); });
    }
    for (int round = 0; round < rounds; ++round) {
      for (Built& bt : built) {
        std::vector<std::vector<Figures>> figs(bt.ranks.size());
        testing::run_ranks(bt.groups, [&](int r) {
          figs[r] = run_round(bt.ranks[r], batches, prompt_len, steps, 100 + round);
        });
        for (size_t j = 0; j < figs[0].size(); ++j) {
          Figures f = figs[0][j];
          f.active_experts = f.expert_rows = f.max_rank_experts = 0;
          for (const auto& rf : figs) {
            f.active_experts += rf[j].active_experts;
            f.expert_rows += rf[j].expert_rows;
            f.max_rank_experts = std::max(f.max_rank_experts, rf[j].active_experts);
          }
          if (bt.best.size() <= j) {
            bt.best.push_back(f);
            continue;
          }
          Figures& b = bt.best[j];
          b.prefill_s = std::min(b.prefill_s, f.prefill_s);
          if (f.step_s < b.step_s) {
            const double prefill = b.prefill_s;
            b = f;
            b.prefill_s = prefill;
          }
        }
      }
    }
    {
      // Measured again after the figures; the higher of the two keeps the fractions low.
      ThreadPool pool(2);
      const Ceilings again = measure_ceilings(pool);
      std::printf("again after the runs: %s\n", describe(again).c_str());
      ceil = best_of(ceil, again);
    }
    std::printf(
        "\nbest of %d rounds of %d decode steps after a %d-token prompt per sequence (rank 0's "
        "times; expert counts summed over layers and ranks)\n",
        rounds, steps, prompt_len);
    std::printf(
        "weights: attention %.0f MB, routers %.1f MB, one expert %.2f MB, LM head %.0f MB\n",
        sb.attention / 1e6, sb.router / 1e6, sb.expert / 1e6, sb.head / 1e6);
    for (size_t i = 0; i < runs.size(); ++i) {
      std::printf("%s\n", runs[i].label().c_str());
      for (const Figures& f : built[i].best) {
        const double streamed =
            (runs[i].impl != MoeImpl::kNaive ? f.active_experts : f.expert_rows) * sb.expert;
        const double min_bytes = sb.attention + sb.router * runs[i].ranks + sb.dense_mlp +
                                 f.active_experts * sb.expert + sb.head;
        // Flops of the linear layers: every token through attention, routers and LM head, every
        // (token, expert) row through one expert.
        const double flops = 2.0 *
                             (f.batch * (sb.attention + sb.router + sb.dense_mlp + sb.head) +
                              f.expert_rows * sb.expert) /
                             sb.es;
        const double roof_s =
            std::max(min_bytes / (ceil.read_gbps * 1e9), flops / (ceil.sgemm_gflops * 1e9));
        std::printf(
            "  batch %2d: prefill %7.1f ms | decode %7.1f ms/step, %6.1f tok/s | MoE %6.1f "
            "ms/step (all-reduce %5.2f) | experts/step %5.1f distinct (busiest rank %5.1f), %5.1f "
            "rows, %6.0f MB streamed | roofline %5.1f ms/step -> %3.0f%%\n",
            f.batch, f.prefill_s * 1e3, f.step_s * 1e3, f.batch / f.step_s, f.moe_s * 1e3,
            f.reduce_s * 1e3, f.active_experts, f.max_rank_experts, f.expert_rows, streamed / 1e6,
            roof_s * 1e3, 100.0 * roof_s / f.step_s);
        if (runs[i].ranks > 1) {
          std::printf(
              "            all-reduces per step (attention + MoE): %.0f calls, %.2f ms in the "
              "collective, %.2f ms waiting for the other rank before them\n",
              f.reduces, f.pure_reduce_s * 1e3, f.wait_s * 1e3);
        }
      }
    }
    std::printf("\nload average at end: %.2f\n", load_average());
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
