#pragma once
// Shared helpers of the scheduler tests: the stories260K model loaded once, a set of varied
// prompts, and a runner that checks the memory accounting after every batch.

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/managers/scheduler.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve::sched_test {

inline const std::string kStoriesDir = DPSERVE_SHARED_DIR "/models/stories260K";

// The model and tokenizer, loaded once per test binary (tests run sequentially).
struct Stories {
  std::shared_ptr<LlamaForCausalLM> model;  // stories260K
  std::shared_ptr<const Tokenizer> tokenizer;
};

inline Stories& stories() {
  static Stories s = [] {
    spdlog::set_level(spdlog::level::warn);
    Stories st;
    SchedulerConfig c;
    st.model = make_model(kStoriesDir, c);
    st.tokenizer = std::shared_ptr<const Tokenizer>(load_tokenizer(kStoriesDir));
    return st;
  }();
  return s;
}

inline nlohmann::json stories_reference() {
  std::ifstream in(kStoriesDir + "/reference_outputs.json");
  return nlohmann::json::parse(in);
}

// A scheduler config for tests: one thread, a small pool unless a test asks otherwise.
inline SchedulerConfig test_config() {
  SchedulerConfig c;
  c.num_threads = 1;
  c.max_total_tokens = 8192;
  c.watchdog_timeout = 0;
  c.random_seed = 1234;
  return c;
}

inline std::unique_ptr<Scheduler> make_scheduler(const SchedulerConfig& c) {
  return std::make_unique<Scheduler>(c, stories().model, stories().tokenizer);
}

// 32 different story openings: various lengths, several sharing long prefixes.
inline std::vector<std::string> story_prompts() {
  std::vector<std::string> p = {
      "Once upon a time",
      "One day",
      "Tom and his dog went to the park.",
      "Lily wanted to play with her ball, but it was raining outside.",
      "The sun was shining",
      "A big bear lived in the forest. He was hungry and",
      "Mom said",
      "There was a little boy named Ben. Ben liked to run. One day he saw a big red car in the "
      "street and he wanted to drive it.",
      "Sue had a pretty doll",
      "The cat sat on the mat and looked at the bird",
      "Once",
      "Max was sad because",
      "In a small house near the sea lived an old man and his cat.",
      "The children played in the garden all day long. When the sun went down, they",
      "Bob found a shiny rock",
      "It was a cold winter day.",
  };
  const std::string shared = "Once upon a time, there was a little girl named Lily. She loved to ";
  const std::vector<std::string> tails = {
      "play",       "sing songs with her mom.",
      "eat apples", "draw pictures of the sun",
      "run",        "read books about dragons and princesses in the big library.",
      "swim",       "help her dad in the garden",
  };
  for (const std::string& t : tails) p.push_back(shared + t);
  const std::string shared2 = "One day, a boy named Tim went to the store with his mom. ";
  const std::vector<std::string> tails2 = {"He",           "They saw",  "Tim wanted a toy",
                                           "It was big",   "The store", "Mom said no",
                                           "He was happy", "They"};
  for (const std::string& t : tails2) p.push_back(shared2 + t);
  return p;
}

inline std::vector<int32_t> encode(const std::string& text) {
  return stories().tokenizer->encode(text, /*add_special_tokens=*/true);
}

inline SamplingParams greedy(int64_t max_new_tokens = 32) {
  SamplingParams s;
  s.temperature = 0.0;
  s.max_new_tokens = max_new_tokens;
  return s;
}

inline std::vector<GenerateRequest> make_requests(const std::vector<std::string>& prompts,
                                                  const SamplingParams& params) {
  std::vector<GenerateRequest> reqs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateRequest r;
    r.rid = "r" + std::to_string(i);
    r.input_ids = encode(prompts[i]);
    r.sampling_params = params;
    reqs.push_back(std::move(r));
  }
  return reqs;
}

// Checks that every page came back: the accounting balances, and after flushing the radix cache
// the allocator holds nothing.
inline void expect_idle_and_empty(Scheduler& s) {
  EXPECT_FALSE(s.has_work());
  EXPECT_EQ(s.check_memory(), "");
  EXPECT_TRUE(s.flush_cache());
  EXPECT_TRUE(s.allocator().check_idle()) << s.allocator().leak_report();
  EXPECT_EQ(s.allocator().used_slots(), 0);
}

inline std::vector<std::vector<int32_t>> output_ids(const std::vector<CompletedRequest>& done) {
  std::vector<std::vector<int32_t>> ids;
  for (const CompletedRequest& c : done) ids.push_back(c.output_ids);
  return ids;
}

// Greedy outputs of each prompt run alone (computed once).
inline const std::vector<std::vector<int32_t>>& solo_outputs() {
  static const std::vector<std::vector<int32_t>> out = [] {
    std::vector<std::vector<int32_t>> ids;
    auto s = make_scheduler(test_config());
    for (const GenerateRequest& r : make_requests(story_prompts(), greedy())) {
      std::vector<CompletedRequest> done = s->generate({r});
      ids.push_back(done.at(0).output_ids);
    }
    return ids;
  }();
  return out;
}

}  // namespace dpserve::sched_test
