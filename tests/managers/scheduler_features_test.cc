// Scheduler features on stories260K: abort of queued and running requests, seeded sampling
// across batch compositions, stop strings, n > 1 sharing the prompt, the watchdog, the event loop
// and request validation.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "scheduler_test_util.h"

namespace dpserve::sched_test {
namespace {

using ::testing::HasSubstr;

// Steps until idle and gathers the outputs per (rid, index).
struct Collected {
  std::map<std::pair<std::string, int64_t>, CompletedRequest> by_id;
  CompletedRequest& get(const std::string& rid, int64_t index = 0) { return by_id[{rid, index}]; }
  void add(std::vector<RequestOutput>&& outs) {
    for (RequestOutput& o : outs) {
      CompletedRequest& c = by_id[{o.rid, o.index}];
      c.rid = o.rid;
      c.index = o.index;
      c.output_ids.insert(c.output_ids.end(), o.new_token_ids.begin(), o.new_token_ids.end());
      c.text += o.new_text;
      c.completion_tokens = o.completion_tokens;
      if (o.finished) c.finish_reason = *o.finish_reason;
    }
  }
};

TEST(SchedulerFeatures, AbortQueuedAndRunningReturnsPages) {
  const std::vector<std::vector<int32_t>>& solo = solo_outputs();
  for (int64_t page : {1, 16}) {
    SCOPED_TRACE(page);
    SchedulerConfig c = test_config();
    c.page_size = page;
    c.max_running_requests = 3;
    auto s = make_scheduler(c);
    std::vector<GenerateRequest> reqs = make_requests(story_prompts(), greedy());
    for (int i = 0; i < 6; ++i) s->add_request(reqs[i]);
    Collected got;
    for (int i = 0; i < 4; ++i) got.add(s->step());  // r0..r2 run, r3..r5 wait
    EXPECT_EQ(s->num_running(), 3);
    EXPECT_TRUE(s->abort_request("r1", "client went away"));  // running
    EXPECT_TRUE(s->abort_request("r4"));                      // queued
    EXPECT_FALSE(s->abort_request("nope"));
    EXPECT_EQ(s->check_memory(), "");
    while (s->has_work()) got.add(s->step());
    for (int i : {0, 2, 3, 5}) EXPECT_EQ(got.get(reqs[i].rid).output_ids, solo[i]) << i;
    EXPECT_EQ(got.get("r1").finish_reason.type, FinishReason::Type::kAbort);
    EXPECT_EQ(got.get("r1").finish_reason.message, "client went away");
    EXPECT_LT(got.get("r1").output_ids.size(), solo[1].size());
    EXPECT_EQ(got.get("r4").finish_reason.type, FinishReason::Type::kAbort);
    EXPECT_TRUE(got.get("r4").output_ids.empty());
    EXPECT_EQ(s->stats().num_aborted, 2);
    expect_idle_and_empty(*s);
  }
}

TEST(SchedulerFeatures, SeededSamplingIsTheSameInAnyBatch) {
  SamplingParams p;
  p.temperature = 0.9;
  p.top_p = 0.95;
  p.max_new_tokens = 40;
  p.seed = 77;
  const std::vector<std::string> prompts = story_prompts();
  auto s = make_scheduler(test_config());
  const std::vector<int32_t> alone = s->generate(make_requests({prompts[0]}, p))[0].output_ids;
  // Alongside 15 others with their own seeds, in two different compositions and chunkings.
  for (int64_t chunk : {3, 0}) {
    SchedulerConfig c = test_config();
    c.chunked_prefill_size = chunk;
    auto t = make_scheduler(c);
    std::vector<GenerateRequest> reqs =
        make_requests(std::vector<std::string>(prompts.begin(), prompts.begin() + 16), p);
    for (size_t i = 1; i < reqs.size(); ++i) reqs[i].sampling_params.seed = 1000 + i + chunk;
    std::swap(reqs[0], reqs[chunk == 0 ? 9 : 4]);
    std::vector<CompletedRequest> done = t->generate(reqs);
    for (const CompletedRequest& d : done) {
      if (d.rid == "r0") {
        EXPECT_EQ(d.output_ids, alone) << "chunk " << chunk;
      }
    }
    expect_idle_and_empty(*t);
  }
  // A different seed gives a different story (almost surely at temperature 0.9).
  p.seed = 78;
  EXPECT_NE(s->generate(make_requests({prompts[0]}, p))[0].output_ids, alone);
}

TEST(SchedulerFeatures, StopStringEndsWithFinishReasonStop) {
  const nlohmann::json ref = stories_reference();
  const std::string prompt = ref["prompt_text"].get<std::string>();
  // Greedy continuation: ", there was a little girl named Lily. She loved to play outside ..."
  SamplingParams p = greedy(32);
  p.stop = {"named Li"};  // ends inside a token ("Lily")
  auto s = make_scheduler(test_config());
  std::vector<GenerateRequest> reqs = make_requests({prompt, story_prompts()[5]}, p);
  std::vector<CompletedRequest> done = s->generate(reqs);
  EXPECT_EQ(done[0].finish_reason.type, FinishReason::Type::kStop);
  EXPECT_EQ(std::get<std::string>(done[0].finish_reason.matched), "named Li");
  EXPECT_EQ(done[0].text, ", there was a little girl ");
  EXPECT_LT(done[0].completion_tokens, 32);
  // Across tokens: "girl named".
  p.stop = {"girl named"};
  done = s->generate(make_requests({prompt}, p));
  EXPECT_EQ(done[0].finish_reason.type, FinishReason::Type::kStop);
  EXPECT_EQ(done[0].text, ", there was a little ");
  // stop_token_ids: the id of " Lily" ends it too.
  const std::vector<int32_t> greedy_ids = ref["greedy"]["ids"].get<std::vector<int32_t>>();
  p.stop.clear();
  p.stop_token_ids = {greedy_ids[6]};
  done = s->generate(make_requests({prompt}, p));
  EXPECT_EQ(done[0].finish_reason.type, FinishReason::Type::kStop);
  EXPECT_EQ(done[0].completion_tokens, 7);
  expect_idle_and_empty(*s);
}

TEST(SchedulerFeatures, NGreaterThanOnePrefillsThePromptOnce) {
  const std::string prompt = story_prompts()[7];  // about 35 tokens
  const auto prompt_len = static_cast<int64_t>(encode(prompt).size());
  for (int64_t page : {1, 16}) {
    for (bool radix : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "page " << page << " radix " << radix);
      SchedulerConfig c = test_config();
      c.page_size = page;
      c.disable_radix_cache = !radix;
      auto s = make_scheduler(c);
      SamplingParams p;
      p.temperature = 1.0;
      p.max_new_tokens = 24;
      p.seed = 5;
      p.n = 3;
      std::vector<CompletedRequest> done = s->generate(make_requests({prompt}, p));
      ASSERT_EQ(done.size(), 3u);
      EXPECT_EQ(s->stats().num_prefill_tokens, prompt_len);  // once, not three times
      for (int64_t i = 0; i < 3; ++i) {
        EXPECT_EQ(done[i].index, i);
        EXPECT_EQ(done[i].prompt_tokens, prompt_len);
        EXPECT_FALSE(done[i].output_ids.empty());
      }
      EXPECT_EQ(done[1].cached_tokens, prompt_len);
      EXPECT_NE(done[0].output_ids, done[1].output_ids);
      EXPECT_NE(done[1].output_ids, done[2].output_ids);
      // Completion 0 is the n = 1 request with the same seed; each completion is reproducible.
      p.n = 1;
      auto t = make_scheduler(c);
      EXPECT_EQ(t->generate(make_requests({prompt}, p))[0].output_ids, done[0].output_ids);
      p.n = 3;
      EXPECT_EQ(output_ids(t->generate(make_requests({prompt}, p))), output_ids(done));
      expect_idle_and_empty(*s);
      expect_idle_and_empty(*t);
    }
  }
  // Greedy n = 3 gives three copies of the greedy output.
  auto s = make_scheduler(test_config());
  SamplingParams g = greedy();
  g.n = 3;
  std::vector<CompletedRequest> done = s->generate(make_requests({story_prompts()[7]}, g));
  EXPECT_EQ(done[0].output_ids, solo_outputs()[7]);
  EXPECT_EQ(done[1].output_ids, solo_outputs()[7]);
  EXPECT_EQ(done[2].output_ids, solo_outputs()[7]);
}

TEST(SchedulerFeatures, WatchdogReportsASlowStep) {
  SchedulerConfig c = test_config();
  c.watchdog_timeout = 0.2;
  auto s = make_scheduler(c);
  std::mutex mu;
  std::vector<std::pair<int64_t, double>> reports;
  s->set_watchdog_callback([&](int64_t step, double seconds) {
    std::lock_guard<std::mutex> lock(mu);
    reports.emplace_back(step, seconds);
  });
  s->set_step_hook([](int64_t step) {
    if (step == 3) std::this_thread::sleep_for(std::chrono::milliseconds(600));
  });
  std::vector<CompletedRequest> done = s->generate(make_requests({"Once upon a time"}, greedy(8)));
  EXPECT_EQ(done[0].output_ids,
            solo_outputs()[0].size() >= 8
                ? std::vector<int32_t>(solo_outputs()[0].begin(), solo_outputs()[0].begin() + 8)
                : solo_outputs()[0]);
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(reports.size(), 1u);  // only the slow step, and only once
  EXPECT_EQ(reports[0].first, 3);
  EXPECT_GT(reports[0].second, 0.2);
  EXPECT_EQ(s->stats().num_watchdog_reports, 1);
}

TEST(SchedulerFeatures, EventLoopServesSubmittedRequests) {
  const std::vector<std::vector<int32_t>>& solo = solo_outputs();
  auto s = make_scheduler(test_config());
  std::mutex mu;
  std::condition_variable cv;
  Collected got;
  int finished = 0;
  s->set_output_callback([&](std::vector<RequestOutput>&& outs) {
    std::lock_guard<std::mutex> lock(mu);
    for (const RequestOutput& o : outs) finished += o.finished ? 1 : 0;
    got.add(std::move(outs));
    cv.notify_all();
  });
  s->start_event_loop();
  std::vector<GenerateRequest> reqs = make_requests(story_prompts(), greedy());
  for (int i = 0; i < 8; ++i) s->submit(reqs[i]);
  GenerateRequest bad = reqs[8];
  bad.rid = "bad";
  bad.sampling_params.top_p = 0;
  s->submit(bad);
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return finished == 9; }));
  }
  s->stop_event_loop();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(got.get(reqs[i].rid).output_ids, solo[i]);
  EXPECT_EQ(got.get("bad").finish_reason.type, FinishReason::Type::kAbort);
  EXPECT_THAT(got.get("bad").finish_reason.message, HasSubstr("top_p"));
  expect_idle_and_empty(*s);
}

TEST(SchedulerFeatures, BadRequestsAreClearErrors) {
  SchedulerConfig c = test_config();
  c.max_total_tokens = 64;
  auto s = make_scheduler(c);
  GenerateRequest r = make_requests({"Once upon a time"}, greedy())[0];
  r.sampling_params.temperature = -1;
  try {
    s->add_request(r);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("temperature"));
  }
  r.sampling_params = greedy(100);  // 5 + 100 tokens > the 64-token pool
  try {
    s->add_request(r);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("--max-total-tokens"));
  }
  r.sampling_params = greedy(8);
  r.input_ids.assign(600, 300);
  EXPECT_THROW(s->add_request(r), Error);
  r.input_ids = {1, 9999};
  EXPECT_THROW(s->add_request(r), Error);
  r.input_ids = {1, 403};
  s->add_request(r);
  EXPECT_THROW(s->add_request(r), Error);  // duplicate rid while live
  while (s->has_work()) s->step();
  SchedulerConfig bad = test_config();
  bad.page_size = 0;
  EXPECT_THROW(make_scheduler(bad), Error);
  bad = test_config();
  bad.schedule_policy = "lifo";
  EXPECT_THROW(make_scheduler(bad), Error);
}

TEST(SchedulerFeatures, LogprobsComeWithTheTokens) {
  auto s = make_scheduler(test_config());
  SamplingParams p = greedy(6);
  p.return_logprob = true;
  p.top_logprobs_num = 3;
  std::vector<CompletedRequest> done = s->generate(make_requests({"Once upon a time"}, p));
  ASSERT_EQ(done[0].output_logprobs.size(), 6u);
  ASSERT_EQ(done[0].output_top_logprobs.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_LE(done[0].output_logprobs[i], 0.0f);
    ASSERT_EQ(done[0].output_top_logprobs[i].size(), 3u);
    EXPECT_EQ(done[0].output_top_logprobs[i][0].token, done[0].output_ids[i]);  // greedy
  }
}

}  // namespace
}  // namespace dpserve::sched_test
