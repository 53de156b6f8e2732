#include "dpserve/layers/moe.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>

#include "dpserve/common/errors.h"
#include "dpserve/layers/activation.h"

namespace dpserve {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename T>
T* grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// y[i] += w * d[i] for n floats.
void axpy(float w, const float* d, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += w * d[i];
}

void check_expert(const ExpertWeights& e, int64_t hidden, int64_t inter, const char* what) {
  DPSERVE_CHECK(e.gate.rows == inter && e.gate.cols == hidden && e.up.rows == inter &&
                    e.up.cols == hidden && e.down.rows == hidden && e.down.cols == inter,
                "{} weights: gate [{}, {}], up [{}, {}], down [{}, {}] for hidden {}", what,
                e.gate.rows, e.gate.cols, e.up.rows, e.up.cols, e.down.rows, e.down.cols, hidden);
}

}  // namespace

MoeImpl parse_moe_impl(const std::string& name) {
  if (name == "fused") return MoeImpl::kFused;
  if (name == "fused-split") return MoeImpl::kFusedSplit;
  if (name == "naive") return MoeImpl::kNaive;
  throw_error("unknown MoE implementation '{}' (expected fused, fused-split or naive)", name);
}

const char* moe_impl_name(MoeImpl impl) {
  switch (impl) {
    case MoeImpl::kFused:
      return "fused";
    case MoeImpl::kFusedSplit:
      return "fused-split";
    case MoeImpl::kNaive:
      break;
  }
  return "naive";
}

void route_topk(const float* logits, int64_t m, int64_t num_experts, int64_t top_k,
                bool renormalize, int32_t* ids, float* weights) {
  DPSERVE_CHECK(top_k >= 1 && top_k <= num_experts, "top_k {} of {} experts", top_k, num_experts);
  for (int64_t t = 0; t < m; ++t) {
    const float* l = logits + t * num_experts;
    int32_t* id = ids + t * top_k;
    float* w = weights + t * top_k;
    const float mx = *std::max_element(l, l + num_experts);
    double sum = 0;
    for (int64_t e = 0; e < num_experts; ++e) sum += std::exp(static_cast<double>(l[e] - mx));
    // Selection of the k largest: strict '>' keeps the lower id on ties; an id already taken is
    // skipped by comparing against the previous pick (value, then id).
    for (int64_t j = 0; j < top_k; ++j) {
      int32_t best = -1;
      for (int64_t e = 0; e < num_experts; ++e) {
        if (j > 0) {
          const float pv = l[id[j - 1]];
          if (l[e] > pv || (l[e] == pv && e <= id[j - 1])) continue;  // taken or ranked above
        }
        if (best < 0 || l[e] > l[best]) best = static_cast<int32_t>(e);
      }
      id[j] = best;
      w[j] = static_cast<float>(std::exp(static_cast<double>(l[best] - mx)) / sum);
    }
    if (renormalize) {
      double s = 0;
      for (int64_t j = 0; j < top_k; ++j) s += w[j];
      for (int64_t j = 0; j < top_k; ++j) w[j] = static_cast<float>(w[j] / s);
    }
  }
}

SparseMoeBlock::SparseMoeBlock(Params params) : p_(std::move(params)) {
  const int64_t h = p_.router.cols;
  DPSERVE_CHECK(p_.router.rows == p_.num_experts && p_.num_experts > 0,
                "router has {} rows for {} experts", p_.router.rows, p_.num_experts);
  DPSERVE_CHECK(p_.top_k >= 1 && p_.top_k <= p_.num_experts, "top_k {}", p_.top_k);
  DPSERVE_CHECK(p_.first_expert >= 0 && p_.first_expert + num_local_experts() <= p_.num_experts,
                "local experts [{}, {}) outside {}", p_.first_expert,
                p_.first_expert + num_local_experts(), p_.num_experts);
  inter_ = p_.experts.empty() ? 0 : p_.experts[0].gate.rows;
  for (const ExpertWeights& e : p_.experts) check_expert(e, h, inter_, "expert");
  if (p_.shared) {
    check_expert(*p_.shared, h, p_.shared->gate.rows, "shared expert");
    DPSERVE_CHECK(static_cast<int64_t>(p_.shared_gate.size()) == h, "shared_expert_gate size");
  }
}

void SparseMoeBlock::forward(const float* x, int64_t m, float* y, ThreadPool& pool) {
  const int64_t h = hidden(), k = p_.top_k;
  const double t0 = now_s();
  ++stats_.forwards;
  stats_.tokens += m;
  ids_.resize(static_cast<size_t>(m * k));
  weights_.resize(static_cast<size_t>(m * k));
  std::memset(y, 0, static_cast<size_t>(m * h) * sizeof(float));
  if (m == 0) return;
  kernels::linear(x, m, p_.router, nullptr, grow(logits_, m * p_.num_experts), pool);
  route_topk(logits_.data(), m, p_.num_experts, k, p_.renormalize, ids_.data(), weights_.data());
  if (p_.impl == MoeImpl::kNaive) {
    experts_naive(x, m, y, pool);
  } else {
    experts_fused(x, m, y, pool);
  }
  if (p_.shared) add_shared(x, m, y, pool);
  const double t1 = now_s();
  if (p_.group != nullptr && p_.group->size() > 1) p_.group->all_reduce_sum(y, m * h);
  const double t2 = now_s();
  stats_.reduce_seconds += t2 - t1;
  stats_.seconds += t2 - t0;
}

void SparseMoeBlock::experts_fused(const float* x, int64_t m, float* y, ThreadPool& pool) {
  const int64_t h = hidden(), k = p_.top_k, ne = num_local_experts(), e0 = p_.first_expert;
  const int64_t inter = inter_;
  // Counting sort of the (token, expert) pairs by local expert, tokens in order within one.
  offsets_.assign(static_cast<size_t>(ne + 1), 0);
  for (int64_t i = 0; i < m * k; ++i) {
    const int64_t e = ids_[i] - e0;
    if (e >= 0 && e < ne) ++offsets_[e + 1];
  }
  for (int64_t e = 0; e < ne; ++e) offsets_[e + 1] += offsets_[e];
  const int64_t rows = offsets_[ne];
  stats_.expert_rows += rows;
  if (rows == 0) return;
  int32_t* row_token = grow(row_token_, rows);
  float* row_weight = grow(row_weight_, rows);
  float* xg = grow(xg_, rows * h);
  // offsets_[e] serves as the fill cursor of expert e, then is restored.
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = ids_[t * k + j] - e0;
      if (e < 0 || e >= ne) continue;
      const int64_t r = offsets_[e]++;
      row_token[r] = static_cast<int32_t>(t);
      row_weight[r] = weights_[t * k + j];
      std::memcpy(xg + r * h, x + t * h, static_cast<size_t>(h) * sizeof(float));
    }
  }
  for (int64_t e = ne; e > 0; --e) offsets_[e] = offsets_[e - 1];
  offsets_[0] = 0;

  float* g = grow(g_, rows * inter);
  float* u = grow(u_, rows * inter);
  float* d = grow(d_, rows * h);
  active_.clear();
  for (int64_t e = 0; e < ne; ++e) {
    if (offsets_[e + 1] > offsets_[e]) active_.push_back(static_cast<int32_t>(e));
  }
  stats_.active_experts += static_cast<int64_t>(active_.size());
  // One expert's rows r0 .. r0 + n through gate/up, SwiGLU and down, with `p`'s threads.
  auto run_expert = [&](int64_t e, ThreadPool& p, ThreadPool* act_pool) {
    const int64_t r0 = offsets_[e], n = offsets_[e + 1] - r0;
    const ExpertWeights& w = p_.experts[e];
    kernels::linear(xg + r0 * h, n, w.gate, nullptr, g + r0 * inter, p);
    kernels::linear(xg + r0 * h, n, w.up, nullptr, u + r0 * inter, p);
    silu_and_mul(g + r0 * inter, u + r0 * inter, n * inter, g + r0 * inter, act_pool);
    kernels::linear(g + r0 * inter, n, w.down, nullptr, d + r0 * h, p);
  };
  const int nt = pool.num_threads();
  const auto n_active = static_cast<int64_t>(active_.size());
  if (p_.impl == MoeImpl::kFused && nt > 1 && n_active >= kExpertsPerThread * nt) {
    // Enough experts to share out whole: each thread takes the next expert and runs it alone
    // (single-threaded linear()), so a small expert costs no fork/join of the pool.
    while (static_cast<int>(solo_.size()) < nt) solo_.push_back(std::make_unique<ThreadPool>(1));
    std::atomic<int64_t> next{0};
    pool.run_on_all([&](int t) {
      for (int64_t i = next.fetch_add(1); i < n_active; i = next.fetch_add(1)) {
        run_expert(active_[i], *solo_[t], nullptr);
      }
    });
  } else {
    for (int32_t e : active_) run_expert(e, pool, &pool);
  }
  for (int64_t r = 0; r < rows; ++r) axpy(row_weight[r], d + r * h, h, y + row_token[r] * h);
}

void SparseMoeBlock::experts_naive(const float* x, int64_t m, float* y, ThreadPool& pool) {
  const int64_t h = hidden(), k = p_.top_k, ne = num_local_experts(), e0 = p_.first_expert;
  float* g = grow(g_, inter_);
  float* u = grow(u_, inter_);
  float* d = grow(d_, h);
  std::vector<bool> active(static_cast<size_t>(ne), false);
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = ids_[t * k + j] - e0;
      if (e < 0 || e >= ne) continue;
      const ExpertWeights& w = p_.experts[e];
      kernels::linear(x + t * h, 1, w.gate, nullptr, g, pool);
      kernels::linear(x + t * h, 1, w.up, nullptr, u, pool);
      silu_and_mul(g, u, inter_, g, nullptr);
      kernels::linear(g, 1, w.down, nullptr, d, pool);
      axpy(weights_[t * k + j], d, h, y + t * h);
      ++stats_.expert_rows;
      active[e] = true;
    }
  }
  stats_.active_experts += std::count(active.begin(), active.end(), true);
}

void SparseMoeBlock::add_shared(const float* x, int64_t m, float* y, ThreadPool& pool) {
  const int64_t h = hidden();
  const ExpertWeights& w = *p_.shared;
  const int64_t inter = w.gate.rows;
  float* g = grow(g_, m * inter);
  float* u = grow(u_, m * inter);
  float* d = grow(d_, m * h);
  kernels::linear(x, m, w.gate, nullptr, g, pool);
  kernels::linear(x, m, w.up, nullptr, u, pool);
  silu_and_mul(g, u, m * inter, g, &pool);
  kernels::linear(g, m, w.down, nullptr, d, pool);
  for (int64_t t = 0; t < m; ++t) {
    double dot = 0;
    for (int64_t i = 0; i < h; ++i) dot += static_cast<double>(x[t * h + i]) * p_.shared_gate[i];
    const float s = static_cast<float>(1.0 / (1.0 + std::exp(-dot)));
    axpy(s, d + t * h, h, y + t * h);
  }
}

}  // namespace dpserve
