// DP attention inside LlamaForCausalLM with threads as ranks (ThreadGroup tp / attn_tp / dp
// groups, laid out as parallel_state does): (tp 2, dp 2), (tp 4, dp 2), (tp 4, dp 4). Every DP
// group runs its own sequences through its own KV pool; each group's logits equal a TP=1 run of
// the same batches alone (within 1e-4) and its greedy tokens are the same. The workloads mix a
// group prefilling while another decodes, groups idle for a step (zero tokens), uneven counts and
// a step where no group has work; both padding modes are forced and the per-step rule is checked.
// On stories260K and on the upcycled MoE checkpoint stories260K-mixtral-4x, whose greedy text is
// stories260K's reference. dp_gather / dp_scatter alone, and option errors.

#include <cmath>
#include <fstream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/layers/dp_attention.h"
#include "forward_test_util.h"
#include "thread_group.h"

namespace dpserve {
namespace {

using testing::build_batch;
using testing::Seq;
using testing::ThreadGroup;
using testing::Work;

const std::string kModels = std::string(DPSERVE_SHARED_DIR) + "/models/";
const std::string kStories = kModels + "stories260K";
const std::string kMixtral = kModels + "stories260K-mixtral-4x";

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << path;
  return nlohmann::json::parse(f);
}

using Groups = std::vector<std::unique_ptr<ThreadGroup>>;

// Runs fn(rank) on one thread per rank; a rank that throws aborts every group (so the others
// fail fast), and the first exception is rethrown.
void run_threads(int n, const std::vector<Groups*>& all, const std::function<void(int)>& fn) {
  std::mutex mu;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        {
          std::lock_guard<std::mutex> lk(mu);
          if (!first) first = std::current_exception();
        }
        for (Groups* gs : all) {
          for (auto& g : *gs) g->abort();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

// One model instance under DP attention: tp ranks, dp groups of a = tp / dp ranks. Rank r is
// attn_tp rank r % a of DP group r / a; its dp group is the one of attn_tp rank r % a.
struct DpModel {
  DpModel(const std::string& dir, int tp, int dp, ModelOptions opt = {}) : tp(tp), dp(dp) {
    const ModelConfig config = ModelConfig::from_dir(dir);
    auto weights = std::make_shared<const WeightStore>(dir);
    const int a = tp / dp;
    tp_groups = ThreadGroup::create(tp, "tp");
    attn_groups.resize(dp);
    dp_groups.resize(a);
    for (int g = 0; g < dp; ++g) attn_groups[g] = ThreadGroup::create(a, "attn_tp");
    for (int j = 0; j < a; ++j) dp_groups[j] = ThreadGroup::create(dp, "dp");
    opt.show_progress = false;
    opt.tp_size = tp;
    opt.enable_dp_attention = true;
    opt.dp_size = dp;
    for (int r = 0; r < tp; ++r) {
      opt.tp_rank = r;
      opt.tp_group = tp_groups[r].get();
      opt.attn_tp_group = attn_groups[r / a][r % a].get();
      opt.dp_group = dp_groups[r % a][r / a].get();
      models.push_back(std::make_unique<LlamaForCausalLM>(config, weights, opt));
      kvs.push_back(models.back()->make_kv_pool(1024));
      pools.push_back(std::make_unique<ThreadPool>(1));
    }
  }
  int attn_tp() const { return tp / dp; }
  int64_t vocab() const { return models[0]->config().vocab_size; }

  // fn(rank) on every rank at once.
  void run(const std::function<void(int)>& fn) {
    std::vector<Groups*> all = {&tp_groups};
    for (auto& g : attn_groups) all.push_back(&g);
    for (auto& g : dp_groups) all.push_back(&g);
    run_threads(tp, all, fn);
  }

  int tp, dp;
  Groups tp_groups;
  std::vector<Groups> attn_groups;  // [dp group][attn_tp rank]
  std::vector<Groups> dp_groups;    // [attn_tp rank][dp group]
  std::vector<std::unique_ptr<LlamaForCausalLM>> models;
  std::vector<KVPool> kvs;
  std::vector<std::unique_ptr<ThreadPool>> pools;
};

// ---------------------------------------------------------------------------------------------
// Scripted workloads: per DP group, a list of steps; each step a list of items.

struct Item {
  int seq;                      // the group's sequence index
  std::vector<int32_t> tokens;  // new tokens; empty = one greedy token from the seq's last logits
};
using Script = std::vector<std::vector<Item>>;

Item P(int seq, std::vector<int32_t> tokens) { return {seq, std::move(tokens)}; }
Item D(int seq) { return {seq, {}}; }

constexpr int kSteps = 12;

// Group g's script (g < 4); all have kSteps steps and the last step is empty everywhere.
Script make_script(int g) {
  Script s(kSteps);
  switch (g) {
    case 0:  // prefill, decode, a second sequence prefills while the first decodes
      s[0] = {P(0, {1, 403, 407, 261, 378})};
      for (int i = 1; i < 11; ++i) s[i] = {D(0)};
      s[3].push_back(P(1, {1, 410, 469}));
      for (int i = 4; i < 11; ++i) s[i].push_back(D(1));
      break;
    case 1:  // idle, a chunked prefill while group 0 decodes, decode, idle again, decode
      s[2] = {P(0, {1, 286, 261})};
      s[3] = {P(0, {376, 410, 469})};
      s[4] = {P(0, {407, 403, 378})};
      for (int i : {5, 6, 7, 9, 10}) s[i] = {D(0)};
      break;
    case 2:  // decode from BOS every step
      s[0] = {P(0, {1})};
      for (int i = 1; i < 11; ++i) s[i] = {D(0)};
      break;
    case 3:  // idle, then two sequences at once
      s[5] = {P(0, {1, 403, 407}), P(1, {1, 432, 383, 286})};
      for (int i = 6; i < 11; ++i) s[i] = {D(0), D(1)};
      break;
  }
  return s;
}

int64_t step_tokens(const std::vector<Item>& step) {
  int64_t n = 0;
  for (const Item& it : step) n += it.tokens.empty() ? 1 : static_cast<int64_t>(it.tokens.size());
  return n;
}
bool step_extends(const std::vector<Item>& step) {
  for (const Item& it : step) {
    if (it.tokens.size() > 1) return true;
  }
  return false;
}

struct ScriptResult {
  std::vector<std::vector<float>> logits;  // per step; empty for a step without work
  std::vector<std::vector<int32_t>> seqs;  // each sequence's tokens at the end
  std::vector<DpPaddingMode> modes;        // DP runs: each step's padding mode
  bool operator==(const ScriptResult&) const = default;
};

// How a DP run gets its per-step counts.
struct DpRun {
  bool caller_counts = false;                    // fill global_num_tokens (else the model gathers)
  std::optional<DpPaddingMode> force;            // forced padding mode
  const std::vector<Script>* scripts = nullptr;  // every group's script (for caller_counts)
};

// Runs `script`; `dp` null: a plain run that skips empty steps (the TP=1 reference).
ScriptResult run_script(LlamaForCausalLM& model, KVPool& kv, ThreadPool& pool, const Script& script,
                        const DpRun* dp) {
  const int64_t vocab = model.config().vocab_size;
  std::vector<Seq> seqs(4);
  std::vector<std::vector<float>> last(4);  // each sequence's last logit row
  ScriptResult res;
  if (dp) model.set_dp_padding_mode_override(dp->force);
  for (size_t s = 0; s < script.size(); ++s) {
    std::vector<Work> work;
    for (const Item& it : script[s]) {
      std::vector<int32_t> t = it.tokens;
      if (t.empty()) t = {testing::argmax_row(last[it.seq], 0, vocab)};
      work.push_back({&seqs[it.seq], t});
    }
    if (work.empty() && dp == nullptr) {
      res.logits.emplace_back();
      continue;
    }
    ForwardBatch fb = build_batch(kv, work);
    if (dp && dp->caller_counts) {
      for (const Script& other : *dp->scripts) {
        fb.global_num_tokens.push_back(step_tokens(other[s]));
        fb.is_extend_in_batch = fb.is_extend_in_batch || step_extends(other[s]);
      }
    }
    auto lg = model.forward(fb, kv, pool);
    EXPECT_EQ(lg.size(), work.size() * vocab) << "step " << s;
    for (size_t i = 0; i < work.size(); ++i) {
      last[script[s][i].seq].assign(lg.begin() + i * vocab, lg.begin() + (i + 1) * vocab);
    }
    res.logits.push_back(std::move(lg));
    if (dp) res.modes.push_back(model.last_dp_gather_plan().mode);
  }
  for (Seq& q : seqs) {
    res.seqs.push_back(q.tokens);
    kv.free(q.slots);
  }
  EXPECT_EQ(kv.available(), kv.size());
  return res;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double max_err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    max_err = std::max(max_err, static_cast<double>(std::fabs(got[i] - want[i])));
  }
  EXPECT_LE(max_err, tol) << what;
}

// Runs every group's script on the DP model; checks that the ranks of a group agree bit for bit
// and returns one result per DP group.
std::vector<ScriptResult> run_dp(DpModel& m, const std::vector<Script>& scripts, DpRun run) {
  run.scripts = &scripts;
  std::vector<ScriptResult> out(m.tp);
  m.run([&](int r) {
    out[r] = run_script(*m.models[r], m.kvs[r], *m.pools[r], scripts[r / m.attn_tp()], &run);
  });
  std::vector<ScriptResult> groups;
  for (int g = 0; g < m.dp; ++g) {
    for (int j = 1; j < m.attn_tp(); ++j) {
      EXPECT_TRUE(out[g * m.attn_tp() + j] == out[g * m.attn_tp()])
          << "group " << g << " rank " << j;
    }
    groups.push_back(out[g * m.attn_tp()]);
  }
  return groups;
}

// ---------------------------------------------------------------------------------------------

struct DpCase {
  std::string model;
  int tp, dp;
};

void PrintTo(const DpCase& c, std::ostream* os) {
  *os << c.model << " tp" << c.tp << " dp" << c.dp;
}

std::string case_name(const ::testing::TestParamInfo<DpCase>& info) {
  std::string s = info.param.model + "_tp" + std::to_string(info.param.tp) + "_dp" +
                  std::to_string(info.param.dp);
  for (char& ch : s) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return s;
}

class DpAttentionModel : public ::testing::TestWithParam<DpCase> {};

// Different sequences per group, prefill next to decode, idle groups: every group equals TP=1.
TEST_P(DpAttentionModel, GroupsMatchTp1AloneInBothPaddingModes) {
  const std::string dir = kModels + GetParam().model;
  const int tp = GetParam().tp, dp = GetParam().dp;
  std::vector<Script> scripts;
  for (int g = 0; g < dp; ++g) scripts.push_back(make_script(g));

  auto one = load_model(dir, [] {
    ModelOptions o;
    o.show_progress = false;
    return o;
  }());
  KVPool kv1 = one->make_kv_pool(1024);
  ThreadPool pool1(1);
  std::vector<ScriptResult> want;
  for (int g = 0; g < dp; ++g) want.push_back(run_script(*one, kv1, pool1, scripts[g], nullptr));

  // Variant 1, with attn_tp_size > 1: the other vocab layout over attn_tp (split embedding,
  // replicated LM head).
  for (int v = 0; v < (tp / dp > 1 ? 2 : 1); ++v) {
    ModelOptions opt;
    opt.vocab_parallel_embedding = v == 1;
    opt.vocab_parallel_lm_head = v == 0;
    DpModel m(dir, tp, dp, opt);
    EXPECT_EQ(m.models[tp - 1]->attn_dp_rank(), dp - 1);
    EXPECT_EQ(m.models[tp - 1]->attn_tp_size(), tp / dp);
    EXPECT_EQ(m.kvs[0].num_kv_heads(), 4 / (tp / dp));  // KV heads split over attn_tp only
    const std::vector<std::pair<std::string, DpRun>> runs = {
        {"auto, model gathers counts", {false, std::nullopt}},
        {"auto, caller counts", {true, std::nullopt}},
        {"forced max_len", {true, DpPaddingMode::kMaxLen}},
        {"forced sum_len", {false, DpPaddingMode::kSumLen}}};
    for (const auto& [name, run] : runs) {
      SCOPED_TRACE(name + " variant " + std::to_string(v));
      const auto got = run_dp(m, scripts, run);
      for (int g = 0; g < dp; ++g) {
        ASSERT_EQ(got[g].logits.size(), static_cast<size_t>(kSteps));
        for (int s = 0; s < kSteps; ++s) {
          expect_close(got[g].logits[s], want[g].logits[s], 1e-4,
                       "group " + std::to_string(g) + " step " + std::to_string(s));
        }
        EXPECT_EQ(got[g].seqs, want[g].seqs) << "group " << g << " greedy tokens";
      }
      // The padding mode of each step with work (the last step has none anywhere).
      for (int s = 0; s + 1 < kSteps; ++s) {
        std::vector<int64_t> counts;
        bool extend = false;
        for (const Script& sc : scripts) {
          counts.push_back(step_tokens(sc[s]));
          extend = extend || step_extends(sc[s]);
        }
        const DpPaddingMode want_mode =
            run.force ? *run.force : get_dp_padding_mode(extend, counts);
        EXPECT_EQ(got[0].modes[s], want_mode) << "step " << s;
      }
      if (!run.force) {  // the workload exercises both modes under the per-step rule
        EXPECT_NE(std::count(got[0].modes.begin(), got[0].modes.end() - 1, DpPaddingMode::kMaxLen),
                  0);
        EXPECT_NE(std::count(got[0].modes.begin(), got[0].modes.end() - 1, DpPaddingMode::kSumLen),
                  0);
      }
    }
  }
}

// Greedy text per group against stories260K's references; groups that finish early run idle
// forwards until the longest is done.
TEST_P(DpAttentionModel, GreedyTextMatchesStories260KReference) {
  const auto ref = read_json(kStories + "/reference_outputs.json");
  const auto zoo = ref["greedy_prompt_Zoo"]["ids"].get<std::vector<int32_t>>();
  struct Case {
    std::vector<int32_t> prompt, want;
    int max_new;
  };
  const std::vector<Case> cases = {
      {ref["prompt_ids_with_bos"].get<std::vector<int32_t>>(),
       ref["greedy"]["ids"].get<std::vector<int32_t>>(),
       ref["greedy"]["max_new_tokens"].get<int>()},
      {{1}, ref["greedy_from_bos_only"]["ids"].get<std::vector<int32_t>>(), 256},
      {{1, zoo[0], zoo[1], zoo[2]},
       std::vector<int32_t>(zoo.begin() + 3, zoo.end()),
       static_cast<int>(zoo.size()) - 3}};
  DpModel m(kModels + GetParam().model, GetParam().tp, GetParam().dp);
  int steps = 0;
  for (const Case& c : cases) steps = std::max(steps, c.max_new);
  std::vector<std::vector<int32_t>> out(m.tp);
  m.run([&](int r) {
    const Case& c = cases[(r / m.attn_tp()) % cases.size()];
    LlamaForCausalLM& model = *m.models[r];
    KVPool& kv = m.kvs[r];
    Seq seq;
    std::vector<int32_t> next = c.prompt;
    bool done = false;
    for (int i = 0; i < steps; ++i) {
      std::vector<Work> work;
      if (!done) work.push_back({&seq, next});
      ForwardBatch fb = build_batch(kv, work);
      const auto lg = model.forward(fb, kv, *m.pools[r]);
      if (done) {
        EXPECT_TRUE(lg.empty());
        continue;
      }
      const int32_t t = testing::argmax_row(lg, 0, m.vocab());
      out[r].push_back(t);
      next = {t};
      done = t == 1 || t == 2 || static_cast<int>(out[r].size()) == c.max_new;
    }
    kv.free(seq.slots);
  });
  for (int r = 0; r < m.tp; ++r) {
    EXPECT_EQ(out[r], cases[(r / m.attn_tp()) % cases.size()].want) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, DpAttentionModel,
                         ::testing::Values(DpCase{"stories260K", 2, 2}, DpCase{"stories260K", 4, 2},
                                           DpCase{"stories260K", 4, 4},
                                           DpCase{"stories260K-mixtral-4x", 2, 2},
                                           DpCase{"stories260K-mixtral-4x", 4, 2},
                                           DpCase{"stories260K-mixtral-4x", 4, 4}),
                         case_name);

// ---------------------------------------------------------------------------------------------
// dp_gather / dp_scatter alone: 3 groups with uneven counts (one empty), both modes.

TEST(DpGather, BothModesGiveTheConcatenation) {
  const int64_t width = 3;
  for (const std::vector<int64_t>& counts :
       {std::vector<int64_t>{2, 0, 3}, std::vector<int64_t>{0, 0, 1}, std::vector<int64_t>{4, 4, 4},
        std::vector<int64_t>{0, 0, 0}}) {
    for (DpPaddingMode mode : {DpPaddingMode::kMaxLen, DpPaddingMode::kSumLen}) {
      SCOPED_TRACE(std::string(to_string(mode)) + " counts " + std::to_string(counts[0]) + "," +
                   std::to_string(counts[1]) + "," + std::to_string(counts[2]));
      const DpGatherPlan plan = make_dp_gather_plan(counts, mode);
      EXPECT_EQ(plan.offsets, (std::vector<int64_t>{0, counts[0], counts[0] + counts[1],
                                                    counts[0] + counts[1] + counts[2]}));
      std::vector<std::vector<float>> local(3);
      std::vector<float> want;
      for (int g = 0; g < 3; ++g) {
        for (int64_t i = 0; i < counts[g] * width; ++i) local[g].push_back(100.0f * g + i);
        want.insert(want.end(), local[g].begin(), local[g].end());
      }
      Groups groups = ThreadGroup::create(3, "dp");
      std::vector<std::vector<float>> global(3), back(3);
      run_threads(3, {&groups}, [&](int g) {
        global[g].assign(plan.buffer_rows() * width, -1.0f);
        std::vector<float> scratch;
        dp_gather(local[g].data(), width, global[g].data(), plan, g, groups[g].get(), scratch);
        global[g].resize(plan.total_tokens() * width);
        back[g].assign(counts[g] * width, -1.0f);
        dp_scatter(global[g].data(), width, back[g].data(), plan, g);
      });
      for (int g = 0; g < 3; ++g) {
        EXPECT_EQ(global[g], want) << "rank " << g;
        EXPECT_EQ(back[g], local[g]) << "rank " << g;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Option errors.

std::string build_error(ModelOptions opt) {
  opt.show_progress = false;
  try {
    load_model(kStories, opt);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(DpAttentionErrors, OptionsAreChecked) {
  ModelOptions o;
  o.dp_size = 2;
  EXPECT_TRUE(has(build_error(o), "needs enable_dp_attention")) << build_error(o);
  o.enable_dp_attention = true;
  o.tp_size = 3;
  EXPECT_TRUE(has(build_error(o), "divisible by --dp-size")) << build_error(o);
  // tp 4, dp 2 without the groups.
  Groups tp = ThreadGroup::create(4), attn = ThreadGroup::create(2), dpg = ThreadGroup::create(2);
  o.tp_size = 4;
  o.tp_rank = 3;
  o.tp_group = tp[3].get();
  EXPECT_TRUE(has(build_error(o), "needs an attn_tp group")) << build_error(o);
  o.attn_tp_group = attn[0].get();  // rank 3 is attn_tp rank 1
  EXPECT_TRUE(has(build_error(o), "attn_tp group is rank 1 of 2")) << build_error(o);
  o.attn_tp_group = attn[1].get();
  EXPECT_TRUE(has(build_error(o), "needs a dp group")) << build_error(o);
  o.dp_group = dpg[1].get();
  EXPECT_EQ(build_error(o), "");
  // Heads are checked against attn_tp_size: 6 KV heads split over 2 attention ranks but not 4.
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.num_attention_heads = 24;
  c.num_key_value_heads = 6;
  c.intermediate_size = 96;
  EXPECT_NO_THROW(check_tensor_parallel(c, 8, "m", 0, 2));
  try {
    check_tensor_parallel(c, 8, "my-model", 0, 4);
    ADD_FAILURE() << "6 KV heads over 4 attention ranks accepted";
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), "num_key_value_heads (6)") && has(e.what(), "attn_tp_size"))
        << e.what();
  }
}

}  // namespace
}  // namespace dpserve
