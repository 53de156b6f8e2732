// Mixture-of-experts models (Mixtral, Qwen2-MoE, Qwen3-MoE) against their float64 references:
// prompt logits, the experts the router picks per layer and token, greedy tokens; the upcycled
// stories260K MoE models reproduce stories260K's text exactly (also with dense and MoE layers
// mixed). The same under TP/EP 2 and 4 with threads as ranks (ThreadGroup), experts split by
// expert parallelism alone or also by TP; the fused expert path equals the naive one; the router's
// top-k; unusable configurations are clear errors.

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"
#include "forward_test_util.h"
#include "thread_group.h"
#include "tp_model.h"

namespace dpserve {
namespace {

namespace fs = std::filesystem;
using testing::mixed_batches;
using testing::read_json;
using testing::Seq;
using testing::ThreadGroup;
using testing::TpModel;
using testing::Work;

const std::string kModels = std::string(DPSERVE_SHARED_DIR) + "/models/";
const std::string kStories = kModels + "stories260K";

// TpModel with expert parallelism `ep` and the expert path `impl`.
struct EpModel : TpModel {
  EpModel(const std::string& dir, int tp, int ep = 0, MoeImpl impl = MoeImpl::kFused,
          int threads = 1)
      : TpModel(dir, tp, moe_options(ep, impl), threads) {}

  static ModelOptions moe_options(int ep, MoeImpl impl) {
    ModelOptions opt;
    opt.ep_size = ep;
    opt.moe_impl = impl;
    return opt;
  }
};

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    m = std::max(m, static_cast<double>(std::fabs(a[i] - b[i])));
  }
  return m;
}

// Prompt logits (all positions, one prefill) and the router's choices per MoE layer
// ([layer][token * top_k]), from rank 0.
struct PromptRun {
  std::vector<float> logits;
  std::vector<std::vector<int32_t>> routing;
  bool operator==(const PromptRun& o) const { return logits == o.logits && routing == o.routing; }
};

PromptRun run_prompt(EpModel& m, const std::vector<int32_t>& prompt) {
  return m.run([&](LlamaForCausalLM& model, KVPool& kv, ThreadPool& pool) {
    PromptRun out;
    Seq seq;
    out.logits = testing::prefill(model, kv, pool, seq, prompt, {0});
    kv.free(seq.slots);
    for (int64_t l = 0; l < model.config().num_hidden_layers; ++l) {
      const SparseMoeBlock* b = model.moe_block(l);
      out.routing.push_back(b ? b->last_topk_ids() : std::vector<int32_t>{});
    }
    return out;
  });
}

std::vector<int32_t> greedy(EpModel& m, const std::vector<int32_t>& prompt, int max_new,
                            const std::vector<int>& chunks = {0}) {
  return m.run([&](LlamaForCausalLM& model, KVPool& kv, ThreadPool& pool) {
    return testing::greedy(model, kv, pool, prompt, max_new, {1, 2}, chunks);
  });
}

// ---------------------------------------------------------------------------------------------
// The four MoE checkpoints against reference_outputs.json, at TP/EP 1, 2, 4 (pure EP) and with
// experts also split by TP (ep < tp).

struct MoeCase {
  std::string model;
  int tp;
  int ep;  // 0 = tp
};

void PrintTo(const MoeCase& c, std::ostream* os) {
  *os << c.model << " tp=" << c.tp << " ep=" << c.ep;
}

class MoeReference : public ::testing::TestWithParam<MoeCase> {};

TEST_P(MoeReference, LogitsRoutingAndGreedy) {
  const MoeCase& c = GetParam();
  const std::string dir = kModels + c.model;
  const auto ref = read_json(dir + "/reference_outputs.json");
  EpModel m(dir, c.tp, c.ep);
  const int ep = c.ep == 0 ? c.tp : c.ep;
  EXPECT_EQ(m.models[0]->ep_size(), ep);
  // Pure EP: rank r holds its own expert range, whole experts, used in place from the mapping.
  const int64_t experts = m.models[0]->config().num_experts;
  int64_t held = 0;
  for (int r = 0; r < c.tp; r += c.tp / ep) held += m.models[r]->moe_block(0)->num_local_experts();
  EXPECT_EQ(held, experts);
  if (ep == c.tp && ep > 1) {
    for (int r = 0; r < c.tp; ++r) {
      EXPECT_EQ(m.models[r]->moe_block(0)->first_expert(), r * experts / ep) << "rank " << r;
    }
  }

  const auto prompt = ref["prompt_ids_with_bos"].get<std::vector<int32_t>>();
  const PromptRun run = run_prompt(m, prompt);
  const int64_t vocab = m.vocab();
  for (const auto& pos : ref["prompt_logits_top5"]) {
    const int64_t p = pos["position"].get<int64_t>();
    const auto ids = pos["top5_ids"].get<std::vector<int32_t>>();
    const auto vals = pos["top5_logits"].get<std::vector<double>>();
    EXPECT_EQ(testing::argmax_row(run.logits, p, vocab), ids[0]) << "position " << p;
    for (int i = 0; i < 5; ++i) {
      EXPECT_NEAR(run.logits[p * vocab + ids[i]], vals[i], 1e-4)
          << "position " << p << " id " << ids[i];
    }
  }
  const auto& routing = ref["prompt_routing_topk_expert_ids"];
  int checked = 0;
  for (int64_t l = 0; l < m.models[0]->config().num_hidden_layers; ++l) {
    const std::string key = "layer" + std::to_string(l);
    if (!routing.contains(key)) continue;
    std::vector<int32_t> want;
    for (const auto& tok : routing[key]) {
      for (const auto& e : tok) want.push_back(e.get<int32_t>());
    }
    EXPECT_EQ(run.routing[l], want) << key;
    ++checked;
  }
  EXPECT_GT(checked, 0);
  EXPECT_EQ(greedy(m, prompt, ref["greedy"]["max_new_tokens"].get<int>(), {2, 1}),
            ref["greedy"]["ids"].get<std::vector<int32_t>>());
  for (int r = 0; r < m.tp(); ++r) EXPECT_EQ(m.kvs[r].available(), m.kvs[r].size());
}

std::string case_name(const ::testing::TestParamInfo<MoeCase>& info) {
  std::string s = info.param.model + "_tp" + std::to_string(info.param.tp) + "_ep" +
                  std::to_string(info.param.ep == 0 ? info.param.tp : info.param.ep);
  for (char& ch : s) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return s;
}

std::vector<MoeCase> reference_cases() {
  std::vector<MoeCase> out;
  for (const char* m : {"stories260K-mixtral-4x", "stories260K-qwen2moe-4x", "tiny-random-mixtral",
                        "tiny-random-qwen3-moe"}) {
    for (const auto& [tp, ep] : std::vector<std::pair<int, int>>{{1, 0}, {2, 0}, {4, 0}, {4, 2}}) {
      out.push_back({m, tp, ep});
    }
  }
  out.push_back({"tiny-random-mixtral", 2, 1});  // every rank all experts, each split by TP
  out.push_back({"stories260K-qwen2moe-4x", 4, 1});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Models, MoeReference, ::testing::ValuesIn(reference_cases()), case_name);

// ---------------------------------------------------------------------------------------------
// The upcycled models compute stories260K's function: its 256-token sample from BOS and the "Zoo"
// prompt, token for token.

class UpcycledStories : public ::testing::TestWithParam<MoeCase> {};

TEST_P(UpcycledStories, ReproducesStories260KText) {
  const auto ref = read_json(kStories + "/reference_outputs.json");
  EpModel m(kModels + GetParam().model, GetParam().tp, GetParam().ep);
  EXPECT_EQ(greedy(m, {1}, 256), ref["greedy_from_bos_only"]["ids"].get<std::vector<int32_t>>());
  const auto zoo = ref["greedy_prompt_Zoo"]["ids"].get<std::vector<int32_t>>();
  // The llama2.c run prints the prompt's own tokens first: "Zoo" is [▁, Z, oo] after BOS.
  EXPECT_EQ(greedy(m, {1, zoo[0], zoo[1], zoo[2]}, static_cast<int>(zoo.size()) - 3),
            std::vector<int32_t>(zoo.begin() + 3, zoo.end()));
}

INSTANTIATE_TEST_SUITE_P(Models, UpcycledStories,
                         ::testing::Values(MoeCase{"stories260K-mixtral-4x", 1, 0},
                                           MoeCase{"stories260K-mixtral-4x", 4, 0},
                                           MoeCase{"stories260K-qwen2moe-4x", 1, 0},
                                           MoeCase{"stories260K-qwen2moe-4x", 2, 0}),
                         case_name);

// ---------------------------------------------------------------------------------------------
// Fused == naive, and TP/EP == one rank, over mixed prefill/decode batches.

class MoeMixed : public ::testing::TestWithParam<std::string> {};

TEST_P(MoeMixed, FusedEqualsNaiveAndEpEqualsOneRank) {
  const std::string dir = kModels + GetParam();
  EpModel fused(dir, 1, 0, MoeImpl::kFused);
  EpModel naive(dir, 1, 0, MoeImpl::kNaive);
  const auto want = mixed_batches(naive);
  const auto got = mixed_batches(fused);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_LE(max_abs_diff(got[i], want[i]), 1e-4) << "fused vs naive, step " << i;
  }
  for (const auto& [tp, ep] : std::vector<std::pair<int, int>>{{2, 2}, {4, 4}, {4, 2}, {2, 1}}) {
    // Threads per rank 2 at tp 2: the fused path's two schedules run inside a rank too.
    EpModel m(dir, tp, ep, tp == 4 && ep == 4 ? MoeImpl::kNaive : MoeImpl::kFused, tp == 2 ? 2 : 1);
    const auto par = mixed_batches(m);
    ASSERT_EQ(par.size(), want.size());
    for (size_t i = 0; i < par.size(); ++i) {
      EXPECT_LE(max_abs_diff(par[i], want[i]), 1e-4)
          << "tp " << tp << " ep " << ep << " step " << i;
    }
  }
}

// A long prefill puts more than 40 rows on some experts, so the fused path runs them as SGEMM.
TEST_P(MoeMixed, LongPrefillFusedEqualsNaive) {
  const std::string dir = kModels + GetParam();
  std::vector<int32_t> prompt = {1};
  uint32_t x = 12345;
  for (int i = 0; i < 300; ++i) {
    x = x * 1664525u + 1013904223u;
    prompt.push_back(3 + static_cast<int32_t>((x >> 8) % 500));
  }
  EpModel fused(dir, 1, 0, MoeImpl::kFused);
  EpModel naive(dir, 1, 0, MoeImpl::kNaive);
  const PromptRun a = run_prompt(fused, prompt);
  const PromptRun b = run_prompt(naive, prompt);
  EXPECT_EQ(a.routing, b.routing);
  EXPECT_LE(max_abs_diff(a.logits, b.logits), 2e-4);
  // Two threads: whole experts per thread (fused, >= 4 active experts per thread) and every
  // expert's GEMMs split over both threads (fused-split).
  for (MoeImpl impl : {MoeImpl::kFused, MoeImpl::kFusedSplit}) {
    EpModel two(dir, 1, 0, impl, 2);
    const PromptRun c = run_prompt(two, prompt);
    EXPECT_EQ(c.routing, b.routing) << moe_impl_name(impl);
    EXPECT_LE(max_abs_diff(c.logits, b.logits), 2e-4) << moe_impl_name(impl);
  }
  const MoeStats& s =
      fused.models[0]->moe_block(fused.models[0]->config().num_hidden_layers - 1)->stats();
  EXPECT_EQ(s.tokens, static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(s.expert_rows, s.tokens * fused.models[0]->config().num_experts_per_tok);
}

INSTANTIATE_TEST_SUITE_P(Models, MoeMixed,
                         ::testing::Values("tiny-random-mixtral", "tiny-random-qwen3-moe",
                                           "stories260K-qwen2moe-4x"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& ch : s) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return s;
                         });

// ---------------------------------------------------------------------------------------------
// Dense and MoE layers mixed (decoder_sparse_step, mlp_only_layers): stories260K-qwen2moe-4x with
// the dense FFN of stories260K in the dense layers still computes stories260K's function.

// Writes an F32 safetensors file with the given tensors (name -> view), in name order.
void write_safetensors(const std::string& path, const std::map<std::string, TensorView>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  size_t off = 0;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {off, off + t.nbytes}}};
    off += t.nbytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::ofstream f(path, std::ios::binary);
  const uint64_t n = h.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f.write(h.data(), static_cast<std::streamsize>(h.size()));
  for (const auto& [name, t] : tensors) {
    f.write(static_cast<const char*>(t.data), static_cast<std::streamsize>(t.nbytes));
  }
}

// A temporary model dir holding an edited config.json and (optionally) a written checkpoint.
class TempModel {
 public:
  explicit TempModel(const std::string& tag)
      : dir_(fs::temp_directory_path() /
             ("dpserve_moe_" + tag + "_" + std::to_string(::getpid()))) {
    fs::create_directories(dir_);
  }
  ~TempModel() { fs::remove_all(dir_); }
  std::string dir() const { return dir_.string(); }
  void write_config(const nlohmann::json& c) const {
    std::ofstream(dir_ / "config.json") << c.dump(2);
  }
  void link_weights(const std::string& from) const {
    fs::create_symlink(fs::absolute(from + "/model.safetensors"), dir_ / "model.safetensors");
  }

 private:
  fs::path dir_;
};

TEST(MoeLayers, DenseAndSparseLayersMixed) {
  const std::string src = kModels + "stories260K-qwen2moe-4x";
  nlohmann::json cfg = read_json(src + "/config.json");
  cfg["decoder_sparse_step"] = 2;  // layers 1 and 3 sparse ...
  cfg["mlp_only_layers"] = {3};    // ... but 3 dense: only layer 1 is MoE
  const ModelConfig parsed = ModelConfig::from_json(cfg, "cfg");
  std::vector<bool> sparse;
  for (int64_t l = 0; l < 5; ++l) sparse.push_back(parsed.is_moe_layer(l));
  EXPECT_EQ(sparse, (std::vector<bool>{false, true, false, false, false}));

  TempModel tmp("mixed");
  tmp.write_config(cfg);
  WeightStore moe(src), dense(kStories);
  std::map<std::string, TensorView> tensors;
  for (const std::string& name : moe.names()) {
    const bool layer_mlp = name.find(".mlp.") != std::string::npos;
    if (layer_mlp && name.rfind("model.layers.1.", 0) != 0) continue;  // MoE only in layer 1
    tensors[name] = moe.get(name);
  }
  for (int l : {0, 2, 3, 4}) {
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      const std::string name = "model.layers." + std::to_string(l) + ".mlp." + proj + ".weight";
      tensors[name] = dense.get(name);
    }
  }
  write_safetensors(tmp.dir() + "/model.safetensors", tensors);

  const auto ref = read_json(kStories + "/reference_outputs.json");
  for (const auto& [tp, ep] : std::vector<std::pair<int, int>>{{1, 0}, {2, 0}, {4, 2}}) {
    EpModel m(tmp.dir(), tp, ep);
    EXPECT_EQ(m.models[0]->moe_block(0), nullptr);
    EXPECT_NE(m.models[0]->moe_block(1), nullptr);
    EXPECT_EQ(m.models[0]->moe_block(3), nullptr);
    EXPECT_EQ(greedy(m, ref["prompt_ids_with_bos"].get<std::vector<int32_t>>(),
                     ref["greedy"]["max_new_tokens"].get<int>()),
              ref["greedy"]["ids"].get<std::vector<int32_t>>())
        << "tp " << tp;
  }
}

// ---------------------------------------------------------------------------------------------
// The router alone.

TEST(MoeRouter, SoftmaxTopKAndRenormalisation) {
  // Token 0: distinct logits; token 1: a three-way tie broken by the lower id.
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 1.0f, 3.0f, 1.0f, 1.0f, 0.0f};
  std::vector<int32_t> ids(4);
  std::vector<float> w(4);
  route_topk(logits.data(), 2, 4, 2, false, ids.data(), w.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 3, 0, 1}));
  const double z0 = std::exp(0.5) + std::exp(2.0) + std::exp(-1.0) + std::exp(1.0);
  EXPECT_NEAR(w[0], std::exp(2.0) / z0, 1e-6);
  EXPECT_NEAR(w[1], std::exp(1.0) / z0, 1e-6);
  const double z1 = std::exp(3.0) + 2 * std::exp(1.0) + 1.0;
  EXPECT_NEAR(w[2], std::exp(3.0) / z1, 1e-6);
  EXPECT_NEAR(w[3], std::exp(1.0) / z1, 1e-6);
  ids.resize(6), w.resize(6);
  route_topk(logits.data(), 2, 4, 3, true, ids.data(), w.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 3, 0, 0, 1, 2}));
  EXPECT_NEAR(w[0] + w[1] + w[2], 1.0, 1e-6);
  EXPECT_NEAR(w[3] + w[4] + w[5], 1.0, 1e-6);
  EXPECT_NEAR(w[4], w[5], 1e-7);
  EXPECT_EQ(parse_moe_impl("naive"), MoeImpl::kNaive);
  EXPECT_EQ(parse_moe_impl("fused-split"), MoeImpl::kFusedSplit);
  EXPECT_THROW(parse_moe_impl("grouped"), Error);
}

// ---------------------------------------------------------------------------------------------
// Configurations that cannot be served.

std::string load_error(const std::string& dir, int tp = 1, int ep = 0) {
  auto groups = ThreadGroup::create(tp);
  ModelOptions opt;
  opt.show_progress = false;
  opt.tp_size = tp;
  opt.ep_size = ep;
  opt.tp_group = tp > 1 ? groups[0].get() : nullptr;
  try {
    load_model(dir, opt);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(MoeErrors, ParallelSizes) {
  const std::string mixtral = kModels + "stories260K-mixtral-4x";
  std::string err = load_error(mixtral, 4, 3);
  EXPECT_TRUE(has(err, "stories260K-mixtral-4x") && has(err, "ep_size (3) must divide tp_size (4)"))
      << err;
  // 8 heads over 8 ranks is fine, but 4 experts cannot go to 8 EP ranks.
  err = load_error(mixtral, 8);
  EXPECT_TRUE(has(err, "at least ep_size (8) experts") && has(err, "has 4")) << err;
  // tiny-random-qwen3-moe: moe_intermediate_size 32 split over 8 / 1 ranks is fine; 3 is not a
  // divisor of the 8 heads, and the dense size no longer matters (no dense layer).
  const ModelConfig q3 = ModelConfig::from_dir(kModels + "tiny-random-qwen3-moe");
  ModelConfig c = q3;
  c.moe_intermediate_size = 36;
  try {
    check_tensor_parallel(c, 8, "m", 1);
    ADD_FAILURE() << "36 expert features over 8 ranks accepted";
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), "intermediate size (36) is not divisible by 8")) << e.what();
  }
  c = q3;
  c.intermediate_size = 7;  // no dense layer: irrelevant
  EXPECT_NO_THROW(check_tensor_parallel(c, 4, "m"));
  c.mlp_only_layers = {1};
  EXPECT_THROW(check_tensor_parallel(c, 4, "m"), Error);
  c = ModelConfig::from_dir(kModels + "stories260K-qwen2moe-4x");
  c.shared_expert_intermediate_size = 170;
  try {
    check_tensor_parallel(c, 4, "m");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), "shared_expert_intermediate_size (170)")) << e.what();
  }
}

TEST(MoeErrors, CheckpointDoesNotMatchConfig) {
  const std::string src = kModels + "stories260K-mixtral-4x";
  nlohmann::json cfg = read_json(src + "/config.json");
  {
    TempModel tmp("experts");
    cfg["num_local_experts"] = 5;  // the router is [4, 64]
    tmp.write_config(cfg);
    tmp.link_weights(src);
    const std::string err = load_error(tmp.dir());
    EXPECT_TRUE(has(err, "model.layers.0.block_sparse_moe.gate.weight")) << err;
  }
  {
    TempModel tmp("arch");  // Mixtral weights read as Qwen3-MoE: its tensor names are missing
    nlohmann::json q = cfg;
    q["num_local_experts"] = 4;
    q["architectures"] = {"Qwen3MoeForCausalLM"};
    q["num_experts"] = 4;
    q["moe_intermediate_size"] = 172;
    tmp.write_config(q);
    tmp.link_weights(src);
    const std::string err = load_error(tmp.dir());
    EXPECT_TRUE(has(err, "model.layers.0.self_attn.q_norm.weight") ||
                has(err, "model.layers.0.mlp.gate.weight"))
        << err;
  }
}

}  // namespace
}  // namespace dpserve
