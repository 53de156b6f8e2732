// StopChecker on real stories260K token sequences: stop strings inside one token, across two,
// starting mid-token and spanning several, multiple stop strings, stop token ids, EOS,
// ignore_eos, length, no_stop_trim, and the streaming holdback (emitted text is never cut later).

#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dpserve/sampling/stop_checker.h"
#include "dpserve/tokenizer/detokenizer.h"
#include "dpserve/tokenizer/tokenizer.h"

namespace dpserve {
namespace {

const char* kStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "sunshine. One day, she saw a big, red ball in the park. She ran to the ball and kicked it "
    "very high. The ball went over the fence and into the garden of an old man.";

class StopCheckerTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    tok_ = load_tokenizer(DPSERVE_SHARED_DIR "/models/stories260K").release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    tok_ = nullptr;
  }

  void SetUp() override {
    const std::vector<int32_t> all = tok_->encode(kStory, true);
    // The first 4 ids (BOS + "Once upon ...") are the prompt; the rest is "generated".
    prompt_.assign(all.begin(), all.begin() + 4);
    gen_.assign(all.begin() + 4, all.end());
    // Reference pieces: what an IncrementalDetokenizer emits per generated token.
    IncrementalDetokenizer detok(*tok_, true, prompt_);
    offsets_.push_back(0);
    for (int32_t id : gen_) {
      text_ += detok.add(id);
      offsets_.push_back(text_.size());
    }
    text_ += detok.flush();
    ASSERT_EQ(offsets_.back(), text_.size());
  }

  struct Run {
    std::string text;                    // concatenated pieces
    std::vector<std::string> snapshots;  // text emitted after each token
    size_t tokens = 0;                   // tokens consumed when finished
    std::optional<FinishReason> finish;
  };

  // Feeds `ids` until the checker finishes (or the ids run out, then flushes).
  Run run(const SamplingParams& p, const std::vector<int32_t>& ids) const {
    StopChecker checker(*tok_, p, prompt_);
    Run r;
    for (int32_t id : ids) {
      r.text += checker.add(id);
      EXPECT_EQ(r.text, checker.text());
      r.snapshots.push_back(r.text);
      ++r.tokens;
      if (checker.finished()) break;
    }
    if (!checker.finished()) r.text += checker.flush();
    r.finish = checker.finish_reason();
    return r;
  }

  // Expects a stop on `stop` (first occurrence in the text) with the text before it as output,
  // the stop at the token that completes it, and every streamed prefix part of that output.
  void expect_stop_string(const std::vector<std::string>& stops, const std::string& matched) {
    SamplingParams p;
    p.stop = stops;
    const Run r = run(p, gen_);
    const size_t pos = text_.find(matched);
    ASSERT_NE(pos, std::string::npos);
    EXPECT_EQ(r.text, text_.substr(0, pos)) << matched;
    ASSERT_TRUE(r.finish.has_value());
    EXPECT_EQ(r.finish->to_json(), (nlohmann::json{{"type", "stop"}, {"matched", matched}}));
    // The token whose piece completes the stop string ends the run.
    size_t completing = 0;
    while (offsets_[completing] < pos + matched.size()) ++completing;
    EXPECT_EQ(r.tokens, completing) << matched;
    for (const std::string& snap : r.snapshots) {
      EXPECT_EQ(r.text.compare(0, snap.size(), snap), 0) << "streamed text later cut: " << snap;
    }
  }

  // Index of the generated token whose piece contains byte `pos` of the text.
  size_t token_at(size_t pos) const {
    size_t i = 0;
    while (offsets_[i + 1] <= pos) ++i;
    return i;
  }

  static Tokenizer* tok_;
  std::vector<int32_t> prompt_;
  std::vector<int32_t> gen_;
  std::string text_;             // decoded generated text
  std::vector<size_t> offsets_;  // offsets_[i]: text length before generated token i
};

Tokenizer* StopCheckerTest::tok_ = nullptr;

TEST_F(StopCheckerTest, NoStopRunsToLengthAndEmitsEverything) {
  SamplingParams p;
  p.max_new_tokens = 1000;
  const Run r = run(p, gen_);
  EXPECT_EQ(r.text, text_);
  EXPECT_FALSE(r.finish.has_value());
  // Without stop strings nothing is held back beyond the detokenizer's own pieces.
  for (size_t i = 0; i < r.snapshots.size(); ++i) EXPECT_EQ(r.snapshots[i].size(), offsets_[i + 1]);

  p.max_new_tokens = 10;
  const Run l = run(p, gen_);
  EXPECT_EQ(l.tokens, 10u);
  EXPECT_EQ(l.text, text_.substr(0, offsets_[10]));
  EXPECT_EQ(l.finish->to_json(), (nlohmann::json{{"type", "length"}, {"length", 10}}));
}

TEST_F(StopCheckerTest, StopInsideOneToken) {
  // A token with at least 4 bytes of text; the stop string is its interior.
  for (size_t i = 2; i < gen_.size(); ++i) {
    const std::string piece = text_.substr(offsets_[i], offsets_[i + 1] - offsets_[i]);
    if (piece.size() < 4) continue;
    const std::string stop = piece.substr(1, piece.size() - 2);
    if (text_.find(stop) != offsets_[i] + 1) continue;  // must be its first occurrence
    ASSERT_EQ(token_at(text_.find(stop)), token_at(text_.find(stop) + stop.size() - 1));
    expect_stop_string({stop}, stop);
    return;
  }
  FAIL() << "no suitable token";
}

TEST_F(StopCheckerTest, StopAcrossTwoTokens) {
  // Whole piece of token i plus the first byte of token i+1 (starts on a token boundary).
  for (size_t i = 5; i + 1 < gen_.size(); ++i) {
    const std::string a = text_.substr(offsets_[i], offsets_[i + 1] - offsets_[i]);
    const std::string b = text_.substr(offsets_[i + 1], offsets_[i + 2] - offsets_[i + 1]);
    if (a.size() < 2 || b.empty()) continue;
    const std::string stop = a + b.substr(0, 1);
    if (text_.find(stop) != offsets_[i]) continue;
    expect_stop_string({stop}, stop);
    return;
  }
  FAIL() << "no suitable tokens";
}

TEST_F(StopCheckerTest, StopStartingMidTokenSpanningSeveral) {
  // Tail of token i, all of token i+1, head of token i+2.
  for (size_t i = 8; i + 2 < gen_.size(); ++i) {
    const std::string a = text_.substr(offsets_[i], offsets_[i + 1] - offsets_[i]);
    const std::string b = text_.substr(offsets_[i + 1], offsets_[i + 2] - offsets_[i + 1]);
    const std::string c = text_.substr(offsets_[i + 2], offsets_[i + 3] - offsets_[i + 2]);
    if (a.size() < 2 || b.empty() || c.size() < 2) continue;
    const std::string stop = a.substr(1) + b + c.substr(0, 1);
    if (text_.find(stop) != offsets_[i] + 1) continue;
    ASSERT_EQ(token_at(text_.find(stop)) + 2, token_at(text_.find(stop) + stop.size() - 1));
    expect_stop_string({stop}, stop);
    return;
  }
  FAIL() << "no suitable tokens";
}

TEST_F(StopCheckerTest, MultipleStopStringsEarliestWins) {
  expect_stop_string({"garden", "red ball", "kicked"}, "red ball");
  expect_stop_string({"kicked", "Lily"}, "Lily");
  // A later-completing longer string loses to an earlier short one inside it.
  expect_stop_string({"loved to play", "to"}, "to");
}

TEST_F(StopCheckerTest, HeldBackPrefixIsReleasedWhenItDoesNotMatch) {
  // "the " occurs several times; "the zebra" never does: the text after each "the" is held
  // back for a while and then released, and in the end everything comes out.
  SamplingParams p;
  p.stop = {"the zebra", "ball!"};
  const Run r = run(p, gen_);
  EXPECT_EQ(r.text, text_);
  EXPECT_FALSE(r.finish.has_value());
  bool held = false;
  for (size_t i = 0; i < r.snapshots.size(); ++i) {
    EXPECT_EQ(text_.compare(0, r.snapshots[i].size(), r.snapshots[i]), 0);
    if (r.snapshots[i].size() < offsets_[i + 1]) held = true;
    // Never more held back than the longest proper prefix of a stop string.
    EXPECT_GE(r.snapshots[i].size() + 8, offsets_[i + 1]);
  }
  EXPECT_TRUE(held);
}

TEST_F(StopCheckerTest, StreamedTextNeverCutForEverySubstringStop) {
  // Every substring of length 3..6 starting at each byte of the first 80 bytes as a stop string.
  for (size_t start = 0; start < 80; ++start) {
    for (size_t len = 3; len <= 6; ++len) {
      const std::string stop = text_.substr(start, len);
      SamplingParams p;
      p.stop = {stop};
      const Run r = run(p, gen_);
      const size_t pos = text_.find(stop);
      ASSERT_EQ(r.text, text_.substr(0, pos)) << "stop '" << stop << "'";
      for (const std::string& snap : r.snapshots) {
        ASSERT_EQ(r.text.compare(0, snap.size(), snap), 0) << "stop '" << stop << "'";
      }
    }
  }
}

TEST_F(StopCheckerTest, NoStopTrimKeepsTheStopString) {
  SamplingParams p;
  p.stop = {"little"};
  p.no_stop_trim = true;
  const Run r = run(p, gen_);
  const size_t pos = text_.find("little");
  EXPECT_EQ(r.text.substr(0, pos + 6), text_.substr(0, pos + 6));
  EXPECT_EQ(r.text, text_.substr(0, offsets_[r.tokens]));
  EXPECT_EQ(std::get<std::string>(r.finish->matched), "little");
}

TEST_F(StopCheckerTest, StopTokenIdsAndEos) {
  // A stop token id: output ends before that token's text.
  const size_t i = 12;
  SamplingParams p;
  p.stop_token_ids = {gen_[i]};
  size_t first = 0;
  while (gen_[first] != gen_[i]) ++first;
  const Run r = run(p, gen_);
  EXPECT_EQ(r.tokens, first + 1);
  EXPECT_EQ(r.text, text_.substr(0, offsets_[first]));
  EXPECT_EQ(r.finish->to_json(), (nlohmann::json{{"type", "stop"}, {"matched", gen_[i]}}));

  // EOS (</s> = 2 for stories260K) ends generation unless ignore_eos.
  ASSERT_FALSE(tok_->eos_token_ids().empty());
  const int32_t eos = tok_->eos_token_ids()[0];
  std::vector<int32_t> with_eos(gen_.begin(), gen_.begin() + 6);
  with_eos.push_back(eos);
  with_eos.insert(with_eos.end(), gen_.begin() + 6, gen_.end());
  const Run e = run(SamplingParams(), with_eos);
  EXPECT_EQ(e.tokens, 7u);
  EXPECT_EQ(e.text, text_.substr(0, offsets_[6]));
  EXPECT_EQ(e.finish->to_json(), (nlohmann::json{{"type", "stop"}, {"matched", eos}}));

  SamplingParams ign;
  ign.ignore_eos = true;
  ign.max_new_tokens = 9;
  const Run g = run(ign, with_eos);
  EXPECT_EQ(g.tokens, 9u);
  EXPECT_EQ(g.finish->type, FinishReason::Type::kLength);
  // EOS is special and skipped from the text.
  EXPECT_EQ(g.text, text_.substr(0, offsets_[8]));
}

TEST_F(StopCheckerTest, StopStringOnTheLastAllowedTokenIsAStop) {
  SamplingParams p;
  p.stop = {"girl"};
  const size_t pos = text_.find("girl");
  const size_t last = token_at(pos + 3);
  p.max_new_tokens = static_cast<int64_t>(last + 1);
  const Run r = run(p, gen_);
  EXPECT_EQ(r.text, text_.substr(0, pos));
  EXPECT_EQ(r.finish->type, FinishReason::Type::kStop);
}

TEST(FinishReason, JsonForms) {
  EXPECT_EQ(FinishReason::stop_token(2).to_json().dump(), R"({"matched":2,"type":"stop"})");
  EXPECT_EQ(FinishReason::stop_string("\n").to_json().dump(), R"({"matched":"\n","type":"stop"})");
  EXPECT_EQ(FinishReason::max_length(16).to_json().dump(), R"({"length":16,"type":"length"})");
  EXPECT_EQ(FinishReason::abort("x").to_json().dump(), R"({"message":"x","type":"abort"})");
  EXPECT_STREQ(FinishReason::max_length(1).type_name(), "length");
}

}  // namespace
}  // namespace dpserve
