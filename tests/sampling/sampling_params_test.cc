// SamplingParams: SGLang's defaults, every range check names its parameter and range, JSON
// parsing (types, null, stop as string or list, unknown keys).

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dpserve/common/errors.h"
#include "dpserve/sampling/sampling_params.h"

namespace dpserve {
namespace {

using json = nlohmann::json;
using testing::HasSubstr;

// The message of the dpserve::Error that fn throws ("" if none).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string validate_error(const json& j, int64_t vocab = 0) {
  return error_of([&] { SamplingParams::from_json(j).validate(vocab); });
}

TEST(SamplingParams, DefaultsFollowSglang) {
  const SamplingParams p = SamplingParams::from_json(json::object());
  EXPECT_EQ(p.max_new_tokens, 128);
  EXPECT_EQ(p.min_new_tokens, 0);
  EXPECT_EQ(p.temperature, 1.0);
  EXPECT_EQ(p.top_p, 1.0);
  EXPECT_EQ(p.top_k, -1);
  EXPECT_EQ(p.min_p, 0.0);
  EXPECT_EQ(p.frequency_penalty, 0.0);
  EXPECT_EQ(p.presence_penalty, 0.0);
  EXPECT_EQ(p.repetition_penalty, 1.0);
  EXPECT_TRUE(p.stop.empty());
  EXPECT_TRUE(p.stop_token_ids.empty());
  EXPECT_FALSE(p.ignore_eos);
  EXPECT_TRUE(p.skip_special_tokens);
  EXPECT_FALSE(p.no_stop_trim);
  EXPECT_EQ(p.n, 1);
  EXPECT_FALSE(p.seed.has_value());
  EXPECT_FALSE(p.return_logprob);
  EXPECT_EQ(p.top_logprobs_num, 0);
  EXPECT_FALSE(p.is_greedy());
  p.validate(32000);
}

TEST(SamplingParams, GreedyMeansTemperatureBelowEpsOrTopK1) {
  EXPECT_TRUE(SamplingParams::from_json({{"temperature", 0}}).is_greedy());
  EXPECT_TRUE(SamplingParams::from_json({{"temperature", 1e-7}}).is_greedy());
  EXPECT_EQ(SamplingParams::from_json({{"temperature", 0}}).effective_temperature(), 1.0);
  EXPECT_TRUE(SamplingParams::from_json({{"top_k", 1}}).is_greedy());
  EXPECT_FALSE(SamplingParams::from_json({{"temperature", 0.01}}).is_greedy());
  // SGLang's TOP_K_ALL (1 << 30) reads as -1.
  EXPECT_EQ(SamplingParams::from_json({{"top_k", 1 << 30}}).top_k, -1);
}

struct RangeCase {
  json params;
  std::string expected;  // substring of the error message
};

TEST(SamplingParams, EachRangeErrorNamesParameterAndRange) {
  const RangeCase cases[] = {
      {{{"temperature", -0.5}}, "temperature must be a non-negative finite number, got -0.5"},
      {{{"top_p", 1.5}}, "top_p must be in (0, 1], got 1.5"},
      {{{"top_p", 0.0}}, "top_p must be in (0, 1], got 0"},
      {{{"top_k", 0}}, "top_k must be -1 (whole vocabulary) or at least 1, got 0"},
      {{{"top_k", -2}}, "top_k must be -1 (whole vocabulary) or at least 1, got -2"},
      {{{"min_p", -0.1}}, "min_p must be in [0, 1], got -0.1"},
      {{{"min_p", 1.1}}, "min_p must be in [0, 1], got 1.1"},
      {{{"frequency_penalty", 2.5}}, "frequency_penalty must be in [-2, 2], got 2.5"},
      {{{"frequency_penalty", -2.5}}, "frequency_penalty must be in [-2, 2], got -2.5"},
      {{{"presence_penalty", -3}}, "presence_penalty must be in [-2, 2], got -3"},
      {{{"presence_penalty", 2.01}}, "presence_penalty must be in [-2, 2], got 2.01"},
      {{{"repetition_penalty", 0}}, "repetition_penalty must be in (0, 2]"},
      {{{"repetition_penalty", 2.5}}, "repetition_penalty must be in (0, 2]"},
      {{{"max_new_tokens", -1}}, "max_new_tokens must be at least 0, got -1"},
      {{{"min_new_tokens", -1}}, "min_new_tokens must be in [0, max_new_tokens (128)], got -1"},
      {{{"min_new_tokens", 10}, {"max_new_tokens", 5}},
       "min_new_tokens must be in [0, max_new_tokens (5)], got 10"},
      {{{"n", 0}}, "n must be at least 1, got 0"},
      {{{"top_logprobs_num", -1}}, "top_logprobs_num must be at least 0, got -1"},
      {{{"stop", json::array({"ok", ""})}}, "stop must not contain empty strings"},
      {{{"stream_interval", 0}}, "stream_interval must be at least 1, got 0"},
  };
  for (const RangeCase& c : cases) {
    EXPECT_THAT(validate_error(c.params), HasSubstr(c.expected)) << c.params.dump();
  }
  // Boundaries that are allowed.
  for (const json& ok :
       {json{{"temperature", 0}}, json{{"top_p", 1}}, json{{"top_k", 1}}, json{{"min_p", 0}},
        json{{"min_p", 1}}, json{{"frequency_penalty", -2}}, json{{"presence_penalty", 2}},
        json{{"repetition_penalty", 2}}, json{{"max_new_tokens", 0}}, json{{"min_new_tokens", 128}},
        json{{"max_new_tokens", nullptr}, {"min_new_tokens", 100000}}}) {
    EXPECT_EQ(validate_error(ok), "") << ok.dump();
  }
}

TEST(SamplingParams, NonFiniteValuesAreRejected) {
  SamplingParams p;
  p.temperature = std::numeric_limits<double>::infinity();
  EXPECT_THAT(error_of([&] { p.validate(); }), HasSubstr("temperature must be"));
  p = SamplingParams();
  p.top_p = std::nan("");
  EXPECT_THAT(error_of([&] { p.validate(); }), HasSubstr("top_p must be in (0, 1]"));
  p = SamplingParams();
  p.frequency_penalty = std::nan("");
  EXPECT_THAT(error_of([&] { p.validate(); }), HasSubstr("frequency_penalty must be in [-2, 2]"));
}

TEST(SamplingParams, TokenIdsMustBeInVocab) {
  EXPECT_THAT(validate_error({{"stop_token_ids", {1, 511}}}, 512), testing::IsEmpty());
  EXPECT_THAT(validate_error({{"stop_token_ids", {1, 512}}}, 512),
              HasSubstr("stop_token_ids must be in [0, 511], got 512"));
  // Without a vocabulary size only the sign is checked.
  EXPECT_EQ(validate_error({{"stop_token_ids", {100000}}}), "");
  EXPECT_THAT(validate_error({{"stop_token_ids", {-1}}}),
              HasSubstr("stop_token_ids must hold token ids"));
  EXPECT_THAT(validate_error({{"logit_bias", {{"600", 1.0}}}}, 512),
              HasSubstr("logit_bias keys must be in [0, 511], got 600"));
  EXPECT_THAT(validate_error({{"logit_bias", {{"abc", 1.0}}}}, 512),
              HasSubstr("logit_bias keys must be token ids, got \"abc\""));
}

TEST(SamplingParams, WrongJsonTypesNameTheParameter) {
  const RangeCase cases[] = {
      {{{"temperature", "hot"}}, "temperature must be a number"},
      {{{"top_p", true}}, "top_p must be a number"},
      {{{"min_p", json::array()}}, "min_p must be a number"},
      {{{"frequency_penalty", "1"}}, "frequency_penalty must be a number"},
      {{{"presence_penalty", json::object()}}, "presence_penalty must be a number"},
      {{{"repetition_penalty", "x"}}, "repetition_penalty must be a number"},
      {{{"top_k", 2.5}}, "top_k must be an integer"},
      {{{"max_new_tokens", "10"}}, "max_new_tokens must be an integer"},
      {{{"min_new_tokens", false}}, "min_new_tokens must be an integer"},
      {{{"n", 1.5}}, "n must be an integer"},
      {{{"seed", "42"}}, "seed must be an integer"},
      {{{"top_logprobs_num", "3"}}, "top_logprobs_num must be an integer"},
      {{{"ignore_eos", 1}}, "ignore_eos must be a boolean"},
      {{{"skip_special_tokens", "yes"}}, "skip_special_tokens must be a boolean"},
      {{{"no_stop_trim", 0}}, "no_stop_trim must be a boolean"},
      {{{"return_logprob", "true"}}, "return_logprob must be a boolean"},
      {{{"stop", 5}}, "stop must be a string or a list of strings"},
      {{{"stop", {"a", 1}}}, "stop must be a string or a list of strings"},
      {{{"stop_token_ids", 5}}, "stop_token_ids must be a list of integers"},
      {{{"stop_token_ids", {"a"}}}, "stop_token_ids must be an integer"},
      {{{"logit_bias", {1, 2}}}, "logit_bias must be an object"},
      {{{"logit_bias", {{"5", "x"}}}}, "logit_bias must be a number"},
  };
  for (const RangeCase& c : cases) {
    EXPECT_THAT(error_of([&] { SamplingParams::from_json(c.params); }), HasSubstr(c.expected))
        << c.params.dump();
  }
  EXPECT_THAT(error_of([] { SamplingParams::from_json(json::array()); }),
              HasSubstr("sampling_params must be a JSON object"));
}

TEST(SamplingParams, UnknownAndUnsupportedKeysAreErrors) {
  EXPECT_THAT(error_of([] {
                SamplingParams::from_json({{"temprature", 0.5}});
              }),
              HasSubstr("unknown sampling parameter 'temprature'"));
  EXPECT_THAT(error_of([] {
                SamplingParams::from_json({{"regex", "a+"}});
              }),
              HasSubstr("sampling parameter 'regex' is not supported"));
  // Null for an unsupported parameter is the default (nothing asked).
  EXPECT_EQ(error_of([] { SamplingParams::from_json({{"json_schema", nullptr}}); }), "");
}

TEST(SamplingParams, ParsesAllFields) {
  const json j = {{"max_new_tokens", 64.0},  // integral floats are accepted
                  {"min_new_tokens", 4},
                  {"temperature", 0.7},
                  {"top_p", 0.9},
                  {"top_k", 40},
                  {"min_p", 0.05},
                  {"frequency_penalty", 0.5},
                  {"presence_penalty", -0.5},
                  {"repetition_penalty", 1.1},
                  {"stop", "\n\n"},
                  {"stop_token_ids", {7, 3, 7, nullptr}},
                  {"logit_bias", {{"10", -1.5}, {"2", 3}}},
                  {"ignore_eos", true},
                  {"skip_special_tokens", false},
                  {"no_stop_trim", true},
                  {"n", 3},
                  {"sampling_seed", 42},
                  {"return_logprob", true},
                  {"top_logprobs_num", 5},
                  {"custom_params", {{"anything", 1}}}};
  const SamplingParams p = SamplingParams::from_json(j);
  EXPECT_EQ(p.max_new_tokens, 64);
  EXPECT_EQ(p.min_new_tokens, 4);
  EXPECT_DOUBLE_EQ(p.temperature, 0.7);
  EXPECT_DOUBLE_EQ(p.top_p, 0.9);
  EXPECT_EQ(p.top_k, 40);
  EXPECT_DOUBLE_EQ(p.min_p, 0.05);
  EXPECT_DOUBLE_EQ(p.frequency_penalty, 0.5);
  EXPECT_DOUBLE_EQ(p.presence_penalty, -0.5);
  EXPECT_DOUBLE_EQ(p.repetition_penalty, 1.1);
  EXPECT_EQ(p.stop, std::vector<std::string>{"\n\n"});
  EXPECT_EQ(p.stop_token_ids, (std::vector<int32_t>{3, 7}));
  ASSERT_EQ(p.logit_bias.size(), 2u);
  EXPECT_EQ(p.logit_bias[0].first, 2);
  EXPECT_FLOAT_EQ(p.logit_bias[0].second, 3.0f);
  EXPECT_EQ(p.logit_bias[1].first, 10);
  EXPECT_TRUE(p.ignore_eos);
  EXPECT_FALSE(p.skip_special_tokens);
  EXPECT_TRUE(p.no_stop_trim);
  EXPECT_EQ(p.n, 3);
  ASSERT_TRUE(p.seed.has_value());
  EXPECT_EQ(*p.seed, 42u);
  EXPECT_TRUE(p.return_logprob);
  EXPECT_EQ(p.top_logprobs_num, 5);
  p.validate(512);

  // A list of stop strings, and the round trip through to_json.
  const SamplingParams q = SamplingParams::from_json({{"stop", {"a", "bc"}}, {"seed", 7}});
  EXPECT_EQ(q.stop, (std::vector<std::string>{"a", "bc"}));
  const SamplingParams r = SamplingParams::from_json(p.to_json());
  EXPECT_EQ(r.to_json(), p.to_json());
}

TEST(SamplingParams, NullMeansDefault) {
  const SamplingParams p = SamplingParams::from_json(
      {{"temperature", nullptr}, {"top_k", nullptr}, {"stop", nullptr}, {"n", nullptr}});
  EXPECT_EQ(p.temperature, 1.0);
  EXPECT_EQ(p.top_k, -1);
  EXPECT_TRUE(p.stop.empty());
  EXPECT_EQ(p.n, 1);
  // max_new_tokens null: no limit of its own.
  EXPECT_EQ(SamplingParams::from_json({{"max_new_tokens", nullptr}}).max_new_tokens,
            SamplingParams::kNoMaxNewTokens);
  EXPECT_EQ(SamplingParams::from_json(nullptr).max_new_tokens, 128);
}

}  // namespace
}  // namespace dpserve
