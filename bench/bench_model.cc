// dpserve_bench_model: offline model benchmark. Loads a checkpoint directory, measures prefill
// tokens/s of one long prompt and decode tokens/s for several batch sizes, and prints them beside
// this machine's measured ceilings as fractions of the roofline:
//   decode roofline  = min(read bandwidth / weight bytes per step,
//                          SGEMM rate / flops per step) · sequences
//   prefill roofline = SGEMM rate / (linear flops + attention flops) per prompt token.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "ceilings.h"
#include "dpserve/common/errors.h"
#include "dpserve/common/progress.h"
#include "dpserve/common/thread_pool.h"
#include "dpserve/kernels/cpu/gemv.h"
#include "dpserve/model/models/llama.h"
#include "roofline.h"

namespace dpserve::bench {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// One sequence being decoded: its KV slots so far.
struct Seq {
  std::vector<int32_t> slots;
};

// Builds and runs one forward that appends tokens[b] to sequence b; returns the seconds taken.
double step(LlamaForCausalLM& model, KVPool& kv, ThreadPool& pool, std::vector<Seq>& seqs,
            const std::vector<std::vector<int32_t>>& tokens, std::vector<float>& logits) {
  ForwardBatch fb;
  fb.batch_size = static_cast<int>(seqs.size());
  fb.kv_indptr.push_back(0);
  bool decode = true;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const auto& t = tokens[b];
    auto slots = kv.alloc(static_cast<int64_t>(t.size()));
    DPSERVE_CHECK(slots.has_value(), "KV pool too small");
    const auto prefix = static_cast<int32_t>(seqs[b].slots.size());
    for (size_t i = 0; i < t.size(); ++i) {
      fb.input_ids.push_back(t[i]);
      fb.positions.push_back(prefix + static_cast<int32_t>(i));
      fb.out_cache_loc.push_back((*slots)[i]);
    }
    seqs[b].slots.insert(seqs[b].slots.end(), slots->begin(), slots->end());
    fb.seq_lens.push_back(static_cast<int32_t>(seqs[b].slots.size()));
    fb.extend_prefix_lens.push_back(prefix);
    fb.extend_seq_lens.push_back(static_cast<int32_t>(t.size()));
    fb.kv_indices.insert(fb.kv_indices.end(), seqs[b].slots.begin(), seqs[b].slots.end());
    fb.kv_indptr.push_back(static_cast<int32_t>(fb.kv_indices.size()));
    decode = decode && t.size() == 1;
  }
  fb.mode = decode ? ForwardMode::kDecode : ForwardMode::kExtend;
  const double t0 = now_s();
  model.forward(fb, kv, pool, logits);
  return now_s() - t0;
}

void release(KVPool& kv, std::vector<Seq>& seqs) {
  for (auto& s : seqs) kv.free(s.slots);
  seqs.clear();
}

std::vector<int32_t> random_tokens(std::mt19937& rng, int64_t vocab, int64_t n) {
  std::uniform_int_distribution<int32_t> d(
      1, static_cast<int32_t>(std::min<int64_t>(vocab, 32000) - 1));
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = d(rng);
  return t;
}

}  // namespace
}  // namespace dpserve::bench

int main(int argc, char** argv) {
  using namespace dpserve;
  using namespace dpserve::bench;
  CLI::App app{"Offline model benchmark: prefill and decode tokens/s versus the roofline"};
  std::string model_path;
  int threads = default_num_threads();
  int prompt_len = 512;
  int prefill_reps = 3;
  int decode_prompt = 16;
  int decode_steps = 32;
  std::vector<int> batches = {1, 16};
  std::string backend = "flash";
  bool skip_ceilings = false;
  bool blas_threads = false;
  app.add_option("--model-path", model_path, "checkpoint directory (config.json + safetensors)")
      ->required();
  app.add_option("--threads", threads, "threads");
  app.add_option("--prompt-len", prompt_len, "prefill prompt length");
  app.add_option("--prefill-reps", prefill_reps, "prefill repetitions (best is kept)");
  app.add_option("--decode-prompt", decode_prompt, "prompt length before decoding");
  app.add_option("--decode-steps", decode_steps, "decode steps timed per batch size");
  app.add_option("--batch", batches, "decode batch sizes (sequences)");
  app.add_option("--attention-backend", backend, "flash | native");
  app.add_flag("--blas-threads", blas_threads,
               "sgemm (prefill) with OpenBLAS's own threads instead of one OpenBLAS call per pool "
               "thread");
  bool unblocked = false;
  app.add_flag("--unblocked", unblocked, "m > 1: the unblocked small-m tiles (the old kernel)");
  app.add_flag("--no-ceilings", skip_ceilings, "skip measuring the ceilings (fractions are void)");
  CLI11_PARSE(app, argc, argv);

  try {
    ThreadPool pool(threads);
    Ceilings c;
    c.threads = threads;
    c.read_gbps = c.sgemm_gflops = 1;
    if (!skip_ceilings) c = measure_ceilings(pool);
    kernels::linear_tuning().blas_threads = blas_threads;
    kernels::small_m_tuning().blocked = !unblocked;
    std::printf("%s\n", describe(c).c_str());

    ModelOptions opts;
    opts.attention_backend = backend;
    const double t_load = now_s();
    auto model = load_model(model_path, opts);
    const ModelConfig& cfg = model->config();
    const LinearCost lc = linear_cost(cfg, model_path);
    std::printf(
        "model %s (%s): %lld layers, hidden %lld, vocab %lld, linear weights %.2f GB "
        "(%.0f B/param), loaded in %.1f s\n",
        model_path.c_str(), cfg.architecture.c_str(), static_cast<long long>(cfg.num_hidden_layers),
        static_cast<long long>(cfg.hidden_size), static_cast<long long>(cfg.vocab_size),
        (lc.layer_params + lc.head_params) * lc.bytes_per_param / 1e9, lc.bytes_per_param,
        now_s() - t_load);

    const int max_batch = *std::max_element(batches.begin(), batches.end());
    const int64_t slots =
        std::max<int64_t>(prompt_len, int64_t{max_batch} * (decode_prompt + decode_steps)) + 64;
    KVPool kv = model->make_kv_pool(slots);
    std::mt19937 rng(1);
    std::vector<float> logits;
    const int total_work = 1 + prefill_reps + static_cast<int>(batches.size()) * (decode_steps + 1);
    ProgressBar bar("benchmark", total_work);

    // Warm-up: a short forward maps the weights in (page faults) and sizes every scratch buffer.
    {
      std::vector<Seq> seqs(1);
      step(*model, kv, pool, seqs, {random_tokens(rng, cfg.vocab_size, 32)}, logits);
      release(kv, seqs);
      bar.advance(1);
    }

    // Prefill: one sequence of prompt_len tokens, logits for the last token only.
    double prefill_s = 1e30;
    for (int r = 0; r < prefill_reps; ++r) {
      std::vector<Seq> seqs(1);
      prefill_s = std::min(
          prefill_s,
          step(*model, kv, pool, seqs, {random_tokens(rng, cfg.vocab_size, prompt_len)}, logits));
      release(kv, seqs);
      bar.advance(1);
    }

    // Decode: `b` sequences with a short prompt each, then decode_steps single-token steps.
    struct DecodeResult {
      int batch;
      double step_s;
    };
    std::vector<DecodeResult> decode;
    for (int b : batches) {
      std::vector<Seq> seqs(static_cast<size_t>(b));
      std::vector<std::vector<int32_t>> prompts;
      for (int i = 0; i < b; ++i)
        prompts.push_back(random_tokens(rng, cfg.vocab_size, decode_prompt));
      step(*model, kv, pool, seqs, prompts, logits);
      bar.advance(1);
      double total = 0;
      for (int s = 0; s < decode_steps; ++s) {
        std::vector<std::vector<int32_t>> next;
        for (int i = 0; i < b; ++i) {
          const float* row = logits.data() + static_cast<int64_t>(i) * cfg.vocab_size;
          next.push_back({static_cast<int32_t>(std::max_element(row, row + cfg.vocab_size) - row)});
        }
        total += step(*model, kv, pool, seqs, next, logits);
        bar.advance(1);
      }
      release(kv, seqs);
      decode.push_back({b, total / decode_steps});
    }
    bar.finish();
    if (!skip_ceilings) {
      // Measured again after the figures; fractions use the higher of the two (conservative).
      const Ceilings end = measure_ceilings(pool);
      std::printf("%s (measured again at the end)\n", describe(end).c_str());
      c = best_of(c, end);
    }

    // Rooflines (bench/roofline.h).
    const double n = prompt_len;
    const double pf_flops = prefill_flops(lc, prompt_len);
    const double prefill_tps = n / prefill_s;
    const double prefill_roof = n / (pf_flops / (c.sgemm_gflops * 1e9));
    if (prefill_reps > 0)
      std::printf(
          "\nprefill %d tokens: %.3f s, %.1f tok/s, %.1f GFLOP/s; roofline %.1f tok/s "
          "(%.1f GFLOP/token at %.1f GFLOP/s) -> %.0f%% of roofline\n",
          prompt_len, prefill_s, prefill_tps, pf_flops / prefill_s / 1e9, prefill_roof,
          pf_flops / n / 1e9, c.sgemm_gflops, 100.0 * prefill_tps / prefill_roof);
    const double step_bytes = lc.weight_bytes();
    for (const auto& d : decode) {
      const double tps = d.batch / d.step_s;
      const DecodeRoofline roof = decode_roofline(c, lc, d.batch);
      std::printf(
          "decode batch %2d: %.1f ms/step, %.1f tok/s (%.1f GB/s weights); roofline %.1f "
          "tok/s (bandwidth %.1f, flops %.1f) -> %.0f%% of roofline\n",
          d.batch, d.step_s * 1e3, tps, step_bytes / d.step_s / 1e9, roof.tps, roof.bandwidth_tps,
          roof.flops_tps, 100.0 * tps / roof.tps);
    }
    std::printf("load average at end: %.2f\n", load_average());
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
