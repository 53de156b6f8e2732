// The TokenizerManager's side of failures (issue 8), between real ZeroMQ sockets and a fake
// controller: a DP group that goes down fails exactly its requests (known from the controller's
// dispatch notices, whichever arrives first), requests pinned to it get 503 + Retry-After, the
// controller is told; recovery rejects and fails everything; /health states.

#include <chrono>
#include <limits>
#include <optional>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dpserve/ipc/process.h"
#include "dpserve/ipc/zmq_socket.h"
#include "dpserve/managers/tokenizer_manager.h"
#include "dpserve/openai/api_error.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

// A TokenizerManager whose scheduler side is this test: `from_tm` gets what it sends, `to_tm`
// plays the controller and the leaders.
class Harness {
 public:
  Harness() : dir_("tm-test"), from_tm(zmq::socket_type::pull), to_tm(zmq::socket_type::push) {
    MessageSocket out(zmq::socket_type::push), in(zmq::socket_type::pull);
    out.bind(dir_.endpoint("scheduler_input"));
    in.bind(dir_.endpoint("scheduler_output"));
    from_tm.connect(dir_.endpoint("scheduler_input"));
    to_tm.connect(dir_.endpoint("scheduler_output"));
    SchedulerInfo info;
    info.context_length = 512;
    info.max_total_tokens = 4096;
    info.vocab_size = 512;
    info.max_running_requests = 16;
    std::shared_ptr<const Tokenizer> tok(load_tokenizer(DPSERVE_SHARED_DIR "/models/stories260K"));
    tm = std::make_unique<TokenizerManager>(tok, info, std::move(out), std::move(in));
  }

  // A one-prompt request of input ids, optionally pinned to a DP group.
  std::shared_ptr<GenerateHandle> generate(const std::string& rid, int32_t dp_rank = -1) {
    GenerateReqInput in;
    in.input_ids = {1, 403, 407};
    in.sampling_params.max_new_tokens = 8;
    in.rid = rid;
    in.data_parallel_rank = dp_rank;
    return tm->generate({std::move(in)});
  }
  // The next message the TokenizerManager sent (the controller's view).
  std::optional<Message> next_sent(milliseconds timeout = milliseconds(5000)) {
    return from_tm.recv(timeout);
  }

  RuntimeDir dir_;
  MessageSocket from_tm;
  MessageSocket to_tm;
  std::unique_ptr<TokenizerManager> tm;
};

// The error a handle's next() throws within `timeout`, if any.
std::optional<ApiError> error_of(GenerateHandle& h, milliseconds timeout = milliseconds(5000)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline && !h.done()) {
    try {
      h.next(milliseconds(50));
    } catch (const ApiError& e) {
      return e;
    }
  }
  return std::nullopt;
}

TokenIdOut finished_row(const std::string& rid) {
  TokenIdOut o;
  o.rid = rid;
  o.new_token_ids = {5};
  o.finished = true;
  o.finish_reason_json = R"({"type":"length","length":1})";
  o.completion_tokens = 1;
  return o;
}

TEST(TokenizerManagerFailures, DownGroupFailsExactlyItsRequests) {
  Harness h;
  auto on0 = h.generate("on-0", 0);  // pinned: its group is known at once
  auto on1 = h.generate("on-1");     // the controller's notice tells its group
  auto late = h.generate("late");    // dispatched to group 1, notice after the failure
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(h.next_sent().has_value());
  ASSERT_TRUE(
      h.to_tm.send(Message{DpDispatchNotice{{"on-0", "on-1"}, {0, 1}}}, milliseconds(1000)));
  std::this_thread::sleep_for(milliseconds(200));  // the receiver thread records the notice

  h.tm->set_dp_group_down(1, "rank 1 died", 3);
  std::optional<Message> st = h.next_sent();
  ASSERT_TRUE(st && std::holds_alternative<DpGroupState>(*st));
  EXPECT_EQ(std::get<DpGroupState>(*st).dp_rank, 1);
  EXPECT_FALSE(std::get<DpGroupState>(*st).up);
  const std::optional<ApiError> e1 = error_of(*on1);
  ASSERT_TRUE(e1.has_value());
  EXPECT_EQ(e1->status(), 503);
  EXPECT_EQ(e1->retry_after(), 3);
  EXPECT_THAT(e1->what(), HasSubstr("rank 1 died"));

  // A notice that arrives after the group went down fails its request on arrival.
  ASSERT_TRUE(h.to_tm.send(Message{DpDispatchNotice{{"late"}, {1}}}, milliseconds(1000)));
  const std::optional<ApiError> e2 = error_of(*late);
  ASSERT_TRUE(e2.has_value());
  EXPECT_EQ(e2->retry_after(), 3);

  // Group 0's request is untouched and finishes normally.
  ASSERT_TRUE(h.to_tm.send(Message{BatchTokenIdOut{{finished_row("on-0")}}}, milliseconds(1000)));
  EXPECT_FALSE(error_of(*on0).has_value());
  EXPECT_TRUE(on0->done());

  // Pinned to the down group: 503 + Retry-After at the door; the server as a whole is healthy.
  try {
    h.generate("pinned", 1);
    FAIL() << "accepted a request for a down group";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 503);
    EXPECT_EQ(e.retry_after(), 3);
    EXPECT_THAT(e.what(), HasSubstr("DP group 1 is restarting (rank 1 died)"));
  }
  EXPECT_TRUE(h.tm->health().ok);

  // The failed requests were forgotten: dropping their handles aborts nothing.
  on1.reset();
  late.reset();
  EXPECT_FALSE(h.next_sent(milliseconds(300)).has_value());

  h.tm->set_dp_group_up(1);
  st = h.next_sent();
  ASSERT_TRUE(st && std::holds_alternative<DpGroupState>(*st));
  EXPECT_TRUE(std::get<DpGroupState>(*st).up);
  auto again = h.generate("pinned-again", 1);
  std::optional<Message> sent = h.next_sent();
  ASSERT_TRUE(sent && std::holds_alternative<TokenizedGenerateReq>(*sent));
  EXPECT_EQ(std::get<TokenizedGenerateReq>(*sent).rid, "pinned-again");
}

TEST(TokenizerManagerFailures, RecoveryRejectsNewRequestsAndFailsTheLiveOnes) {
  Harness h;
  auto live = h.generate("live");
  ASSERT_TRUE(h.next_sent().has_value());
  h.tm->set_recovering("scheduler rank 1 died; restarting", 4);
  EXPECT_EQ(h.tm->fail_requests(-1, "scheduler rank 1 died; restarting", 4), 1);
  const std::optional<ApiError> e = error_of(*live);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->retry_after(), 4);

  const HealthStatus health = h.tm->health();
  EXPECT_FALSE(health.ok);
  EXPECT_EQ(health.state, "recovering");
  EXPECT_EQ(health.retry_after_s, 4);
  EXPECT_THAT(health.message, HasSubstr("the server is recovering: scheduler rank 1 died"));
  try {
    h.generate("new");
    FAIL() << "accepted a request while recovering";
  } catch (const ApiError& err) {
    EXPECT_EQ(err.status(), 503);
    EXPECT_EQ(err.retry_after(), 4);
  }
  live.reset();  // nothing is sent to the restarting scheduler
  EXPECT_FALSE(h.next_sent(milliseconds(300)).has_value());

  h.tm->set_recovering(std::nullopt);
  EXPECT_TRUE(h.tm->health().ok);
  auto back = h.generate("back");
  EXPECT_TRUE(h.next_sent().has_value());

  h.tm->stop_accepting();
  EXPECT_EQ(h.tm->health().state, "draining");
  EXPECT_THROW(h.generate("late"), ApiError);
}

// A max_new_tokens near INT64_MAX used to overflow prompt + max_new_tokens (UBSan) and wrap
// negative, so the request passed the context and KV checks (seen with fuzz/fuzz_request's
// boundary values in the OpenAI twin of this check, check_prompt_length).
TEST(TokenizerManagerValidation, HugeMaxNewTokensIsRefusedWithoutOverflow) {
  Harness h;
  GenerateReqInput in;
  in.input_ids = {1, 403, 407};
  in.sampling_params.max_new_tokens = std::numeric_limits<int64_t>::max() - 1;
  try {
    h.tm->generate({std::move(in)});
    FAIL() << "accepted max_new_tokens = INT64_MAX - 1";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_THAT(e.what(), HasSubstr("a total of 9223372036854775809 tokens"));
  }
  EXPECT_FALSE(h.next_sent(milliseconds(300)).has_value());
}

}  // namespace
}  // namespace dpserve
