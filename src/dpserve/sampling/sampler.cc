// Batched sampler: logits processors, temperature, joint top-k/top-p/min-p filters and a
// counter-based draw per row; see sampler.h for the exact pipeline.

#include "dpserve/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dpserve/common/errors.h"
#include "dpserve/common/thread_pool.h"
#include "dpserve/layers/vec_math.h"

namespace dpserve {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Up to this k, top-k selection scans with a bounded heap; above it, nth_element.
constexpr int64_t kHeapSelectMax = 4096;
// Sampling with top_k up to this uses the heap; larger k and top_p alone use prefix_candidates.
constexpr int64_t kHeapSelectK = 128;
// Elements per partial sum of the full-vocabulary draw.
constexpr int64_t kBlock = 1024;
// Histogram bins (by scaled logit below the max) that locate the top-p cut without a sort.
constexpr int kTopPBins = 2048;
// Logits further than this below the max share the last bin (their mass is below e^-30 each).
constexpr float kTopPRange = 30.0f;

// Max of row[0..n); NaNs (a broken model output) are replaced by -inf first.
float row_max(float* row, int64_t n) {
  int64_t i = 0;
  float m = kNegInf;
#ifdef DPSERVE_HAVE_AVX2
  __m256 m0 = _mm256_set1_ps(kNegInf), m1 = m0, m2 = m0, m3 = m0;
  __m256 nan = _mm256_setzero_ps();
  for (; i + 32 <= n; i += 32) {
    const __m256 x0 = _mm256_loadu_ps(row + i), x1 = _mm256_loadu_ps(row + i + 8);
    const __m256 x2 = _mm256_loadu_ps(row + i + 16), x3 = _mm256_loadu_ps(row + i + 24);
    nan = _mm256_or_ps(nan, _mm256_or_ps(_mm256_cmp_ps(x0, x1, _CMP_UNORD_Q),
                                         _mm256_cmp_ps(x2, x3, _CMP_UNORD_Q)));
    m0 = _mm256_max_ps(m0, x0);
    m1 = _mm256_max_ps(m1, x1);
    m2 = _mm256_max_ps(m2, x2);
    m3 = _mm256_max_ps(m3, x3);
  }
  m = vec::hmax8(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
  if (_mm256_movemask_ps(nan) != 0) {
    for (int64_t j = 0; j < i; ++j) {
      if (std::isnan(row[j])) row[j] = kNegInf;
    }
    m = kNegInf;
    for (int64_t j = 0; j < i; ++j) m = std::max(m, row[j]);
  }
#endif
  for (; i < n; ++i) {
    if (std::isnan(row[i])) row[i] = kNegInf;
    m = std::max(m, row[i]);
  }
  return m;
}

// First index holding the value m.
int32_t first_index_of(const float* row, int64_t n, float m) {
  int64_t i = 0;
#ifdef DPSERVE_HAVE_AVX2
  const __m256 vm = _mm256_set1_ps(m);
  for (; i + 8 <= n; i += 8) {
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + i), vm, _CMP_EQ_OQ));
    if (mask != 0) return static_cast<int32_t>(i + __builtin_ctz(static_cast<unsigned>(mask)));
  }
#endif
  for (; i < n; ++i) {
    if (row[i] == m) return static_cast<int32_t>(i);
  }
  return 0;
}

void scale_row(float* row, int64_t n, float s) {
  for (int64_t i = 0; i < n; ++i) row[i] *= s;
}

// Sum of exp(row[i] - m), accumulated per block of kBlock elements into `block_sums` (when
// given) and returned in double; with `out`, also stores each term.
double exp_sum(const float* row, int64_t n, float m, float* out, std::vector<float>* block_sums) {
  if (block_sums != nullptr) block_sums->clear();
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t end = std::min(n, b + kBlock);
    int64_t i = b;
    float sum = 0.0f;
#ifdef DPSERVE_HAVE_AVX2
    const __m256 vm = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= end; i += 8) {
      const __m256 e = vec::exp8(_mm256_sub_ps(_mm256_loadu_ps(row + i), vm));
      if (out != nullptr) _mm256_storeu_ps(out + i, e);
      acc = _mm256_add_ps(acc, e);
    }
    sum = vec::hsum8(acc);
#endif
    for (; i < end; ++i) {
      const float e = vec::exp1(row[i] - m);
      if (out != nullptr) out[i] = e;
      sum += e;
    }
    if (block_sums != nullptr) block_sums->push_back(sum);
    total += sum;
  }
  return total;
}

}  // namespace

uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

double counter_uniform(uint64_t seed, uint64_t step) {
  // SplitMix64 stream of the mixed seed, read at position `step`: a pure function of both.
  const uint64_t base = mix64(seed ^ 0x6A09E667F3BCC909ULL);
  const uint64_t z = mix64(base + (step + 1) * 0x9E3779B97F4A7C15ULL);
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

uint64_t derive_seed(uint64_t seed, uint64_t index) {
  if (index == 0) return seed;
  return mix64(seed ^ mix64(index * 0xD1B54A32D192ED03ULL + 0x8CB92BA72F3D8DD7ULL));
}

// ---------------------------------------------------------------------------------------------
// RequestSamplingState

RequestSamplingState::RequestSamplingState(SamplingParams params,
                                           std::span<const int32_t> prompt_ids, uint64_t seed)
    : params_(std::move(params)),
      seed_(seed),
      track_seen_(params_.repetition_penalty != 1.0),
      track_counts_(params_.frequency_penalty != 0.0 || params_.presence_penalty != 0.0) {
  if (track_seen_) {
    for (int32_t t : prompt_ids) mark_seen(t);
  }
}

void RequestSamplingState::mark_seen(int32_t token) {
  if (seen_set_.insert(token).second) seen_list_.push_back(token);
}

void RequestSamplingState::append(int32_t token) {
  ++step_;
  if (track_seen_) mark_seen(token);
  if (track_counts_) ++output_counts_[token];
}

// ---------------------------------------------------------------------------------------------
// Sampler

Sampler::Sampler(std::vector<int32_t> eos_token_ids, uint64_t seed, ThreadPool* pool)
    : eos_token_ids_(std::move(eos_token_ids)), rng_(seed), pool_(pool) {
  scratch_.resize(pool_ != nullptr ? static_cast<size_t>(pool_->num_threads()) : 1);
}

RequestSamplingState Sampler::make_state(const SamplingParams& params,
                                         std::span<const int32_t> prompt_ids, uint64_t copy_index) {
  uint64_t seed;
  if (params.seed) {
    seed = derive_seed(*params.seed, copy_index);
  } else {
    std::lock_guard<std::mutex> lock(rng_mu_);
    seed = rng_();
  }
  return RequestSamplingState(params, prompt_ids, seed);
}

void Sampler::apply_logit_processors(float* row, int64_t vocab,
                                     const RequestSamplingState& state) const {
  const SamplingParams& p = state.params();
  auto in_vocab = [vocab](int32_t t) { return t >= 0 && t < vocab; };
  if (p.repetition_penalty != 1.0) {
    const float r = static_cast<float>(p.repetition_penalty);
    for (int32_t t : state.seen_tokens()) {
      if (!in_vocab(t)) continue;
      row[t] = row[t] > 0.0f ? row[t] / r : row[t] * r;
    }
  }
  if (p.frequency_penalty != 0.0 || p.presence_penalty != 0.0) {
    const float fp = static_cast<float>(p.frequency_penalty);
    const float pp = static_cast<float>(p.presence_penalty);
    for (const auto& [t, count] : state.output_counts()) {
      if (!in_vocab(t) || count <= 0) continue;
      row[t] -= static_cast<float>(count) * fp + pp;
    }
  }
  for (const auto& [t, bias] : p.logit_bias) {
    if (in_vocab(t)) row[t] += bias;
  }
  if (state.step() < p.min_new_tokens) {
    for (int32_t t : eos_token_ids_) {
      if (in_vocab(t)) row[t] = kNegInf;
    }
    for (int32_t t : p.stop_token_ids) {
      if (in_vocab(t)) row[t] = kNegInf;
    }
  }
}

void Sampler::select_top(const float* row, int64_t vocab, int64_t k, std::vector<Candidate>& work,
                         std::vector<Candidate>& out) {
  // Total order: larger value first, lower token id first on ties.
  auto better = [](const Candidate& a, const Candidate& b) {
    return a.value > b.value || (a.value == b.value && a.token < b.token);
  };
  k = std::min(k, vocab);
  work.clear();
  if (k <= kHeapSelectMax) {
    // Bounded heap whose front is the worst kept candidate; later ids only enter when strictly
    // larger (ties keep the lower id already held).
    for (int64_t i = 0; i < k; ++i) {
      work.push_back(Candidate{row[i], static_cast<int32_t>(i)});
      std::push_heap(work.begin(), work.end(), better);
    }
    auto offer = [&](int64_t i) {
      if (row[i] > work.front().value) {
        std::pop_heap(work.begin(), work.end(), better);
        work.back() = Candidate{row[i], static_cast<int32_t>(i)};
        std::push_heap(work.begin(), work.end(), better);
      }
    };
    int64_t i = k;
#ifdef DPSERVE_HAVE_AVX2
    for (; i + 8 <= vocab; i += 8) {
      // Skip blocks of 8 with nothing above the current threshold.
      unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(
          _mm256_cmp_ps(_mm256_loadu_ps(row + i), _mm256_set1_ps(work.front().value), _CMP_GT_OQ)));
      while (mask != 0) {
        offer(i + __builtin_ctz(mask));
        mask &= mask - 1;
      }
    }
#endif
    for (; i < vocab; ++i) offer(i);
    std::sort_heap(work.begin(), work.end(), better);
  } else {
    work.resize(static_cast<size_t>(vocab));
    for (int64_t i = 0; i < vocab; ++i) work[i] = Candidate{row[i], static_cast<int32_t>(i)};
    std::nth_element(work.begin(), work.begin() + k, work.end(), better);
    work.resize(static_cast<size_t>(k));
    std::sort(work.begin(), work.end(), better);
  }
  out.swap(work);
}

void Sampler::prefix_candidates(const float* row, int64_t vocab, float m, int64_t k, double top_p,
                                double z, Scratch& s) {
  auto better = [](const Candidate& a, const Candidate& b) {
    return a.value > b.value || (a.value == b.value && a.token < b.token);
  };
  auto weight = [&](const Candidate& c) { return static_cast<double>(s.weights[c.token]); };
  const double limit = top_p * z;
  std::vector<Candidate>& cands = s.cands;

  // Survivors: a token whose weight w satisfies w * vocab <= (1 - top_p) * z cannot be kept (all
  // tokens ranked at or below it weigh less than (1 - top_p) * z together, so the mass above it
  // exceeds top_p * z). This drops most of a peaked distribution with one vectorized scan.
  float thr = kNegInf;
  if (top_p < 1.0) {
    const double tail = (1.0 - top_p) * z / static_cast<double>(vocab);
    if (tail > 0.0) thr = m + static_cast<float>(std::log(tail)) - 1e-4f;
  }
  // Keeps the boundary candidates (sorted best first) while rank < k and mass above <= top_p.
  cands.clear();
  double above = 0.0;
  auto take_sorted = [&](const std::vector<Candidate>& sorted) {
    for (const Candidate& c : sorted) {
      if (static_cast<int64_t>(cands.size()) >= k || (top_p < 1.0 && above > limit)) break;
      cands.push_back(c);
      if (top_p < 1.0) above += weight(c);
    }
  };

  // Few survivors (the usual peaked distribution): gather and sort them.
  constexpr size_t kMaxGathered = 4096;
  std::vector<Candidate>& surv = s.select;
  surv.clear();
  int64_t i = 0;
#ifdef DPSERVE_HAVE_AVX2
  const __m256 vthr = _mm256_set1_ps(thr);
  for (; i + 8 <= vocab && surv.size() <= kMaxGathered; i += 8) {
    unsigned mask = static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + i), vthr, _CMP_GE_OQ)));
    while (mask != 0) {
      const int64_t j = i + __builtin_ctz(mask);
      surv.push_back(Candidate{row[j], static_cast<int32_t>(j)});
      mask &= mask - 1;
    }
  }
#endif
  for (; i < vocab && surv.size() <= kMaxGathered; ++i) {
    if (row[i] >= thr) surv.push_back(Candidate{row[i], static_cast<int32_t>(i)});
  }
  if (surv.size() <= kMaxGathered) {
    std::sort(surv.begin(), surv.end(), better);
    take_sorted(surv);
    return;
  }

  // Many survivors: histogram the row by distance below the max (bin 0 = most likely). The bin
  // where the count reaches k or the mass crosses top_p * z holds the cut: bins above it are
  // kept whole and only that bin is sorted.
  const float lo = std::max(m - kTopPRange, thr);
  const float scale = m > lo ? static_cast<float>(kTopPBins) / (m - lo) : 0.0f;
  auto bin_of = [&](float v) {
    const float d = (m - v) * scale;
    return v < thr                             ? kTopPBins + 1
           : d < static_cast<float>(kTopPBins) ? static_cast<int>(d)
                                               : kTopPBins;
  };
  // Two interleaved sub-histograms (float mass, int32 counts: 33 KB, within L1) keep
  // consecutive increments off one memory chain.
  constexpr int kNb = kTopPBins + 2;
  s.bin_count.assign(2 * kNb, 0);
  s.bin_mass.assign(2 * kNb, 0.0f);
  const bool use_mass = top_p < 1.0;
  int32_t* cnt = s.bin_count.data();
  float* mass = s.bin_mass.data();
  for (i = 0; i < vocab; ++i) {
    const int b = bin_of(row[i]) + static_cast<int>(i & 1) * kNb;
    ++cnt[b];
    if (use_mass) mass[b] += s.weights[i];
  }
  int64_t count = 0;
  int cut = kTopPBins;
  for (int b = 0; b <= kTopPBins; ++b) {
    const int64_t bc = static_cast<int64_t>(cnt[b]) + cnt[b + kNb];
    const double bm = static_cast<double>(mass[b]) + mass[b + kNb];
    if (count + bc >= k || (use_mass && above + bm > limit)) {
      cut = b;
      break;
    }
    count += bc;
    above += bm;
  }
  std::vector<Candidate>& boundary = s.boundary;
  boundary.clear();
  auto collect = [&](int64_t j) {
    const int b = bin_of(row[j]);
    if (b < cut) {
      cands.push_back(Candidate{row[j], static_cast<int32_t>(j)});
    } else if (b == cut) {
      boundary.push_back(Candidate{row[j], static_cast<int32_t>(j)});
    }
  };
  i = 0;
#ifdef DPSERVE_HAVE_AVX2
  {
    // Only lanes at or above the cut bin's lower edge (d < cut + 1) and at or above thr matter.
    const __m256 vm = _mm256_set1_ps(m);
    const __m256 vscale = _mm256_set1_ps(scale);
    const __m256 vedge = _mm256_set1_ps(cut >= kTopPBins ? INFINITY : static_cast<float>(cut + 1));
    for (; i + 8 <= vocab; i += 8) {
      const __m256 v = _mm256_loadu_ps(row + i);
      const __m256 d = _mm256_mul_ps(_mm256_sub_ps(vm, v), vscale);
      const __m256 in =
          _mm256_and_ps(_mm256_cmp_ps(d, vedge, _CMP_LT_OQ), _mm256_cmp_ps(v, vthr, _CMP_GE_OQ));
      unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(in));
      while (mask != 0) {
        collect(i + __builtin_ctz(mask));
        mask &= mask - 1;
      }
    }
  }
#endif
  for (; i < vocab; ++i) collect(i);
  std::sort(boundary.begin(), boundary.end(), better);
  take_sorted(boundary);
}

SampleResult Sampler::sample_row(float* row, int64_t vocab, RequestSamplingState& state,
                                 Scratch& s) const {
  const SamplingParams& p = state.params();
  apply_logit_processors(row, vocab, state);

  const bool want_logprobs = p.return_logprob || p.top_logprobs_num > 0;
  const bool greedy = p.is_greedy();
  const float temperature = static_cast<float>(p.effective_temperature());
  // Greedy rows need the scaled logits only for their logprobs.
  if (temperature != 1.0f && (!greedy || want_logprobs)) scale_row(row, vocab, 1.0f / temperature);
  const float m = row_max(row, vocab);

  SampleResult result;
  if (m == kNegInf) {
    // Every token masked: nothing valid to draw; take the first id (SGLang falls back to argmax).
    result.token = 0;
    state.append(result.token);
    return result;
  }

  const int64_t k = p.top_k == SamplingParams::kTopKAll ? vocab : std::min<int64_t>(p.top_k, vocab);
  const double u = counter_uniform(state.seed(), static_cast<uint64_t>(state.step()));
  double z = 0.0;  // sum of exp(row - m); 0 until computed
  bool have_weights = false;

  if (greedy) {
    result.token = first_index_of(row, vocab, m);
  } else if (k == vocab && p.top_p >= 1.0 && p.min_p <= 0.0) {
    // Plain temperature sampling: inverse CDF over the whole vocabulary in id order, located
    // block by block through the partial sums.
    s.weights.resize(static_cast<size_t>(vocab));
    z = exp_sum(row, vocab, m, s.weights.data(), &s.block_sums);
    const double target = u * z;
    double cum = 0.0;
    result.token = -1;
    for (size_t b = 0; b < s.block_sums.size() && result.token < 0; ++b) {
      if (cum + s.block_sums[b] <= target) {
        cum += s.block_sums[b];
        continue;
      }
      const int64_t end = std::min<int64_t>(vocab, static_cast<int64_t>(b + 1) * kBlock);
      for (int64_t i = static_cast<int64_t>(b) * kBlock; i < end; ++i) {
        cum += s.weights[i];
        if (cum > target && s.weights[i] > 0.0f) {
          result.token = static_cast<int32_t>(i);
          break;
        }
      }
    }
    if (result.token < 0) {
      // Rounding left the target unreached: the last token with weight.
      int64_t i = vocab - 1;
      while (i > 0 && s.weights[i] <= 0.0f) --i;
      result.token = static_cast<int32_t>(i);
    }
  } else {
    std::vector<Candidate>& cands = s.cands;
    if (k <= kHeapSelectK && (p.top_p >= 1.0 || k < vocab)) {
      // A small top k by bounded heap, sorted; top_p applies with the full distribution's mass.
      select_top(row, vocab, k, s.select, cands);
      if (p.top_p < 1.0) {
        z = exp_sum(row, vocab, m, nullptr, nullptr);
        double above = 0.0;
        size_t keep = 0;
        while (keep < cands.size() && above <= p.top_p * z) {
          above += std::exp(static_cast<double>(cands[keep].value - m));
          ++keep;
        }
        cands.resize(keep);
      }
    } else if (k < vocab || p.top_p < 1.0) {
      if (p.top_p < 1.0) {
        s.weights.resize(static_cast<size_t>(vocab));
        z = exp_sum(row, vocab, m, s.weights.data(), nullptr);
        have_weights = true;
      }
      prefix_candidates(row, vocab, m, k, p.top_p, z, s);
    } else {
      // min_p alone: a threshold scan in id order.
      cands.clear();
      const float pre = m + static_cast<float>(std::log(p.min_p)) - 1e-3f;
      int64_t i = 0;
#ifdef DPSERVE_HAVE_AVX2
      for (; i + 8 <= vocab; i += 8) {
        unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(
            _mm256_cmp_ps(_mm256_loadu_ps(row + i), _mm256_set1_ps(pre), _CMP_GE_OQ)));
        while (mask != 0) {
          const int64_t j = i + __builtin_ctz(mask);
          cands.push_back(Candidate{row[j], static_cast<int32_t>(j)});
          mask &= mask - 1;
        }
      }
#endif
      for (; i < vocab; ++i) {
        if (row[i] >= pre) cands.push_back(Candidate{row[i], static_cast<int32_t>(i)});
      }
    }
    auto weight = [&](const Candidate& c) {
      return have_weights ? static_cast<double>(s.weights[c.token])
                          : std::exp(static_cast<double>(c.value - m));
    };
    if (p.min_p > 0.0) {
      // p_i >= min_p * p_max, i.e. exp(logit_i - max) >= min_p (the top token always passes).
      std::erase_if(cands, [&](const Candidate& c) {
        return std::exp(static_cast<double>(c.value - m)) < p.min_p;
      });
    }
    DPSERVE_CHECK(!cands.empty(), "sampling kept no candidate");
    double total = 0.0;
    for (const Candidate& c : cands) total += weight(c);
    const double target = u * total;
    double cum = 0.0;
    result.token = cands.back().token;
    for (const Candidate& c : cands) {
      cum += weight(c);
      if (cum > target) {
        result.token = c.token;
        break;
      }
    }
  }

  if (want_logprobs) {
    if (z == 0.0) z = exp_sum(row, vocab, m, nullptr, nullptr);
    const float lse = m + static_cast<float>(std::log(z));
    result.logprob = row[result.token] - lse;
    if (p.top_logprobs_num > 0) {
      select_top(row, vocab, p.top_logprobs_num, s.select, s.cands);
      result.top_logprobs.reserve(s.cands.size());
      for (const Candidate& c : s.cands) result.top_logprobs.push_back({c.token, c.value - lse});
    }
  }
  state.append(result.token);
  return result;
}

std::vector<SampleResult> Sampler::sample(float* logits, int64_t batch, int64_t vocab,
                                          std::span<RequestSamplingState* const> states) {
  DPSERVE_CHECK(static_cast<int64_t>(states.size()) == batch, "one sampling state per row");
  DPSERVE_CHECK(vocab > 0, "vocab must be positive");
  std::vector<SampleResult> results(static_cast<size_t>(batch));
  auto run = [&](int64_t begin, int64_t end, int thread) {
    Scratch& s = scratch_[static_cast<size_t>(thread)];
    for (int64_t r = begin; r < end; ++r) {
      results[r] = sample_row(logits + r * vocab, vocab, *states[r], s);
    }
  };
  if (pool_ != nullptr && batch > 1) {
    pool_->parallel_for(batch, run);
  } else {
    run(0, batch, 0);
  }
  return results;
}

}  // namespace dpserve
