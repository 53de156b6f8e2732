// tokenizer.json tokenizers against fixtures from an independent implementation
// (@lenml/tokenizers, see tools/fixtures/tokenizer/gen_tokenizer_fixtures.mjs).

#include <chrono>
#include <string>

#include <gtest/gtest.h>

#include "dpserve/tokenizer/tokenizer.h"
#include "dpserve/tokenizer/unicode.h"
#include "test_util.h"

namespace dpserve {
namespace {

struct Case {
  std::string name;  // fixture name
  std::string dir;   // tokenizer directory under shared/
};

class HfReference : public testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    tok_ = load_tokenizer(test::shared_path(GetParam().dir));
    fixture_ = test::read_json(test::fixture_path(GetParam().name + ".json"));
  }
  bool is_sentencepiece_style() const { return GetParam().name == "stories260K"; }

  std::unique_ptr<Tokenizer> tok_;
  nlohmann::json fixture_;
};

std::string show(const std::string& s) { return nlohmann::json(s).dump(); }

TEST_P(HfReference, EncodeMatchesReference) {
  ASSERT_GT(fixture_["cases"].size(), 40u);
  for (const auto& c : fixture_["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(tok_->encode(text, true), c["ids"].get<std::vector<int32_t>>()) << show(text);
    EXPECT_EQ(tok_->encode(text, false), c["ids_no_special"].get<std::vector<int32_t>>())
        << show(text);
  }
}

TEST_P(HfReference, DecodeMatchesReference) {
  for (const auto& c : fixture_["cases"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok_->decode(ids), c["decoded"].get<std::string>()) << show(c["text"]);
    EXPECT_EQ(tok_->decode(ids, true), c["decoded_skip_special"].get<std::string>())
        << show(c["text"]);
  }
}

// decode(encode(x)) == x, except: Qwen3 normalizes to NFC first; SentencePiece-style tokenizers
// prepend "▁" to each piece of text, so text right after a special token gains a space.
TEST_P(HfReference, RoundTrip) {
  for (const auto& c : fixture_["cases"]) {
    const std::string text = c["text"];
    if (is_sentencepiece_style() &&
        (text.find("<s>") != std::string::npos || text.find("</s>") != std::string::npos ||
         text.find("<unk>") != std::string::npos)) {
      continue;
    }
    const std::string expected = GetParam().name == "qwen3" ? nfc_normalize(text) : text;
    EXPECT_EQ(tok_->decode(tok_->encode(text, false)), expected) << show(text);
  }
}

// 100 KB of mixed text encodes well under a second and round-trips.
TEST_P(HfReference, LongTextIsFastAndRoundTrips) {
  std::string text;
  size_t i = 0;
  const auto& cases = fixture_["cases"];
  while (text.size() < 100 * 1024) {
    const std::string s = cases[i++ % cases.size()]["text"];
    if (s.find('<') != std::string::npos) continue;
    text += s;
    text += (i % 7 == 0) ? "\n" : " ";
  }
  text = nfc_normalize(text);
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok_->encode(text, false);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 1.0) << ids.size() << " ids";
  EXPECT_EQ(tok_->decode(ids), text);
  // Longer words and one huge word (no pre-tokenizer splits it for SentencePiece-style).
  const std::string huge(50000, 'a');
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_EQ(tok_->decode(tok_->encode(huge, false)), huge);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count(), 1.0);
}

INSTANTIATE_TEST_SUITE_P(tokenizer, HfReference,
                         testing::Values(Case{"qwen3", "tokenizers/qwen3"},
                                         Case{"llama3", "tokenizers/llama3"},
                                         Case{"stories260K", "models/stories260K"}),
                         [](const auto& info) { return info.param.name; });

TEST(tokenizer_Config, Qwen3SpecialTokens) {
  auto tok = load_tokenizer(test::shared_path("tokenizers/qwen3"));
  EXPECT_EQ(tok->vocab_size(), 151669);
  EXPECT_EQ(tok->bos_token_id(), -1);
  EXPECT_EQ(tok->bos_token(), "");
  EXPECT_EQ(tok->eos_token(), "<|im_end|>");
  EXPECT_EQ(tok->eos_token_ids(), std::vector<int32_t>{151645});
  EXPECT_EQ(tok->token_to_id("<|im_start|>"), 151644);
  EXPECT_EQ(tok->token_to_id("Hello"), 9707);
  EXPECT_EQ(tok->id_to_token(9707), "Hello");
  EXPECT_EQ(tok->id_to_token(151644), "<|im_start|>");
  EXPECT_EQ(tok->id_to_token(-5), "");
  EXPECT_FALSE(tok->token_to_id("no such token at all").has_value());
  EXPECT_TRUE(tok->is_special(151643));
  EXPECT_FALSE(tok->is_special(151667));  // <think> is an added token but not special
  EXPECT_FALSE(tok->is_special(9707));
  EXPECT_EQ(tok->decode({151667, 9707, 151645}, true), "<think>Hello");
}

TEST(tokenizer_Config, Llama3SpecialTokens) {
  auto tok = load_tokenizer(test::shared_path("tokenizers/llama3"));
  EXPECT_EQ(tok->vocab_size(), 128256);
  EXPECT_EQ(tok->bos_token_id(), 128000);
  EXPECT_EQ(tok->bos_token(), "<|begin_of_text|>");
  EXPECT_EQ(tok->eos_token_ids(), std::vector<int32_t>{128001});
  EXPECT_TRUE(tok->is_special(128009));
  // This tokenizer.json's post-processor is ByteLevel only: no BOS is added (as in HF).
  EXPECT_EQ(tok->encode("Hello", true), tok->encode("Hello", false));
}

TEST(tokenizer_Config, Stories260KAddsBos) {
  auto tok = load_tokenizer(test::shared_path("models/stories260K"));
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_token_id(), 1);
  EXPECT_EQ(tok->eos_token_ids(), std::vector<int32_t>{2});
  EXPECT_EQ(tok->bos_token(), "<s>");
  EXPECT_EQ(tok->eos_token(), "</s>");
  const auto ids = tok->encode("Once upon a time", true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(std::vector<int32_t>(ids.begin() + 1, ids.end()),
            tok->encode("Once upon a time", false));
  EXPECT_TRUE(tok->is_special(1));
  EXPECT_TRUE(tok->is_special(2));
}

TEST(tokenizer_Config, InvalidUtf8IsReplaced) {
  auto tok = load_tokenizer(test::shared_path("tokenizers/qwen3"));
  const auto ids = tok->encode(
      "ab\xff\xfe"
      "cd",
      false);
  EXPECT_EQ(tok->decode(ids),
            "ab\xEF\xBF\xBD\xEF\xBF\xBD"
            "cd");
}

}  // namespace
}  // namespace dpserve
