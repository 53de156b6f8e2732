// IncrementalDetokenizer: streamed pieces are whole UTF-8 and concatenate to decode(ids).

#include <gtest/gtest.h>

#include "dpserve/tokenizer/detokenizer.h"
#include "dpserve/tokenizer/tokenizer.h"
#include "dpserve/tokenizer/unicode.h"
#include "test_util.h"

namespace dpserve {
namespace {

const char* kTexts[] = {
    "Hello world, how are you?",
    "emoji 😀 and 👍🏽 and family 👨‍👩‍👧 and flag 🇫🇷!",
    "日本語のテキストです。中文文本。한국어 텍스트",
    "  leading spaces\n\n\ttabs and lines\r\n",
    "Кириллица, العربية, हिन्दी देवनागरी",
    "<|im_start|>user\nhi 😀<|im_end|>\n",
    "<s>Once upon a time</s> there was 🐉.",
    "ＡＢＣ ½ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃",
};

void check_stream(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special,
                  const std::string& what) {
  IncrementalDetokenizer detok(tok, skip_special);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = detok.add(id);
    EXPECT_TRUE(is_valid_utf8(piece)) << what;
    EXPECT_EQ(incomplete_utf8_suffix(piece), 0u) << what;
    streamed += piece;
  }
  streamed += detok.flush();
  const std::string full = tok.decode(ids, skip_special);
  EXPECT_EQ(streamed, full) << what;
  EXPECT_EQ(detok.text(), full) << what;
  // Text without U+FFFD never streams one (nothing is emitted half-way through a character).
  if (full.find("\xEF\xBF\xBD") == std::string::npos) {
    EXPECT_EQ(streamed.find("\xEF\xBF\xBD"), std::string::npos) << what;
  }
}

class DetokenizerStream : public testing::TestWithParam<std::string> {};

TEST_P(DetokenizerStream, PiecesConcatenateToDecode) {
  auto tok = load_tokenizer(test::shared_path(GetParam()));
  for (const char* text : kTexts) {
    for (bool add_special : {false, true}) {
      const auto ids = tok->encode(text, add_special);
      check_stream(*tok, ids, false, text);
      check_stream(*tok, ids, true, text);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(tokenizer, DetokenizerStream,
                         testing::Values("tokenizers/qwen3", "tokenizers/llama3",
                                         "models/stories260K", "models/llama2-tokenizer-32k"),
                         [](const auto& info) {
                           std::string n = info.param.substr(info.param.find('/') + 1);
                           for (char& c : n) {
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return n;
                         });

// Byte-fallback tokens of one emoji: nothing is emitted until its last byte arrives.
TEST(tokenizer_Detokenizer, HoldsBackPartialByteFallbackCharacter) {
  auto tok = load_tokenizer(test::shared_path("models/stories260K"));
  const auto ids = tok->encode("a🐉", false);  // ▁a, then <0xF0> <0x9F> <0x90> <0x89>
  ASSERT_EQ(ids.size(), 5u);
  IncrementalDetokenizer detok(*tok);
  EXPECT_EQ(detok.add(ids[0]), "a");
  EXPECT_EQ(detok.add(ids[1]), "");
  EXPECT_EQ(detok.add(ids[2]), "");
  EXPECT_EQ(detok.add(ids[3]), "");
  EXPECT_EQ(detok.add(ids[4]), "🐉");
  EXPECT_EQ(detok.flush(), "");
}

// Byte-level BPE: a CJK character split over tokens is emitted whole; the SentencePiece leading
// space is kept for later words.
TEST(tokenizer_Detokenizer, WordsKeepTheirSpaces) {
  auto tok = load_tokenizer(test::shared_path("models/llama2-tokenizer-32k"));
  const auto ids = tok->encode("Hello big world", false);
  IncrementalDetokenizer detok(*tok);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(detok.add(id));
  EXPECT_EQ(pieces, (std::vector<std::string>{"Hello", " big", " world"}));
}

// A cut-off character at the end of generation is flushed as U+FFFD, like decode() does.
TEST(tokenizer_Detokenizer, FlushEmitsIncompleteTail) {
  auto tok = load_tokenizer(test::shared_path("models/stories260K"));
  auto ids = tok->encode("a🐉", false);
  ids.pop_back();
  IncrementalDetokenizer detok(*tok);
  std::string s;
  for (int32_t id : ids) s += detok.add(id);
  EXPECT_EQ(s, "a");
  s += detok.flush();
  EXPECT_EQ(s, tok->decode(ids));
}

// With prompt context, the first generated word keeps its leading space.
TEST(tokenizer_Detokenizer, PromptContext) {
  auto tok = load_tokenizer(test::shared_path("models/llama2-tokenizer-32k"));
  const auto prompt = tok->encode("Once upon a", true);
  const auto all = tok->encode("Once upon a time there", true);
  IncrementalDetokenizer detok(*tok, false, prompt);
  std::string s;
  for (size_t i = prompt.size(); i < all.size(); ++i) s += detok.add(all[i]);
  s += detok.flush();
  EXPECT_EQ(s, " time there");
}

}  // namespace
}  // namespace dpserve
