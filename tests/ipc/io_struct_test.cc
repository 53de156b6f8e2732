// ipc messages: every type round-trips through encode/decode; malformed bytes (random garbage,
// truncations, wrong envelopes, wrong field types, trailing data) give dpserve::Error, never a
// crash.

#include <cstdint>
#include <limits>
#include <random>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dpserve/common/errors.h"
#include "dpserve/ipc/io_struct.h"

namespace dpserve {
namespace {

using ::testing::HasSubstr;

TokenizedGenerateReq sample_req() {
  TokenizedGenerateReq r;
  r.rid = "req-1";
  r.input_text = "Once upon a time \xe2\x9c\x93";
  r.input_ids = {1, 2, 3, std::numeric_limits<int32_t>::max(), 0};
  r.sampling_params_json = R"({"temperature":0.7,"max_new_tokens":16,"stop":["\n"]})";
  r.stream = true;
  r.return_logprob = true;
  r.top_logprobs_num = 5;
  r.logprob_start_len = -1;
  return r;
}

BatchTokenIdOut sample_out() {
  BatchTokenIdOut b;
  TokenIdOut a;
  a.rid = "req-1";
  a.index = 1;
  a.new_token_ids = {42};
  a.new_text = " there";
  a.prompt_tokens = 5;
  a.completion_tokens = 3;
  a.cached_tokens = 2;
  a.output_logprobs = {-0.25f};
  a.output_top_logprobs = {{{42, -0.25f}, {7, -1.5f}}};
  TokenIdOut done;
  done.rid = "req-2";
  done.new_token_ids = {2, 3};
  done.finished = true;
  done.finish_reason_json = R"({"type":"stop","matched":2})";
  done.prompt_tokens = 100;
  done.completion_tokens = 64;
  b.outputs = {a, done};
  return b;
}

template <typename T>
T round_trip(const T& msg) {
  const std::string bytes = encode(Message{msg});
  Message back = decode(bytes);
  EXPECT_TRUE(std::holds_alternative<T>(back)) << message_name(back);
  return std::get<T>(back);
}

TEST(IoStruct, TokenizedGenerateReqRoundTrips) {
  const TokenizedGenerateReq r = sample_req();
  const TokenizedGenerateReq b = round_trip(r);
  EXPECT_EQ(b.rid, r.rid);
  EXPECT_EQ(b.input_text, r.input_text);
  EXPECT_EQ(b.input_ids, r.input_ids);
  EXPECT_EQ(b.sampling_params_json, r.sampling_params_json);
  EXPECT_EQ(b.stream, r.stream);
  EXPECT_EQ(b.return_logprob, r.return_logprob);
  EXPECT_EQ(b.top_logprobs_num, r.top_logprobs_num);
  EXPECT_EQ(b.logprob_start_len, r.logprob_start_len);
  EXPECT_EQ(message_name(Message{r}), "TokenizedGenerateReq");
}

TEST(IoStruct, BatchTokenIdOutRoundTrips) {
  const BatchTokenIdOut o = sample_out();
  const BatchTokenIdOut b = round_trip(o);
  ASSERT_EQ(b.outputs.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const TokenIdOut& x = o.outputs[i];
    const TokenIdOut& y = b.outputs[i];
    EXPECT_EQ(y.rid, x.rid);
    EXPECT_EQ(y.index, x.index);
    EXPECT_EQ(y.new_token_ids, x.new_token_ids);
    EXPECT_EQ(y.new_text, x.new_text);
    EXPECT_EQ(y.finished, x.finished);
    EXPECT_EQ(y.finish_reason_json, x.finish_reason_json);
    EXPECT_EQ(y.prompt_tokens, x.prompt_tokens);
    EXPECT_EQ(y.completion_tokens, x.completion_tokens);
    EXPECT_EQ(y.cached_tokens, x.cached_tokens);
    EXPECT_EQ(y.output_logprobs, x.output_logprobs);
    ASSERT_EQ(y.output_top_logprobs.size(), x.output_top_logprobs.size());
    for (size_t j = 0; j < x.output_top_logprobs.size(); ++j) {
      ASSERT_EQ(y.output_top_logprobs[j].size(), x.output_top_logprobs[j].size());
      for (size_t k = 0; k < x.output_top_logprobs[j].size(); ++k) {
        EXPECT_EQ(y.output_top_logprobs[j][k].token, x.output_top_logprobs[j][k].token);
        EXPECT_EQ(y.output_top_logprobs[j][k].logprob, x.output_top_logprobs[j][k].logprob);
      }
    }
  }
  EXPECT_TRUE(round_trip(BatchTokenIdOut{}).outputs.empty());
}

TEST(IoStruct, ControlMessagesRoundTrip) {
  const AbortReq a = round_trip(AbortReq{"req-9", false});
  EXPECT_EQ(a.rid, "req-9");
  EXPECT_FALSE(a.abort_all);
  EXPECT_TRUE(round_trip(AbortReq{"", true}).abort_all);
  round_trip(FlushCacheReq{});
  const FlushCacheResp f = round_trip(FlushCacheResp{false, "requests are running"});
  EXPECT_FALSE(f.success);
  EXPECT_EQ(f.message, "requests are running");
  EXPECT_TRUE(round_trip(FlushCacheResp{true, ""}).success);
  round_trip(GetServerInfoReq{});
  EXPECT_EQ(round_trip(GetServerInfoResp{R"({"max_total_tokens":1000})"}).info_json,
            R"({"max_total_tokens":1000})");
}

TEST(IoStruct, EveryTypeHasItsOwnTagAndName) {
  const Message all[] = {sample_req(),     AbortReq{},         sample_out(),        FlushCacheReq{},
                         FlushCacheResp{}, GetServerInfoReq{}, GetServerInfoResp{}, LoadReport{},
                         DpGroupState{},   DpDispatchNotice{}};
  ASSERT_EQ(std::size(all), std::variant_size_v<Message>);
  for (const Message& m : all) {
    const Message back = decode(encode(m));
    EXPECT_EQ(back.index(), m.index());
    EXPECT_EQ(message_name(back), message_name(m));
  }
}

TEST(IoStruct, DataParallelRankRoundTrips) {
  TokenizedGenerateReq r = sample_req();
  EXPECT_EQ(r.data_parallel_rank, -1);  // the controller decides by default
  EXPECT_EQ(round_trip(r).data_parallel_rank, -1);
  r.data_parallel_rank = 3;
  EXPECT_EQ(round_trip(r).data_parallel_rank, 3);
}

TEST(IoStruct, LoadReportRoundTrips) {
  LoadReport l;
  l.dp_rank = 2;
  l.num_running_reqs = 17;
  l.num_waiting_reqs = 4;
  l.num_used_tokens = int64_t{1} << 40;
  l.num_queued_tokens = 12345;
  l.max_total_tokens = 65536;
  l.timestamp = 1754400000.123456;
  const LoadReport b = round_trip(l);
  EXPECT_EQ(b.dp_rank, 2);
  EXPECT_EQ(b.num_running_reqs, 17);
  EXPECT_EQ(b.num_waiting_reqs, 4);
  EXPECT_EQ(b.num_used_tokens, int64_t{1} << 40);
  EXPECT_EQ(b.num_queued_tokens, 12345);
  EXPECT_EQ(b.max_total_tokens, 65536);
  EXPECT_EQ(b.timestamp, 1754400000.123456);  // a double, not squeezed into a float
  EXPECT_EQ(message_name(Message{l}), "LoadReport");
  EXPECT_EQ(Message{l}.index(), 7u);  // appended: the older tags keep their numbers
}

TEST(IoStruct, DpGroupStateAndDispatchNoticesRoundTrip) {
  const DpGroupState down = round_trip(DpGroupState{3, false, "rank 6 died"});
  EXPECT_EQ(down.dp_rank, 3);
  EXPECT_FALSE(down.up);
  EXPECT_EQ(down.reason, "rank 6 died");
  EXPECT_TRUE(round_trip(DpGroupState{1, true, ""}).up);
  const DpDispatchNotice n = round_trip(DpDispatchNotice{{"a", "b", "c"}, {0, 1, 0}});
  EXPECT_EQ(n.rids, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(n.dp_ranks, (std::vector<int32_t>{0, 1, 0}));
  EXPECT_EQ(Message{DpGroupState{}}.index(), 8u);  // appended after LoadReport
  EXPECT_EQ(message_name(Message{DpDispatchNotice{}}), "DpDispatchNotice");
}

TEST(IoStruct, ControlResponsesCarryTheirDpRank) {
  FlushCacheResp f{true, "", 1};
  EXPECT_EQ(round_trip(f).dp_rank, 1);
  EXPECT_EQ(round_trip(FlushCacheResp{}).dp_rank, -1);
  GetServerInfoResp g{R"({"a":1})", 3};
  EXPECT_EQ(round_trip(g).dp_rank, 3);
  EXPECT_EQ(round_trip(GetServerInfoResp{"{}"}).dp_rank, -1);
}

std::string decode_error(std::string_view bytes) {
  try {
    decode(bytes);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(IoStruct, MalformedEnvelopesAreErrors) {
  EXPECT_THAT(decode_error(""), HasSubstr("ipc: malformed message (0 bytes)"));
  EXPECT_THAT(decode_error("hello"), HasSubstr("ipc: malformed message"));
  EXPECT_THAT(decode_error("\x01"), HasSubstr("not an envelope"));  // the integer 1
  // [2, 0, []]: wrong version.
  EXPECT_THAT(decode_error(std::string("\x93\x02\x00\x90", 4)), HasSubstr("wire version"));
  // [1, 99, []]: unknown tag.
  EXPECT_THAT(decode_error(std::string("\x93\x01\x63\x90", 4)),
              HasSubstr("unknown message tag 99"));
  // [1, 1, ["rid", "not a bool"]]: AbortReq with a wrong field type names the field.
  EXPECT_THAT(decode_error(std::string("\x93\x01\x01\x92\xa3rid\xa1x", 10)),
              HasSubstr("AbortReq.abort_all: expected a boolean"));
  // [1, 1, ["rid"]]: wrong field count.
  EXPECT_THAT(decode_error(std::string("\x93\x01\x01\x91\xa3rid", 8)),
              HasSubstr("AbortReq: expected an array of 2 fields"));
  // An array claiming 2^32-1 elements in 5 bytes must not allocate them.
  EXPECT_THAT(decode_error(std::string("\xdd\xff\xff\xff\xff", 5)), HasSubstr("malformed"));
  // A string claiming 4 GiB.
  EXPECT_THAT(decode_error(std::string("\xdb\xff\xff\xff\xff", 5)), HasSubstr("malformed"));
  // Deep nesting.
  EXPECT_THAT(decode_error(std::string(1000, '\x91')), HasSubstr("malformed"));
}

TEST(IoStruct, OutOfRangeIntegersAreErrors) {
  TokenizedGenerateReq r = sample_req();
  std::string bytes = encode(Message{r});
  // Find the encoded int32 max (0xce 7f ff ff ff) and make it 0xffffffff: out of int32 range.
  const std::string needle("\xce\x7f\xff\xff\xff", 5);
  const size_t pos = bytes.find(needle);
  ASSERT_NE(pos, std::string::npos);
  bytes[pos + 1] = '\xff';
  EXPECT_THAT(decode_error(bytes),
              HasSubstr("TokenizedGenerateReq.input_ids[3]: expected an integer in range"));
}

TEST(IoStruct, MalformedLoadReportsAreErrors) {
  // [1, 7, [0, 1, 2, 3, 4, 5, "now"]]: a string where the timestamp's double belongs.
  EXPECT_THAT(decode_error(std::string("\x93\x01\x07\x97\x00\x01\x02\x03\x04\x05\xa3now", 14)),
              HasSubstr("LoadReport.timestamp: expected a number"));
  // [1, 7, [0]]: too few fields.
  EXPECT_THAT(decode_error(std::string("\x93\x01\x07\x91\x00", 5)),
              HasSubstr("LoadReport: expected an array of 7 fields"));
  // A truncated report.
  LoadReport l;
  l.timestamp = 1.5;
  const std::string bytes = encode(Message{l});
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_THAT(decode_error(std::string_view(bytes).substr(0, n)), HasSubstr("malformed"));
  }
}

TEST(IoStruct, TruncationsAndTrailingBytesAreErrors) {
  const std::string bytes = encode(Message{sample_out()});
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_THAT(decode_error(std::string_view(bytes).substr(0, n)), HasSubstr("malformed"))
        << "prefix of " << n << " bytes";
  }
  EXPECT_THAT(decode_error(bytes + "x"), HasSubstr("1 trailing bytes"));
  EXPECT_EQ(decode_error(bytes), "");
}

TEST(IoStruct, RandomGarbageNeverCrashes) {
  std::mt19937 rng(1234);
  const std::string valid = encode(Message{sample_req()});
  int errors = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string bytes;
    if (iter % 2 == 0) {  // random bytes
      bytes.resize(rng() % 64);
      for (char& c : bytes) c = static_cast<char>(rng());
    } else {  // a valid message with a few bytes flipped
      bytes = valid;
      for (int k = 0; k < 3; ++k) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    }
    try {
      decode(bytes);
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("ipc: malformed message"));
      ++errors;
    }
  }
  EXPECT_GT(errors, 10000);
}

}  // namespace
}  // namespace dpserve
