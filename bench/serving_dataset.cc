#include "serving_dataset.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dpserve/common/errors.h"

namespace dpserve::bench {

namespace {

// Common words (TinyStories-like), so that every tokenizer encodes them in a few tokens.
constexpr const char* kWords[] = {
    "the",      "a",       "and",     "to",      "was",     "he",     "she",     "it",
    "of",       "in",      "they",    "said",    "day",     "one",    "big",     "little",
    "happy",    "sad",     "dog",     "cat",     "bird",    "tree",   "house",   "girl",
    "boy",      "mom",     "dad",     "friend",  "play",    "played", "went",    "saw",
    "wanted",   "liked",   "loved",   "found",   "ball",    "park",   "sun",     "sky",
    "water",    "fish",    "boat",    "car",     "red",     "blue",   "green",   "small",
    "tall",     "fast",    "slow",    "good",    "very",    "with",   "her",     "his",
    "them",     "there",   "time",    "upon",    "once",    "named",  "lily",    "tim",
    "ben",      "sue",     "toy",     "box",     "door",    "room",   "bed",     "book",
    "cake",     "apple",   "milk",    "garden",  "flower",  "rain",   "snow",    "wind",
    "hill",     "river",   "sea",     "sand",    "shell",   "star",   "moon",    "night",
    "morning",  "school",  "teacher", "class",   "game",    "run",    "jump",    "walk",
    "look",     "help",    "share",   "smile",   "laugh",   "cry",    "hug",     "kind",
    "nice",     "funny",   "brave",   "scared",  "quiet",   "loud",   "warm",    "cold",
    "new",      "old",     "bright",  "dark",    "soft",    "hard",   "up",      "down",
    "out",      "into",    "over",    "under",   "after",   "before", "then",    "but",
    "so",       "because", "when",    "where",   "what",    "who",    "how",     "why",
    "yes",      "no",      "not",     "all",     "some",    "many",   "more",    "every",
    "together", "again",   "away",    "home",    "back",    "near",   "far",     "inside",
    "outside",  "thought", "knew",    "asked",   "told",    "made",   "came",    "gave",
    "took",     "ate",     "drank",   "slept",   "woke",    "sang",   "danced",  "painted",
    "built",    "opened",  "closed",  "picked",  "carried", "shared", "learned", "tried",
    "began",    "stopped", "waited",  "watched",
};
constexpr size_t kNumWords = sizeof(kWords) / sizeof(kWords[0]);

std::vector<int32_t> random_ids(std::mt19937_64& rng, int64_t vocab_size, int64_t n) {
  // Id 0 is often a special token (unk / pad); every other id is a valid prompt token.
  std::uniform_int_distribution<int32_t> d(1, static_cast<int32_t>(vocab_size - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = d(rng);
  return ids;
}

int64_t words_for(const DatasetOptions& o, int64_t tokens) {
  return std::max<int64_t>(1, std::llround(static_cast<double>(tokens) / o.tokens_per_word));
}

// A prompt of `len` tokens: ids, or the number of words that encode to about `len` tokens.
BenchRequest make_prompt(const DatasetOptions& o, std::mt19937_64& rng, int64_t len) {
  BenchRequest r;
  r.prompt_len = len;
  if (o.text_prompts) {
    r.text = random_words(rng, words_for(o, len));
  } else {
    r.input_ids = random_ids(rng, o.vocab_size, len);
  }
  return r;
}

// SGLang: lengths uniform in [max(int(L * ratio), 1), L].
int64_t random_len(std::mt19937_64& rng, int64_t len, double ratio) {
  const int64_t lo = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(len) * ratio));
  std::uniform_int_distribution<int64_t> d(std::min(lo, len), len);
  return d(rng);
}

void check_positive(int64_t v, const char* flag) {
  if (v < 1) throw_error("{} must be >= 1, got {}", flag, v);
}

}  // namespace

std::string random_words(std::mt19937_64& rng, int64_t n) {
  std::uniform_int_distribution<size_t> d(0, kNumWords - 1);
  std::string out;
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0) out += ' ';
    out += kWords[d(rng)];
  }
  return out;
}

std::vector<BenchRequest> make_dataset(const DatasetOptions& o) {
  if (!o.text_prompts && o.vocab_size < 2) {
    throw_error("token-id prompts need a vocabulary size >= 2 (got {}); pass --vocab-size",
                o.vocab_size);
  }
  if (o.text_prompts && !(o.tokens_per_word > 0)) {
    throw_error("tokens per word must be > 0, got {}", o.tokens_per_word);
  }
  std::mt19937_64 rng(o.seed);
  std::vector<BenchRequest> reqs;
  if (o.name == "random") {
    check_positive(o.num_prompts, "--num-prompts");
    check_positive(o.random_input_len, "--random-input-len");
    check_positive(o.random_output_len, "--random-output-len");
    if (o.random_range_ratio < 0 || o.random_range_ratio > 1) {
      throw_error("--random-range-ratio must be in [0, 1], got {}", o.random_range_ratio);
    }
    std::vector<int64_t> in_lens, out_lens;
    for (int64_t i = 0; i < o.num_prompts; ++i)
      in_lens.push_back(random_len(rng, o.random_input_len, o.random_range_ratio));
    for (int64_t i = 0; i < o.num_prompts; ++i)
      out_lens.push_back(random_len(rng, o.random_output_len, o.random_range_ratio));
    for (int64_t i = 0; i < o.num_prompts; ++i) {
      BenchRequest r = make_prompt(o, rng, in_lens[static_cast<size_t>(i)]);
      r.output_len = out_lens[static_cast<size_t>(i)];
      reqs.push_back(std::move(r));
    }
    return reqs;
  }
  if (o.name == "generated-shared-prefix") {
    check_positive(o.gsp_num_groups, "--gsp-num-groups");
    check_positive(o.gsp_prompts_per_group, "--gsp-prompts-per-group");
    check_positive(o.gsp_system_prompt_len, "--gsp-system-prompt-len");
    check_positive(o.gsp_question_len, "--gsp-question-len");
    check_positive(o.gsp_output_len, "--gsp-output-len");
    for (int64_t g = 0; g < o.gsp_num_groups; ++g) {
      const BenchRequest system = make_prompt(o, rng, o.gsp_system_prompt_len);
      for (int64_t q = 0; q < o.gsp_prompts_per_group; ++q) {
        const BenchRequest question = make_prompt(o, rng, o.gsp_question_len);
        BenchRequest r;
        r.group = static_cast<int>(g);
        r.output_len = o.gsp_output_len;
        r.prompt_len = system.prompt_len + question.prompt_len;
        if (o.text_prompts) {
          r.text = system.text + "\n\n" + question.text;
        } else {
          r.input_ids = system.input_ids;
          r.input_ids.insert(r.input_ids.end(), question.input_ids.begin(),
                             question.input_ids.end());
        }
        reqs.push_back(std::move(r));
      }
    }
    std::shuffle(reqs.begin(), reqs.end(), rng);
    return reqs;
  }
  throw_error("--dataset-name must be random or generated-shared-prefix, got \"{}\"", o.name);
}

std::vector<double> arrival_times(int64_t n, double request_rate, uint64_t seed) {
  std::vector<double> t(static_cast<size_t>(std::max<int64_t>(n, 0)), 0.0);
  if (!std::isfinite(request_rate)) return t;
  if (!(request_rate > 0)) throw_error("--request-rate must be > 0 (or inf), got {}", request_rate);
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(request_rate);
  for (size_t i = 1; i < t.size(); ++i) t[i] = t[i - 1] + gap(rng);
  return t;
}

}  // namespace dpserve::bench
